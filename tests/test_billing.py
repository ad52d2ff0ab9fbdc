"""Everything that ran is billed: test evaluation, checkpoints, and work a crash threw away."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ablate.tracking.schema import MetricName, Outcome, Tag
from tests.test_failures import local_ray, run_search, space  # noqa: F401  (fixture)
from tests.test_training import tiny_arrays, tiny_plan, tiny_split, tiny_trial

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              # set-up outside a Tune session: Ray warns there is no checkpoint to restore from
              pytest.mark.filterwarnings("ignore:`get_checkpoint` is meant:UserWarning")]

SLOW_SETUP = 2.0  # seconds the first attempt's set-up is made to take
LOST = 1.5  # seconds of work after the last report that the crash throws away
PRICE = 3.0  # per CPU core-hour


def history(client, run_id: str, metric: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, metric)}


def test_test_evaluation_is_charged_in_wall_time_and_device_hours(local_ray):  # noqa: F811
    from ablate.training import run_epochs, setup_trial

    arrays = {**tiny_arrays(), "test": tiny_split(3000, 3)}  # a test split that takes a while
    run = setup_trial(tiny_trial("replicate"), tiny_plan(max_epochs=2), arrays, None)
    reports = []
    run_epochs(run, report=lambda _run, metrics: reports.append(dict(metrics)))
    before, last = reports
    assert last[MetricName.TEST_SECONDS] > 0 and before[MetricName.TEST_SECONDS] == 0
    # The last epoch's compute time holds its epoch and the test evaluation.
    added = last[MetricName.WALL_SECONDS] - before[MetricName.WALL_SECONDS]
    assert added >= last["epoch_seconds"] + last[MetricName.TEST_SECONDS]
    assert last[MetricName.TEST_SECONDS] > last["epoch_seconds"]  # test is the larger part
    # ... and its FLOPs: one training epoch, one dev pass and one test pass.
    flops = (run.train_flops_per_sample * 12 + run.eval_flops_per_sample * (10 + 3000))
    assert last[MetricName.FLOPS] - before[MetricName.FLOPS] == pytest.approx(flops)
    billed = last[MetricName.WALL_SECONDS] + last[MetricName.CHECKPOINT_SECONDS]
    assert last["billed_seconds"] == pytest.approx(billed)
    assert last[MetricName.DEVICE_HOURS] == pytest.approx(billed / 3600 * last["device_count"])
    assert last["price_source"] == "unpriced" and MetricName.PRICE not in last
    assert last[MetricName.MFU] > 0


def crash_after_first_epoch(config: dict, plans: dict, split_arrays: dict,
                            markers: str) -> None:
    """The trainable, with a slow first set-up and a crash ``LOST`` seconds after the first
    attempt's first report (Tune retries it from that report's checkpoint)."""
    from ray import tune

    from ablate.training import report_epoch, run_epochs, setup_trial
    from ablate.trial import TrialConfig

    marker = Path(markers) / tune.get_context().get_trial_id()
    first_attempt = not marker.exists()
    marker.write_text("")
    trial = TrialConfig.from_tune(config)
    run = setup_trial(trial, plans[trial.cell], split_arrays, None)
    if first_attempt:
        time.sleep(SLOW_SETUP)

    def report(run, metrics: dict) -> None:
        report_epoch(run, metrics)
        if first_attempt:
            time.sleep(LOST)
            raise RuntimeError("the node was lost")

    run_epochs(run, report)


@pytest.mark.integration
def test_checkpoints_and_work_lost_to_a_crash_are_billed(tmp_path, local_ray):  # noqa: F811
    markers = tmp_path / "markers"
    markers.mkdir()
    search = run_search(tmp_path, crash_after_first_epoch, {"cnn": space("cnn", 1e-3, 1e-2)},
                        trials=1, max_epochs=3, max_failures=1, prices={"cpu": PRICE},
                        markers=str(markers))
    (run,) = search.runs
    (result,) = list(search.results)
    client, run_id = search.client, run.info.run_id
    tags, metrics = run.data.tags, run.data.metrics
    assert tags[Tag.OUTCOME] == Outcome.COMPLETED and tags[Tag.RETRIES] == "1"
    assert tags[Tag.PRICE_SOURCE] == "cpu"

    # The restored trial kept what its checkpoint charged: the slow set-up stays in its wall
    # time, and checkpoint time only grows.
    wall = history(client, run_id, MetricName.WALL_SECONDS)
    checkpoint = history(client, run_id, MetricName.CHECKPOINT_SECONDS)
    assert sorted(wall) == sorted(checkpoint) == [1, 2, 3]
    assert wall[1] >= SLOW_SETUP and wall[3] >= wall[2] >= wall[1]
    assert 0 < checkpoint[1] <= checkpoint[2] <= checkpoint[3]
    # Tune's last result is the trial's own bill: compute plus checkpoints.
    own = result.metrics
    assert own["billed_seconds"] == pytest.approx(
        own[MetricName.WALL_SECONDS] + own[MetricName.CHECKPOINT_SECONDS])
    # The last report carries no checkpoint (nothing needs it): the trial's latest checkpoint
    # is the second epoch's, the first attempt's one plus one after the restore.
    assert own["checkpoint_dir_name"] is None
    assert Path(result.checkpoint.path).name == "checkpoint_000001"

    # The driver charged what the crash threw away, on the trial's devices, at its price.
    lost = metrics[MetricName.LOST_SECONDS]
    assert LOST <= lost < LOST + 60
    count = own["device_count"]
    assert metrics[MetricName.DEVICE_HOURS] == pytest.approx(
        own[MetricName.DEVICE_HOURS] + lost / 3600 * count)
    assert metrics["billed_seconds"] == pytest.approx(own["billed_seconds"] + lost)
    assert metrics[MetricName.PRICE] == pytest.approx(metrics[MetricName.DEVICE_HOURS] * PRICE)
    assert own[MetricName.PRICE] == pytest.approx(own[MetricName.DEVICE_HOURS] * PRICE)
    assert history(client, run_id, MetricName.LOST_SECONDS)  # logged from the retry on


def crash_after_epoch_3(config: dict, plans: dict, split_arrays: dict, markers: str) -> None:
    """The trainable, writing what each epoch reported per attempt, whose first attempt
    crashes right after its third epoch's report."""
    from ray import tune

    from ablate.training import report_epoch, run_epochs, setup_trial
    from ablate.trial import TrialConfig

    trial_id = tune.get_context().get_trial_id()
    attempt = 2 if (Path(markers) / trial_id).exists() else 1
    (Path(markers) / trial_id).write_text("")
    trial = TrialConfig.from_tune(config)
    run = setup_trial(trial, plans[trial.cell], split_arrays, None)

    def report(run, metrics: dict) -> None:
        # Written first: on the trial's last report Tune stops it inside ``tune.report``.
        seen = {k: metrics[k] for k in ("train_loss", "dev_loss")}
        (Path(markers) / f"{attempt}-{metrics['epoch']}.json").write_text(json.dumps(seen))
        report_epoch(run, metrics)
        if attempt == 1 and metrics["epoch"] == 3:
            raise RuntimeError("the node was lost")

    run_epochs(run, report)


