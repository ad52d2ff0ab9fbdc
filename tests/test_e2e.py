"""End-to-end: the `ablate` command runs real studies on a real local Ray and a real MLflow."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ablate.tracking.schema import (
    FailureKind,
    MetricName,
    Outcome,
    Stage,
    Tag,
    param_column,
    tag_column,
    tag_filter,
)

ABLATE = [sys.executable, "-m", "ablate.cli"]
pytestmark = pytest.mark.integration


def ablate(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*ABLATE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def write_spec(folder: Path, **overrides) -> Path:
    spec = {
        "name": "e2e",
        "axes": {
            "architecture": ["convnova", "transformer"],
            "pretraining": ["none"],
            "tokenizer": ["char", "bpe"],
        },
        "budget": {"trials_per_cell": 2, "max_epochs": 2, "concurrent_trials": 2},
        "tokenizers": {"bpe_vocab_size": 256},
        "seed": 0,
        "tracking": {"uri": f"sqlite:///{folder / 'mlruns.db'}"},
        **overrides,
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def trial_runs_by_cell(tracking_uri: str, study: str) -> tuple[dict, dict]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(study)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    cells = {r.data.tags[Tag.CELL]: r for r in runs if r.data.tags[Tag.STAGE] == Stage.CELL}
    trials: dict[str, list] = {}
    for run in runs:
        if run.data.tags[Tag.STAGE] == Stage.TRIAL:
            trials.setdefault(run.data.tags[Tag.CELL], []).append(run)
    return cells, trials


def check_study_in_mlflow(tracking_uri: str, study: str, trials_per_cell: int, max_epochs: int):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    cells, trials = trial_runs_by_cell(tracking_uri, study)
    assert len(cells) == 4
    assert set(trials) == set(cells)
    for cell, runs in trials.items():
        assert len(runs) == trials_per_cell, cell
        assert len({r.data.tags[Tag.TRIAL_ID] for r in runs}) == trials_per_cell
        for run in runs:
            tags = run.data.tags
            assert tags[Tag.PARENT_RUN] == cells[cell].info.run_id
            for tag in (Tag.STUDY, Tag.CELL, Tag.STAGE, Tag.ARCHITECTURE, Tag.PRETRAINING,
                        Tag.TOKENIZER, Tag.TASK, Tag.SCHEMA_VERSION):
                assert tags[tag], tag
            assert tags[Tag.STUDY] == study
            assert run.info.status == "FINISHED"
            assert tags[Tag.OUTCOME] in (Outcome.COMPLETED, Outcome.PRUNED)
            assert {"learning_rate", "weight_decay", "dropout", "batch_size"} <= set(
                run.data.params
            )
            history = client.get_metric_history(run.info.run_id, MetricName.DEV_MCC)
            epochs = sorted(m.step for m in history)
            assert epochs == list(range(1, len(epochs) + 1)) and 1 <= len(epochs) <= max_epochs
            for metric in ("dev_accuracy", "dev_f1", "dev_loss", "wall_seconds", "flops"):
                assert metric in run.data.metrics, metric
            assert run.data.metrics["flops"] > 0 and run.data.metrics["wall_seconds"] > 0
        # Early stopping only ever compares trials of one cell; the best survives to max_epochs.
        assert any(r.data.tags[Tag.OUTCOME] == Outcome.COMPLETED for r in runs)
    return cells, trials


def check_report(folder: Path, cells_expected: int, trials_per_cell: int) -> list[dict]:
    assert (folder / "report.md").is_file()
    assert (folder / "cost_vs_mcc.png").stat().st_size > 1000
    with open(folder / "cells.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == cells_expected
    assert all(int(r["trials"]) == trials_per_cell for r in rows)
    return rows


@pytest.mark.skipif(not os.environ.get("ABLATE_GUE_DIR"), reason="ABLATE_GUE_DIR is not set")
def test_real_gue_study(tmp_path):
    gue = os.environ["ABLATE_GUE_DIR"]
    spec = write_spec(tmp_path, data={"gue_dir": gue, "tasks": ["prom/prom_core_tata"]})
    run = ablate("run", str(spec), cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "[8/8]" in run.stdout
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    check_study_in_mlflow(uri, "e2e", trials_per_cell=2, max_epochs=2)

    report = ablate("report", str(spec), "--out", str(tmp_path / "report"), cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    rows = check_report(tmp_path / "report", cells_expected=4, trials_per_cell=2)
    # Real learning happened: TATA promoters are far from chance after two epochs.
    assert max(float(r["best_dev_mcc"]) for r in rows) > 0.3
    assert "report.md" in report.stdout and "mlflow ui" in report.stdout


def test_synthetic_study_and_cli_overrides(tmp_path):
    """The demo's path: synthetic data, the tracking URI given on the command line."""
    spec = write_spec(
        tmp_path,
        name="synthetic-e2e",
        data={"synthetic": {"scale": 0.1, "seed": 1}, "tasks": ["tf/0"]},
        tracking={"uri": "sqlite:///unused.db"},
        replicates=[0, 1],
        prices={"cpu": 0.05},
    )
    uri = f"sqlite:///{tmp_path / 'cli.db'}"
    run = ablate("run", str(spec), "--tracking-uri", uri, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert not (tmp_path / "unused.db").exists()
    cells, _ = check_study_in_mlflow(uri, "synthetic-e2e", trials_per_cell=2, max_epochs=2)
    assert all(r.data.tags[Tag.DATA].startswith("synthetic:") for r in cells.values())

    report = ablate("report", str(spec), "--tracking-uri", uri, "--out", "out", cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    rows = check_report(tmp_path / "out", cells_expected=4, trials_per_cell=2)
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "synthetic" in markdown.lower()
    # Replicates: each cell's best configuration re-trained with both seeds, tested once.
    with open(tmp_path / "out" / "replicates.csv") as handle:
        replicate_rows = list(csv.DictReader(handle))
    assert len(replicate_rows) == 4 * 2
    assert {r["seed"] for r in replicate_rows} == {"0", "1"}
    assert all(r["test_mcc"] != "" for r in replicate_rows)
    assert "What does BPE tokenization do?" in markdown and "bpe vs char" in markdown
    page = (tmp_path / "out" / "report.html").read_text()
    assert "data:image/png;base64," in page and 'src="http' not in page  # self-contained
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("synthetic-e2e")
    replicate_runs = client.search_runs([experiment.experiment_id],
                                        tag_filter(Tag.STAGE, Stage.REPLICATE))
    assert len(replicate_runs) == 8
    for run in replicate_runs:
        assert run.data.metrics["device_hours"] > 0 and run.data.metrics["price"] > 0
        assert run.data.tags[Tag.FLOPS_METHOD] == "torch.utils.flop_counter"
    # The planted motifs are learnable: some cell is clearly above chance.
    assert max(float(r["best_dev_mcc"]) for r in rows) > 0.3


def test_bad_spec_fails_before_ray_starts(tmp_path):
    spec = write_spec(
        tmp_path, data={"synthetic": {}, "tasks": ["tf/0"]},
        axes={"architecture": ["resnet"], "tokenizer": ["char"]},
    )
    result = ablate("run", str(spec), cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert "axes.architecture" in result.stderr and "convnova" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / ".ablate").exists()  # nothing was prepared, Ray never started


def test_task_without_train_split_fails_before_ray(tmp_path):
    gue = tmp_path / "GUE" / "tf" / "0"
    gue.mkdir(parents=True)
    (gue / "dev.csv").write_text("sequence,label\n" + "ACGT" * 25 + ",1\n")
    spec = write_spec(tmp_path, data={"gue_dir": "GUE", "tasks": ["tf/0"]})
    result = ablate("run", str(spec), cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert "train" in result.stderr and "tf/0" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / ".ablate" / "ray_results").exists()


def test_data_check_reports_bad_file_without_traceback(tmp_path):
    folder = tmp_path / "tf" / "0"
    folder.mkdir(parents=True)
    (folder / "train.csv").write_text("sequence,label\nACGT,0\nACGT,7\n")
    result = ablate("data", "check", str(tmp_path), cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert "train.csv" in result.stderr and "line 3" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(not os.environ.get("ABLATE_GUE_DIR"), reason="ABLATE_GUE_DIR is not set")
def test_data_check_on_real_gue(tmp_path):
    result = ablate("data", "check", os.environ["ABLATE_GUE_DIR"], cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "13 complete, 14 with train missing" in result.stdout


def test_data_synth_writes_the_layout(tmp_path):
    result = ablate("data", "synth", str(tmp_path / "syn"), "--scale", "0.01", cwd=tmp_path,
                    timeout=120)
    assert result.returncode == 0, result.stderr
    check = ablate("data", "check", str(tmp_path / "syn"), cwd=tmp_path, timeout=120)
    assert "28 datasets found: 28 complete" in check.stdout


def test_study_with_pretraining_runs_it_once_and_links_cells(tmp_path):
    """`pretraining: [none, mlm:small]`: one pretraining run, reused, linked from its cell."""
    from mlflow import MlflowClient

    from ablate.tracking.schema import PRETRAIN_EXPERIMENT

    spec = write_spec(
        tmp_path,
        name="pretrain-e2e",
        data={"synthetic": {"scale": 0.1, "seed": 2}, "tasks": ["prom/prom_core_tata"]},
        axes={"architecture": ["convnova"], "pretraining": ["none", "mlm:small"],
              "tokenizer": ["char"]},
        # Both trials are seeded random start-up draws, identical in every cell (TPE's later
        # suggestions depend on each cell's own results).
        budget={"trials_per_cell": 2, "max_epochs": 1, "concurrent_trials": 2,
                "startup_trials": 2},
        pretrain_specs={"small": {"max_steps": 20, "batch_size": 16, "checkpoint_every": 10}},
    )
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    for attempt in range(2):  # the second launch must reuse the finished pretraining
        run = ablate("run", str(spec), cwd=tmp_path)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        if attempt == 1:
            assert "already done" in run.stdout

    client = MlflowClient(uri)
    pretrain_runs = client.search_runs(
        [client.get_experiment_by_name(PRETRAIN_EXPERIMENT).experiment_id]
    )
    assert len(pretrain_runs) == 1
    (pretrain_run,) = pretrain_runs
    assert pretrain_run.data.tags[Tag.ARCHITECTURE] == "convnova"
    assert pretrain_run.data.metrics["flops"] > 0
    # The steps are part of the workers' time; the rest is their start-up and streaming.
    steps = pretrain_run.data.metrics["optimizer_seconds"]
    assert 0 < steps < pretrain_run.data.metrics["step_seconds"]

    from ablate.analysis import latest_sweep, trials
    from ablate.study import DriverPhases

    _, sweep = latest_sweep(uri, "pretrain-e2e")
    # Where the driver's time went, phase by phase, on the sweep's own run.
    (sweep_run,) = client.search_runs(
        [client.get_experiment_by_name("pretrain-e2e").experiment_id],
        f"tags.`{Tag.SWEEP}` = '{sweep}' and tags.`{Tag.STAGE}` = 'sweep'")
    phases = {k.removeprefix(DriverPhases.PREFIX): v for k, v in sweep_run.data.metrics.items()
              if k.startswith(DriverPhases.PREFIX)}
    assert set(phases) == {"prepare", "ray_start", "provenance", "pretraining", "trial_inputs",
                           "search", "mlflow_writes"}
    assert all(v >= 0 for v in phases.values()) and phases["search"] > phases["mlflow_writes"]
    assert "driver time: prepare" in run.stdout
    frame = trials(uri, "pretrain-e2e", sweep)
    assert len(frame) == 4
    by_cell = frame.groupby(tag_column(Tag.PRETRAINING))
    pretrained = by_cell.get_group("mlm:small")
    scratch = by_cell.get_group("none")
    link = tag_column(Tag.PRETRAIN_RUN_ID)
    assert (pretrained[link] == pretrain_run.info.run_id).all()
    assert scratch[link].isna().all()  # from scratch: no link
    # Same architecture, same tokenizer, same start-up draws: only pretraining differs.
    learning_rate = param_column("learning_rate")
    assert sorted(pretrained[learning_rate]) == sorted(scratch[learning_rate])


def test_failing_trials_are_marked_and_counted_while_the_study_goes_on(tmp_path):
    from mlflow import MlflowClient

    from ablate.tune_plugins import MAX_REISSUES_PER_SLOT

    spec = write_spec(
        tmp_path, name="failures",
        data={"synthetic": {"scale": 0.05, "seed": 8}, "tasks": ["prom/prom_core_tata"]},
        axes={"architecture": ["cnn", "unet"], "pretraining": ["none"], "tokenizer": ["char"]},
        budget={"trials_per_cell": 2, "max_epochs": 1, "concurrent_trials": 2},
        # Every unet trial raises while building its model.
        models={"unet": {"overrides": {"no_such_field": 1}}},
    )
    run = ablate("run", str(spec), cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # A crash outside the model is the infrastructure's: each unet slot is issued again, up to
    # MAX_REISSUES_PER_SLOT times, so 2 slots x 3 attempts fail and none counts in the budget.
    attempts = 2 * (1 + MAX_REISSUES_PER_SLOT)
    assert f"({attempts} failed)" in run.stdout and "FAILED" in run.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("failures").experiment_id
    trial_runs = client.search_runs([experiment], tag_filter(Tag.STAGE, Stage.TRIAL))
    assert len(trial_runs) == 2 + attempts
    for run_info in trial_runs:
        failed = run_info.data.tags[Tag.ARCHITECTURE] == "unet"
        assert run_info.info.status == ("FAILED" if failed else "FINISHED")
        assert (run_info.data.tags[Tag.OUTCOME] == Outcome.FAILED) == failed
        if failed:
            assert run_info.data.tags[Tag.FAILURE] == FailureKind.INFRASTRUCTURE
    report = ablate("report", str(spec), "--out", "out", cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    with open(tmp_path / "out" / "cells.csv") as handle:
        rows = {r["architecture"]: r for r in csv.DictReader(handle)}
    assert rows["unet"]["failed"] == str(attempts) and rows["cnn"]["failed"] == "0"
    assert rows["unet"]["budget_trials"] == "0" and rows["cnn"]["budget_trials"] == "2"
