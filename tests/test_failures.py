"""Model failures against infrastructure failures, in real Ray Tune searches of tiny cells.

A NaN loss is the model's failure: its trial reports once more and ends, is never retried, is
recorded as ``model_failed`` and counts against its cell. A crash is the infrastructure's: Tune
retries it, and a search trial that still fails has its slot issued again, so the cell's budget
is met by trials that ran.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest

from ablate.spec import Cell, ParamSpec, SearchSpace
from ablate.tracking.schema import (
    FailureKind,
    MetricName,
    Outcome,
    Stage,
    Tag,
    tag_filter,
)
from tests.test_training import tiny_arrays, tiny_plan

pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

TRIALS = tag_filter(Tag.STAGE, Stage.TRIAL)


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def space(arch: str, low: float, high: float) -> SearchSpace:
    """A search space of learning rates only, at the tiny preset, batches of 4."""
    return SearchSpace(architecture=arch, preset="tiny", params={
        "learning_rate": ParamSpec(type="float", low=low, high=high, log=True),
        "batch_size": ParamSpec(type="categorical", choices=[4]),
        "weight_decay": ParamSpec(type="categorical", choices=[0.0]),
    })


@dataclass
class Search:
    """What a finished search left: Tune's results, the MLflow runs and the searcher's state."""

    results: Any
    runs: list  # MLflow trial runs
    client: Any
    studies: dict[str, optuna.Study]
    cells: list[Cell]

    def runs_of(self, cell: Cell) -> list:
        return [r for r in self.runs if r.data.tags[Tag.CELL] == cell.name]


def run_search(tmp_path: Path, trainable: Any, spaces: dict[str, SearchSpace], *,
               trials: int = 2, max_epochs: int = 2, max_failures: int = 0,
               prices: dict[str, float] | None = None, concurrent: int = 2,
               checkpoint_every: int = 1, **parameters: Any) -> Search:
    """One Tune experiment over one tiny cell per search space, as a study runs it: the cell
    searcher, ASHA per cell and the MLflow logger on the driver. ``parameters`` go to the
    trainable beside ``plans`` and ``split_arrays``."""
    from mlflow import MlflowClient
    from ray import tune

    from ablate.tracking.writer import MLflowTrialLogger, open_cell_runs
    from ablate.tune_plugins import TRIALS_SEEN, CellScheduler, CellSearcher

    TRIALS_SEEN.clear()
    plans = {}
    for arch in spaces:
        from dataclasses import replace

        plan = replace(tiny_plan(arch, max_epochs=max_epochs), checkpoint_every=checkpoint_every)
        if prices:
            plan = replace(plan, prices=dict(prices))
        plans[plan.cell.name] = plan
    cells = [plan.cell for plan in plans.values()]
    arrays = tiny_arrays()
    split_arrays = {plan.inputs.splits[name]: arrays[name] for plan in plans.values()
                    for name in ("train", "dev", "test")}
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("failures")
    cell_runs = open_cell_runs(client, experiment, "failures", "failures-1", cells)
    logger = MLflowTrialLogger(uri, experiment, "failures", "failures-1", plans, cell_runs)
    searcher = CellSearcher(cells, spaces, trials_per_cell=trials, max_epochs=max_epochs,
                            max_concurrent=concurrent, seed=0)
    scheduler = CellScheduler([c.name for c in cells], max_t=max_epochs, grace_period=max_epochs,
                              rf=2)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, plans=plans,
                                                 split_arrays=split_arrays, **parameters),
                            {"cpu": 1}),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=-1,
                                    reuse_actors=False),
        run_config=tune.RunConfig(
            name="failures", storage_path=str(tmp_path / "ray_results"), callbacks=[logger],
            failure_config=tune.FailureConfig(max_failures=max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1), verbose=0),
    )
    results = tuner.fit()
    state_file = sorted((tmp_path / "ray_results" / "failures").glob("searcher-state-*"))[-1]
    studies = pickle.loads(state_file.read_bytes())["studies"]
    return Search(results, client.search_runs([experiment], TRIALS), client, studies, cells)


def test_a_nan_loss_is_a_model_failure_counted_and_never_retried(tmp_path, local_ray):
    from ablate.training import train_trial

    # convnova's learning rates blow its weights up at the first step; cnn's train.
    spaces = {"cnn": space("cnn", 1e-3, 1e-2), "convnova": space("convnova", 1e20, 1e30)}
    search = run_search(tmp_path, train_trial, spaces, trials=2, max_failures=2)
    good, unstable = search.cells
    assert search.results.num_errors == 0  # the trainable returned: no crash for Tune
    for result in search.results:
        if result.config["cell"] == unstable.name:
            assert result.metrics[MetricName.MODEL_FAILURE] == 1
            assert result.metrics["failure"] == FailureKind.NAN_LOSS
            assert result.metrics[MetricName.DEVICE_HOURS] > 0  # its cost so far
    for trial in search.results._experiment_analysis.trials:
        assert trial.num_failures == 0  # never retried
    # Both cells hold their budget: the unstable cell's two trials are its failures.
    assert len(search.runs_of(good)) == len(search.runs_of(unstable)) == 2
    for run in search.runs_of(unstable):
        assert run.data.tags[Tag.OUTCOME] == Outcome.MODEL_FAILED
        assert run.data.tags[Tag.FAILURE] == FailureKind.NAN_LOSS
        assert run.info.status == "FAILED"
        assert Tag.RETRIES not in run.data.tags
        assert run.data.metrics[MetricName.MODEL_FAILURE] == 1
        assert MetricName.TEST_SCORE not in run.data.metrics
    for run in search.runs_of(good):
        assert run.data.tags[Tag.OUTCOME] == Outcome.COMPLETED
        assert Tag.FAILURE not in run.data.tags
    failed = search.studies[unstable.name].trials
    assert [t.state for t in failed] == [optuna.trial.TrialState.FAIL] * 2
    assert all(t.user_attrs["model_failure"] == FailureKind.NAN_LOSS for t in failed)
    completed = search.studies[good.name].trials
    assert [t.state for t in completed] == [optuna.trial.TrialState.COMPLETE] * 2


def crash_first_attempts(config: dict, plans: dict, split_arrays: dict, markers: str) -> None:
    """``train_trial``, but every trial's first attempt crashes before training, and every
    attempt of the first trial that takes slot 0 crashes (a trial its node never lets run)."""
    from ray import tune

    from ablate.training import train_trial

    folder = Path(markers)
    trial_id = tune.get_context().get_trial_id()
    doomed = folder / "doomed"
    if config.get("slot") == 0 and not doomed.exists():
        doomed.write_text(trial_id)
    if doomed.read_text() == trial_id:
        raise RuntimeError("this trial's node keeps failing")
    marker = folder / f"attempted-{trial_id}"
    if not marker.exists():
        marker.write_text("")
        raise RuntimeError("the node was lost")
    train_trial(config, plans, split_arrays)


def test_crashes_are_retried_and_a_trial_that_keeps_crashing_is_issued_again(tmp_path,
                                                                              local_ray):
    markers = tmp_path / "markers"
    markers.mkdir()
    spaces = {"cnn": space("cnn", 1e-3, 1e-2)}
    search = run_search(tmp_path, crash_first_attempts, spaces, trials=2, max_failures=1,
                        concurrent=1, markers=str(markers))
    (cell,) = search.cells
    runs = search.runs_of(cell)
    by_outcome: dict[str, list] = {}
    for run in runs:
        by_outcome.setdefault(run.data.tags[Tag.OUTCOME], []).append(run)
    # The budget of 2 is met by trials that ran; the trial that never could is recorded apart.
    assert len(by_outcome[Outcome.COMPLETED]) == 2
    (failed,) = by_outcome[Outcome.FAILED]
    assert failed.data.tags[Tag.FAILURE] == FailureKind.INFRASTRUCTURE
    assert failed.info.status == "FAILED"
    assert failed.data.metrics[MetricName.LOST_SECONDS] >= 0
    for run in runs:
        assert run.data.tags[Tag.RETRIES] == "1"  # every trial crashed once and was retried
    assert search.results.num_errors == 1
    # Optuna: the failed trial is told FAIL and marked; two more trials fill the budget, and
    # the one that took over slot 0 trained with slot 0's seed.
    trials = search.studies[cell.name].trials
    states = [(t.state, t.user_attrs.get("infrastructure", False)) for t in trials]
    assert sorted(states, key=str) == sorted([(optuna.trial.TrialState.FAIL, True),
                                              (optuna.trial.TrialState.COMPLETE, False),
                                              (optuna.trial.TrialState.COMPLETE, False)],
                                             key=str)
    seeds = {r.data.tags[Tag.TRIAL_ID]: r.data.params["seed"] for r in runs}
    assert seeds[failed.data.tags[Tag.TRIAL_ID]] in {
        seeds[r.data.tags[Tag.TRIAL_ID]] for r in by_outcome[Outcome.COMPLETED]}