@pytest.mark.integration
def test_checkpoints_every_n_epochs_restore_exactly_and_rerun_epochs_are_charged(
        tmp_path, local_ray):  # noqa: F811
    markers = tmp_path / "markers"
    markers.mkdir()
    search = run_search(tmp_path, crash_after_epoch_3, {"cnn": space("cnn", 1e-3, 1e-2)},
                        trials=1, max_epochs=4, max_failures=1, checkpoint_every=2,
                        markers=str(markers))
    (run,) = search.runs
    (result,) = list(search.results)
    seen = {p.stem: json.loads(p.read_text()) for p in markers.glob("*.json")}
    # Attempt 1 reported epochs 1-3; only epoch 2 had a checkpoint, so attempt 2 restored it
    # and trained epoch 3 again, then 4.
    assert sorted(seen) == ["1-1", "1-2", "1-3", "2-3", "2-4"]
    # The checkpoint held the random number generators' states too (the model has dropout):
    # the epoch trained again is the same epoch, to the bit.
    for field in ("train_loss", "dev_loss"):
        assert seen["2-3"][field] == seen["1-3"][field]
    # One checkpoint in all (epoch 2's): none at epochs 1 and 3, none on the last report.
    assert Path(result.checkpoint.path).name == "checkpoint_000000"
    trial_dir = Path(result.path)
    best = sorted(p.name for p in trial_dir.glob("best_model-epoch*.pt"))
    assert best and len(best) <= 2  # the best model was written once per change, old ones gone
    # The driver counted the epoch trained again and charged what attempt 1 had reported
    # beyond the checkpoint, on top of the time from its last report to the crash.
    metrics = run.data.metrics
    assert metrics[MetricName.RERUN_EPOCHS] == 1
    billed = {}  # as attempt 1 reported them (the first value logged at each epoch)
    for m in sorted(search.client.get_metric_history(run.info.run_id, "billed_seconds"),
                    key=lambda m: m.timestamp):
        billed.setdefault(m.step, m.value)
    beyond = billed[3] - billed[2]
    assert metrics[MetricName.LOST_SECONDS] >= beyond > 0
    own = result.metrics
    assert metrics["billed_seconds"] == pytest.approx(
        own["billed_seconds"] + metrics[MetricName.LOST_SECONDS])
    steps = [m.step for m in search.client.get_metric_history(run.info.run_id,
                                                               MetricName.DEV_MCC)]
    assert steps == [1, 2, 3, 4]  # epoch 3 logged once
