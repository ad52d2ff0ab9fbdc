"""Tracking survives an unreachable MLflow: writes are retried, spooled, and sent on resume."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from ablate.shards import TaskInputs
from ablate.spec import Cell
from ablate.tracking.schema import MetricName, Outcome, Stage, Tag, tag_column, tag_filter
from ablate.tracking.writer import MLflowTrialLogger, TrackingUnavailable, open_cell_runs
from ablate.trial import CellPlan, ModelPlan, ModelSource, Resources, TrialConfig
from tests.helpers import free_port

CELL = Cell("cnn", "none", "char", "tf/0")
TRIALS = tag_filter(Tag.STAGE, Stage.TRIAL)


def plans(max_epochs: int = 2) -> dict[str, CellPlan]:
    inputs = TaskInputs(task=CELL.task, tokenizer=CELL.tokenizer, tokenizer_path="tok.json",
                        vocab_size=10, num_classes=2, length_bp=8, token_limit=10, splits={})
    plan = CellPlan(cell=CELL, inputs=inputs, model=ModelPlan(CELL.architecture, "tiny"),
                    source=ModelSource(), resources=Resources(), prices={},
                    max_epochs=max_epochs)
    return {CELL.name: plan}


def fake_trial(trial_id: str, epochs: int = 2) -> SimpleNamespace:
    config = TrialConfig(cell=CELL.name, hparams={"learning_rate": 0.01}, seed=1).to_tune()
    return SimpleNamespace(trial_id=trial_id, config=config,
                           last_result={"training_iteration": epochs})


def test_unreachable_server_spools_and_resume_sends_everything(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # as `ablate run` keeps it short
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    good = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(good)
    experiment = client.create_experiment("spool")
    cell_runs = open_cell_runs(client, experiment, "spool", "spool-1", [CELL])
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    spool = tmp_path / "spool.jsonl"
    logger = MLflowTrialLogger(down, experiment, "spool", "spool-1", plans(max_epochs=2),
                               cell_runs, spool_path=str(spool), retry_seconds=2)
    trial = fake_trial("t1")
    with pytest.raises(TrackingUnavailable, match="--resume"):
        logger.on_trial_start(0, [], trial)
    assert spool.is_file() and len(spool.read_text().splitlines()) == 1
    # Still down: later writes queue behind the first and are spooled too.
    for epoch in (1, 2):
        with pytest.raises(TrackingUnavailable):
            logger.on_trial_result(0, [], trial, {"training_iteration": epoch,
                                                  "dev_mcc": 0.1 * epoch})
    with pytest.raises(TrackingUnavailable):
        logger.on_trial_complete(0, [], trial)
    assert len(spool.read_text().splitlines()) == 4

    # The server is back (a resumed driver): the spool goes first, in order, exactly once.
    resumed = MLflowTrialLogger(good, experiment, "spool", "spool-1", plans(max_epochs=2),
                                cell_runs, spool_path=str(spool))
    resumed.setup()
    assert not spool.exists()
    (run,) = client.search_runs([experiment], TRIALS)
    history = client.get_metric_history(run.info.run_id, MetricName.DEV_MCC)
    assert sorted((m.step, round(m.value, 3)) for m in history) == [(1, 0.1), (2, 0.2)]
    assert run.info.status == "FINISHED" and run.data.tags[Tag.OUTCOME] == Outcome.COMPLETED


def test_runs_of_trials_lost_in_a_crash_are_closed_and_left_out(tmp_path):
    from mlflow import MlflowClient

    from ablate.analysis import trials

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("lost")
    cell_runs = open_cell_runs(client, experiment, "lost", "lost-1", [CELL])
    killed = MLflowTrialLogger(uri, experiment, "lost", "lost-1", plans(max_epochs=2),
                               cell_runs)
    # The killed driver started t1 (its run is open) but Tune never saved it; t2 finished.
    killed.on_trial_start(0, [], fake_trial("t1"))
    killed.on_trial_result(0, [], fake_trial("t1"), {"training_iteration": 1, "dev_mcc": 0.9,
                                                     "best_dev_mcc": 0.9})
    for step in (1, 2):
        killed.on_trial_result(0, [], fake_trial("t2"), {"training_iteration": step,
                                                         "best_dev_mcc": 0.1 * step})
        # t3 ended too, just before the kill, but Tune's last save did not hold it either.
        killed.on_trial_result(0, [], fake_trial("t3"), {"training_iteration": step,
                                                         "best_dev_mcc": 0.1 * step})
    killed.on_trial_complete(0, [], fake_trial("t2"))
    killed.on_trial_complete(0, [], fake_trial("t3"))

    resumed = MLflowTrialLogger(uri, experiment, "lost", "lost-1", plans(max_epochs=2),
                                cell_runs)
    # The resumed experiment ends holding t2 (and the re-issued slots, not shown here).
    resumed.on_experiment_end([fake_trial("t2")])
    assert resumed.close_lost_runs() == 2
    by_trial = {r.data.tags[Tag.TRIAL_ID]: r for r in client.search_runs([experiment], TRIALS)}
    assert by_trial["t1"].info.status == "KILLED"
    assert by_trial["t1"].data.tags[Tag.OUTCOME] == Outcome.LOST
    assert by_trial["t3"].info.status == "FINISHED"  # it did end: only its count is dropped
    assert by_trial["t3"].data.tags[Tag.OUTCOME] == Outcome.LOST
    assert by_trial["t2"].info.status == "FINISHED"
    assert list(trials(uri, "lost")[tag_column(Tag.TRIAL_ID)]) == ["t2"]
    assert resumed.close_lost_runs() == 0  # cell runs and finished trials are left alone


@pytest.mark.integration
def test_study_survives_a_tracking_server_restart(tmp_path):
    """A real `mlflow server` on 127.0.0.1 is stopped and restarted mid-study."""
    from mlflow import MlflowClient

    from tests.test_e2e import write_spec

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    store = f"sqlite:///{tmp_path / 'server.db'}"
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))

    def start_server() -> subprocess.Popen:
        """A server that answers its health check; started again if it exits before that
        (under load the killed one's socket can outlive ``wait``, and the bind then fails)."""
        for _ in range(3):
            server = subprocess.Popen(
                [mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(port),
                 "--backend-store-uri", store, "--default-artifact-root", str(tmp_path / "art"),
                 "--workers", "1"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            deadline = time.time() + 120
            while time.time() < deadline and server.poll() is None:
                try:
                    with urllib.request.urlopen(f"{uri}/health", timeout=5) as answer:
                        if answer.status == 200:
                            return server
                except OSError:
                    pass
                time.sleep(0.5)
            stop_server(server)
        raise RuntimeError("mlflow server did not start")

    def stop_server(server: subprocess.Popen) -> None:
        """Kill the server's whole process group and wait until nothing listens on its port."""
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        server.wait()
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                return
            time.sleep(0.5)

    spec = write_spec(
        tmp_path, name="outage",
        data={"synthetic": {"scale": 0.1, "seed": 6}, "tasks": ["prom/prom_core_tata"]},
        axes={"architecture": ["cnn"], "pretraining": ["none"], "tokenizer": ["char"]},
        budget={"trials_per_cell": 4, "max_epochs": 3, "concurrent_trials": 2},
        tracking={"uri": uri, "retry_seconds": 240},
    )
    server = start_server()
    try:
        log = open(tmp_path / "run.log", "w")
        study = subprocess.Popen([sys.executable, "-m", "ablate.cli", "run", str(spec)],
                                 cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while time.time() < deadline and "[1/4]" not in (tmp_path / "run.log").read_text():
            assert study.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            time.sleep(0.5)
        stop_server(server)  # mid-study: trials keep reporting while MLflow is gone
        time.sleep(15)
        server = start_server()
        assert study.wait(timeout=600) == 0, (tmp_path / "run.log").read_text()[-3000:]
        assert "MLflow unavailable" in (tmp_path / "run.log").read_text()
    finally:
        stop_server(server)
        server = start_server()
    try:
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("outage").experiment_id
        runs = client.search_runs([experiment], TRIALS)
        assert len(runs) == 4
        results = Path(tmp_path, ".ablate", "ray_results")
        for run in runs:
            trial_id = run.data.tags[Tag.TRIAL_ID]
            (progress,) = results.glob(f"outage-*/trial_{trial_id}/progress.csv")
            reported = len(progress.read_text().strip().splitlines()) - 1
            steps = [m.step for m in client.get_metric_history(run.info.run_id,
                                                                  MetricName.DEV_MCC)]
            assert sorted(steps) == list(range(1, reported + 1))  # every epoch, once
            assert run.info.status == "FINISHED"
    finally:
        stop_server(server)


def test_external_checkpoints_name_their_device_and_declared_price(tmp_path):
    from mlflow import MlflowClient

    from ablate.pretrain import register_external
    from ablate.spec import ExternalCheckpoint

    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    declared = ExternalCheckpoint(path=str(folder), tokenizer="bpe:x", device_hours=2688,
                                  device_name="NVIDIA GeForce RTX 2080 Ti", price_per_hour=0.5)
    assert declared.device == "gpu"
    priced = register_external("dnabert2", folder, device_hours=declared.device_hours,
                               device=declared.device, device_name=declared.device_name,
                               price_per_hour=declared.price_per_hour, tracking_uri=uri)
    bare = register_external("dnabert2", folder, device_hours=2688, device="cpu",
                             tracking_uri=uri)
    assert bare.run_id != priced.run_id  # another declared cost, another run
    again = register_external("dnabert2", folder, device_hours=2688, device="cpu",
                              tracking_uri=uri)
    assert again.run_id == bare.run_id  # registered once
    client = MlflowClient(uri)
    run = client.get_run(priced.run_id)
    assert run.data.tags[Tag.DEVICE_TYPE] == "gpu"
    assert run.data.tags[Tag.DEVICE_NAME] == "NVIDIA GeForce RTX 2080 Ti"
    assert run.data.tags[Tag.PRICE_SOURCE] == "declared"
    assert run.data.metrics[MetricName.DEVICE_HOURS] == 2688
    assert run.data.metrics[MetricName.PRICE] == pytest.approx(2688 * 0.5)
    run = client.get_run(bare.run_id)
    assert run.data.tags[Tag.DEVICE_TYPE] == "cpu"
    assert Tag.DEVICE_NAME not in run.data.tags and Tag.PRICE_SOURCE not in run.data.tags
    assert MetricName.PRICE not in run.data.metrics  # priced by the study's table, later


def test_every_experiment_opens_on_the_runs_table_of_mlflows_ui(tmp_path):
    from mlflow import MlflowClient

    from ablate.tracking.schema import EXPERIMENT_KIND
    from ablate.tracking.writer import get_or_create_experiment

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    new = get_or_create_experiment(client, "new")
    assert client.get_experiment(new).tags[Tag.EXPERIMENT_KIND] == EXPERIMENT_KIND
    older = client.create_experiment("older")  # as ablate created them before the tag
    assert Tag.EXPERIMENT_KIND not in client.get_experiment(older).tags
    assert get_or_create_experiment(client, "older") == older
    assert client.get_experiment(older).tags[Tag.EXPERIMENT_KIND] == EXPERIMENT_KIND
    chosen = client.create_experiment("chosen", tags={Tag.EXPERIMENT_KIND: "finetuning"})
    get_or_create_experiment(client, "chosen")
    assert client.get_experiment(chosen).tags[Tag.EXPERIMENT_KIND] == "finetuning"  # kept


def replicate_trial(trial_id: str, **result) -> SimpleNamespace:
    config = TrialConfig(cell=CELL.name, hparams={"learning_rate": 0.01}, seed=3,
                         stage="replicate", source_trial="t1", replicate=0).to_tune()
    return SimpleNamespace(trial_id=trial_id, config=config,
                           last_result={"training_iteration": 2, **result})


def test_cell_runs_carry_their_best_score_test_score_and_cost_so_far(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("summary")
    cell_runs = open_cell_runs(client, experiment, "summary", "summary-1", [CELL])
    logger = MLflowTrialLogger(uri, experiment, "summary", "summary-1", plans(max_epochs=2),
                               cell_runs)
    logger.setup()

    def trial(trial_id: str, results: list[dict], complete: SimpleNamespace) -> None:
        logger.on_trial_start(0, [], complete)
        for result in results:
            logger.on_trial_result(0, [], complete, result)
        complete.last_result = {**complete.last_result, **results[-1]}
        logger.on_trial_complete(0, [], complete)

    def summary() -> dict[str, float]:
        return client.get_run(cell_runs[CELL.name]).data.metrics

    cost = {"device_hours": 0.01, "price": 0.001}
    trial("t1", [{"training_iteration": 1, "best_dev_score": 0.3, **cost},
                 {"training_iteration": 2, "best_dev_score": 0.5, "device_hours": 0.02,
                  "price": 0.002}], fake_trial("t1", epochs=2))
    # Stopped early with a higher score: not a completed trial's, so not the cell's best.
    trial("t2", [{"training_iteration": 1, "best_dev_score": 0.9, **cost}],
          fake_trial("t2", epochs=1))
    trial("t3", [{"training_iteration": 1, "best_dev_score": 0.95, "model_failure": 1,
                  "failure": "nan_loss", **cost}], fake_trial("t3", epochs=1))
    metrics = summary()
    assert metrics[MetricName.BEST_DEV_SCORE] == pytest.approx(0.5)
    assert metrics[MetricName.TRIALS_DONE] == 3
    assert metrics[MetricName.CELL_DEVICE_HOURS] == pytest.approx(0.04)
    assert metrics[MetricName.CELL_PRICE] == pytest.approx(0.004)
    assert MetricName.TEST_SCORE not in metrics  # no replicate yet
    trial("r1", [{"training_iteration": 2, "best_dev_score": 0.5, "test_score": 0.4, **cost}],
          replicate_trial("r1"))
    assert summary()[MetricName.TEST_SCORE] == pytest.approx(0.4)

    # A resumed driver's logger starts empty and reads what the runs already hold.
    resumed = MLflowTrialLogger(uri, experiment, "summary", "summary-1", plans(max_epochs=2),
                                cell_runs)
    resumed.setup()
    logger = resumed
    trial("r2", [{"training_iteration": 2, "model_failure": 1, "failure": "nan_loss", **cost}],
          replicate_trial("r2"))
    metrics = summary()
    assert metrics[MetricName.TEST_SCORE] == pytest.approx(0.2)  # (0.4 + 0) / 2
    assert metrics[MetricName.BEST_DEV_SCORE] == pytest.approx(0.5)
    assert metrics[MetricName.TRIALS_DONE] == 3  # replicates are not search trials
    assert metrics[MetricName.CELL_DEVICE_HOURS] == pytest.approx(0.06)
    history = client.get_metric_history(cell_runs[CELL.name], MetricName.CELL_DEVICE_HOURS)
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2, 3, 4, 5]


@pytest.mark.integration
def test_a_tiny_study_leaves_its_summary_on_the_cell_runs():
    from mlflow import MlflowClient

    from ablate.tracking.schema import EXPERIMENT_KIND
    from tests.tiny_study import tiny_study

    study = tiny_study()
    client = MlflowClient(study.tracking_uri)
    experiment = client.get_experiment_by_name(study.name)
    assert experiment.tags[Tag.EXPERIMENT_KIND] == EXPERIMENT_KIND
    cells = client.search_runs(
        [experiment.experiment_id],
        f"{tag_filter(Tag.STAGE, Stage.CELL)} and {tag_filter(Tag.SWEEP, study.sweep)}")
    assert len(cells) == study.cells
    for cell in cells:
        metrics = cell.data.metrics
        assert metrics[MetricName.TRIALS_DONE] == 10
        assert MetricName.BEST_DEV_SCORE in metrics and MetricName.TEST_SCORE in metrics
        assert metrics[MetricName.CELL_DEVICE_HOURS] > 0
