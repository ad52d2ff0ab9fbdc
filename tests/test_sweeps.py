"""Sweeps are identifiable and resumes are safe: the spec fingerprint, `--resume` refusing a
changed spec, `ablate sweeps`, `--sweep ID`, launches that never started their search, and the
report of an unfinished sweep.

Most tests open sweeps with the study's own code (``open_sweep`` on a really prepared study)
against a real MLflow store (SQLite in the test's folder) and read them back with the reader;
one runs a tiny study through the ``ablate`` command and refuses an edited spec's resume.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ablate.errors import AblateError
from ablate.spec import StudySpec, expand_cells, parse_study
from ablate.tracking.schema import (
    SCHEMA_VERSION,
    MetricName,
    Outcome,
    Stage,
    Tag,
    cell_tags,
    tag_filter,
)

BASE = {
    "name": "sweeps",
    "data": {"synthetic": {"scale": 0.02, "seed": 1}, "tasks": ["tf/0"]},
    "axes": {"architecture": ["cnn", "kmer"], "pretraining": ["none"], "tokenizer": ["char"]},
    "budget": {"trials_per_cell": 2, "max_epochs": 1, "concurrent_trials": 1},
    "seed": 0,
    "prices": {"cpu": 0.05},
}


def merged(base: dict, changes: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def study_spec(folder: Path, **changes) -> StudySpec:
    data = merged({**BASE, "tracking": {"uri": f"sqlite:///{folder / 'mlruns.db'}"},
                   "work_dir": str(folder / ".ablate")}, changes)
    return parse_study(data, source="test", base_dir=folder)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sweeps")


@pytest.fixture(scope="module")
def prepared(folder):
    from ablate.study import prepare_study

    return prepare_study(study_spec(folder), None, progress=lambda _: None)


@pytest.fixture
def store(tmp_path, prepared):
    """A fresh tracking store for one test: (spec, prepared study, tracking URI)."""
    spec = study_spec(tmp_path)
    return spec, prepared, spec.tracking.uri


def open_new(spec, prepared, uri):
    from ablate.study import open_sweep

    return open_sweep(spec, prepared, uri, False, lambda _: None)


def start_search(uri: str, sweep) -> None:
    """What the search's Tuner does as it starts fitting: its callback marks the sweep run."""
    from ablate.study import SearchStarted

    SearchStarted(uri, sweep.run_id, retry_seconds=5).setup()


def add_trial(client, spec, sweep, cell, outcome: str | None, score: float = 0.5,
              index: int = 0) -> str:
    """A search trial run of ``cell`` as the trial logger leaves it (no outcome: running)."""
    from mlflow.entities import Metric, Param

    tags = {Tag.STUDY: spec.name, Tag.SWEEP: sweep.sweep, Tag.STAGE: Stage.TRIAL,
            Tag.SCHEMA_VERSION: str(SCHEMA_VERSION),
            Tag.TRIAL_ID: f"{sweep.sweep}-{cell.name}-{index}",
            Tag.PARENT_RUN: sweep.cell_runs[cell.name], **cell_tags(cell)}
    if outcome is not None:
        tags[Tag.OUTCOME] = outcome
    run_id = client.create_run(sweep.experiment_id, tags=tags).info.run_id
    client.log_batch(run_id, params=[Param("max_epochs", "1"), Param("learning_rate", "0.001")],
                     metrics=[Metric(MetricName.BEST_DEV_SCORE, score, 0, 1),
                              Metric(MetricName.BEST_DEV_MCC, score, 0, 1)])
    if outcome is not None:
        client.set_terminated(run_id)
    return run_id


def run_tags(client, run_id: str) -> dict[str, str]:
    return client.get_run(run_id).data.tags


# --- the fingerprint ------------------------------------------------------------------------


def test_fingerprint_covers_what_a_cell_trains_and_names_each_change(tmp_path):
    from ablate.provenance import fingerprint_changes, spec_fingerprint
    from ablate.study import load_spaces

    def fingerprint(**changes):
        spec = study_spec(tmp_path, **changes)
        return spec_fingerprint(spec, load_spaces(spec))

    base = fingerprint()
    assert base == fingerprint()  # stable: same spec, same hash and parts
    assert len(base.sha256) == 64 and base.parts["budget.trials_per_cell"] == 2
    assert base.parts["cells"] == ["cnn|none|char|tf/0", "kmer|none|char|tf/0"]
    assert base.parts["search_spaces.cnn.params.learning_rate.high"] == pytest.approx(1e-2)
    assert base.parts["models.cnn.preset"] == "tiny"
    assert "budget.checkpoint_every" not in base.parts
    # What may change on resume: prices, tracking, contrasts, paths, checkpoint cadence.
    same = fingerprint(prices={"cpu": 9.0, "A100": 2.5}, tracking={"retry_seconds": 5},
                       work_dir=str(tmp_path / "elsewhere"), budget={"checkpoint_every": 3},
                       contrasts=[{"name": "x", "treatment": {"architecture": "cnn"},
                                   "control": {"architecture": "kmer"}}])
    assert same.sha256 == base.sha256

    def changes(**edit):
        changed = fingerprint(**edit)
        assert changed.sha256 != base.sha256
        return fingerprint_changes(base.parts, changed.parts)

    assert changes(budget={"trials_per_cell": 6}) == ["budget.trials_per_cell: 2 -> 6"]
    assert changes(budget={"grace_epochs": 1, "reduction_factor": 3}) == [
        "budget.reduction_factor: 2.0 -> 3.0"]
    assert changes(resources={"cpu": 2}) == ["resources.cpu: 1.0 -> 2.0"]
    assert changes(seed=1) == ["seed: 0 -> 1"]
    assert changes(replicates=[0, 1]) == ["replicates: [] -> [0, 1]"]
    assert changes(models={"cnn": {"preset": "base"}}) == ["models.cnn.preset: tiny -> base"]
    assert changes(budget={"max_epochs_by_task": {"tf/0": 3}}) == [
        "budget.max_epochs_by_task.tf/0: (absent) -> 3"]
    assert changes(axes={"architecture": ["cnn"]}) == [
        'axes.architecture: ["cnn", "kmer"] -> ["cnn"]', "cells: removed kmer|none|char|tf/0",
        "models.kmer.preset: base -> (absent)", "search_spaces.kmer: removed"]
    # A search range edited in the search-space file is a change of what the cells search.
    spaces = tmp_path / "spaces"
    shutil.copytree(Path(__file__).resolve().parents[1] / "search_spaces", spaces)
    cnn = spaces / "cnn.yaml"
    cnn.write_text(cnn.read_text().replace("high: 1.0e-2, log: true", "high: 3.0e-2, log: true"))
    assert changes(search_space_dir=str(spaces)) == [
        "search_spaces.cnn.params.learning_rate.high: 0.01 -> 0.03"]


# --- opening and resuming -------------------------------------------------------------------


def test_a_new_sweep_records_its_fingerprint_and_resume_refuses_a_changed_spec(store, tmp_path):
    from mlflow import MlflowClient

    from ablate.provenance import FINGERPRINT, spec_fingerprint
    from ablate.study import load_spaces, resume_target
    from ablate.tracking.reader import PROVENANCE_DIR, read_artifact_json

    spec, prepared, uri = store
    sweep = open_new(spec, prepared, uri)
    assert not sweep.resumed and sweep.run_id
    client = MlflowClient(uri)
    run = client.get_run(sweep.run_id)
    assert run.data.tags[Tag.STAGE] == Stage.SWEEP and run.info.status == "FINISHED"
    expected = spec_fingerprint(spec, load_spaces(spec))
    assert run.data.tags[Tag.SPEC_FINGERPRINT] == expected.sha256
    assert json.loads(run.data.tags[Tag.BUDGET]) == {"cells": 2, "trials_per_cell": 2,
                                                     "replicates": 0}
    stored = read_artifact_json(client, sweep.run_id, f"{PROVENANCE_DIR}/{FINGERPRINT}")
    assert stored == {"sha256": expected.sha256, "parts": expected.parts}
    assert Tag.SEARCH_STARTED not in run.data.tags
    start_search(uri, sweep)
    started = run_tags(client, sweep.run_id)[Tag.SEARCH_STARTED]
    start_search(uri, sweep)  # a restored Tuner starts again: the first time is kept
    assert run_tags(client, sweep.run_id)[Tag.SEARCH_STARTED] == started

    messages: list[str] = []
    edited = study_spec(tmp_path, budget={"trials_per_cell": 4}, resources={"cpu": 2})
    with pytest.raises(AblateError) as refused:
        resume_target(edited, uri, None, messages.append, new_sweep_command="ablate run s.yaml")
    text = str(refused.value)
    assert f"sweep {sweep.sweep} cannot be resumed" in text
    assert "budget.trials_per_cell: 2 -> 4" in text and "resources.cpu: 1.0 -> 2.0" in text
    assert "Start a new sweep instead: ablate run s.yaml (without --resume)" in text
    # Prices, tracking settings and checkpoint cadence may change: resumed, no warning.
    allowed = study_spec(tmp_path, prices={"cpu": 1.0}, tracking={"retry_seconds": 30},
                         budget={"checkpoint_every": 2})
    assert resume_target(allowed, uri, None, messages.append).sweep == sweep.sweep
    assert not [m for m in messages if "warning" in m]


def test_a_sweep_opened_before_fingerprints_resumes_with_a_warning_then_is_checked(store,
                                                                                   tmp_path):
    from mlflow import MlflowClient

    from ablate.study import resume_target

    spec, prepared, uri = store
    sweep = open_new(spec, prepared, uri)
    start_search(uri, sweep)
    client = MlflowClient(uri)
    for tag in (Tag.SPEC_FINGERPRINT, Tag.BUDGET):  # as an earlier ablate left it
        client.delete_tag(sweep.run_id, tag)
    edited = study_spec(tmp_path, budget={"trials_per_cell": 3})
    messages: list[str] = []
    assert resume_target(edited, uri, None, messages.append).sweep == sweep.sweep
    (warning,) = [m for m in messages if m.startswith("warning")]
    assert sweep.sweep in warning and "fingerprint" in warning and "resuming it anyway" in warning
    # Its fingerprint is now this launch's: the next change is refused.
    again = study_spec(tmp_path, budget={"trials_per_cell": 5})
    with pytest.raises(AblateError, match="budget.trials_per_cell: 3 -> 5"):
        resume_target(again, uri, None, messages.append)


def test_a_launch_that_never_started_its_search_is_not_the_latest(store):
    from mlflow import MlflowClient

    from ablate import analysis
    from ablate.study import resume_target
    from ablate.tracking.reader import SweepState, latest_sweep, list_sweeps, provenance

    spec, prepared, uri = store
    with pytest.raises(AblateError, match="has no MLflow experiment"):
        latest_sweep(uri, spec.name)
    first = open_new(spec, prepared, uri)  # died in pretraining, before its Tuner started
    with pytest.raises(AblateError, match="no sweep of study 'sweeps'.*has started its search"):
        latest_sweep(uri, spec.name)
    second = open_new(spec, prepared, uri)
    start_search(uri, second)
    client = MlflowClient(uri)
    cell = expand_cells(spec)[0]
    add_trial(client, spec, second, cell, Outcome.COMPLETED)
    third = open_new(spec, prepared, uri)  # the newest launch: stopped before its search
    assert latest_sweep(uri, spec.name)[1] == second.sweep
    assert set(analysis.runs(uri, spec.name)[f"tags.{Tag.SWEEP}"]) == {second.sweep}
    assert provenance(uri, spec.name)["run_id"] == second.run_id

    listed = list_sweeps(uri, spec.name)
    assert [r.sweep for r in listed] == [third.sweep, second.sweep, first.sweep]  # newest first
    assert [r.state for r in listed] == [SweepState.NEVER_STARTED, SweepState.RUNNING,
                                         SweepState.NEVER_STARTED]
    assert [r.latest for r in listed] == [False, True, False]

    messages: list[str] = []
    assert resume_target(spec, uri, None, messages.append).sweep == second.sweep
    assert any(third.sweep in m and "before their search started" in m for m in messages)
    with pytest.raises(AblateError, match=f"sweep {third.sweep} never started its search"):
        resume_target(spec, uri, third.sweep, messages.append)
    # A trial run alone marks a sweep's search as started (sweeps written before the tag).
    add_trial(client, spec, third, cell, None)
    assert latest_sweep(uri, spec.name)[1] == third.sweep


def test_a_sweep_named_by_id_and_an_unknown_id(store):
    from ablate.study import resume_target, run_study
    from ablate.tracking.reader import resolve_sweep

    spec, prepared, uri = store
    older, newer = open_new(spec, prepared, uri), open_new(spec, prepared, uri)
    for sweep in (older, newer):
        start_search(uri, sweep)
    assert resolve_sweep(uri, spec.name).sweep == newer.sweep
    assert resolve_sweep(uri, spec.name, older.sweep).sweep == older.sweep
    assert resume_target(spec, uri, older.sweep, lambda _: None).sweep == older.sweep
    with pytest.raises(AblateError) as unknown:
        resolve_sweep(uri, spec.name, "sweeps-nosuch")
    text = str(unknown.value)
    assert "no sweep 'sweeps-nosuch'" in text
    assert f"{newer.sweep} (latest), {older.sweep}" in text and "ablate sweeps" in text
    with pytest.raises(AblateError, match="add --resume"):  # before anything is prepared
        run_study(spec, sweep_id=older.sweep, progress=lambda _: None)


def test_sweep_states_and_trials_against_the_budget(store):
    from mlflow import MlflowClient

    from ablate.tracking.reader import SweepState, list_sweeps

    spec, prepared, uri = store
    client = MlflowClient(uri)
    cnn, kmer = expand_cells(spec)
    sweeps = {}
    for status in ("FINISHED", "KILLED", "FAILED", "RUNNING"):
        sweep = open_new(spec, prepared, uri)
        start_search(uri, sweep)
        sweeps[status] = sweep
    running = sweeps["RUNNING"]
    for index, outcome in enumerate((Outcome.COMPLETED, Outcome.PRUNED, Outcome.MODEL_FAILED,
                                     Outcome.FAILED, Outcome.LOST, None)):
        add_trial(client, spec, running, cnn if index % 2 else kmer, outcome, index=index)
    for status, sweep in sweeps.items():
        if status != "RUNNING":
            for run_id in [*sweep.cell_runs.values(), sweep.run_id]:
                client.set_terminated(run_id, status=status)
    by_id = {r.sweep: r for r in list_sweeps(uri, spec.name)}
    assert by_id[sweeps["FINISHED"].sweep].state == SweepState.FINISHED
    assert by_id[sweeps["KILLED"].sweep].state == SweepState.INTERRUPTED
    assert by_id[sweeps["FAILED"].sweep].state == SweepState.FAILED
    record = by_id[running.sweep]
    assert record.state == SweepState.RUNNING and record.latest
    # completed, pruned and model-failed count; an infrastructure failure is re-issued, a
    # lost trial's slot was run again, a running one has not ended
    assert (record.trials_done, record.trials_running, record.trials_budget) == (3, 1, 4)
    assert len(record.cell_runs) == 2 and record.last_activity >= record.opened

    # `ablate sweeps NAME --tracking-uri URI` (no spec file at hand) lists the same.
    from typer.testing import CliRunner

    from ablate.cli import app

    listed = CliRunner().invoke(app, ["sweeps", spec.name, "--tracking-uri", uri])
    assert listed.exit_code == 0, listed.output
    rows = {line.split()[1]: line for line in listed.output.splitlines()
            if line.startswith("│ sweeps-")}
    assert set(rows) == {s.sweep for s in sweeps.values()}
    assert "interrupted" in rows[sweeps["KILLED"].sweep]
    assert "running" in rows[running.sweep] and "3 / 4" in rows[running.sweep]
    assert rows[running.sweep].rstrip(" │").endswith("latest")
    assert "killed outright" in listed.output  # what "running" may also mean


# --- the report of an unfinished sweep ------------------------------------------------------


def test_the_report_of_an_unfinished_sweep_says_so_cell_by_cell_first(store, tmp_path):
    from mlflow import MlflowClient

    from ablate.report import write_report

    spec, prepared, uri = store
    client = MlflowClient(uri)
    sweep = open_new(spec, prepared, uri)
    start_search(uri, sweep)
    cnn, kmer = expand_cells(spec)
    for index in range(2):
        add_trial(client, spec, sweep, kmer, Outcome.COMPLETED, 0.4 + 0.1 * index, index)

    # The spec's budget says 7, the sweep was opened with 2: the sweep's own budget counts.
    report = write_report(uri, spec.name, tmp_path / "running", trials_per_cell=7)
    (line,) = report.unfinished
    assert line.startswith("**This sweep is unfinished** (its runs are still open")
    assert f"{cnn.name}: no trial yet (0 of 2 trials)" in line and kmer.name not in line
    markdown = (tmp_path / "running" / "report.md").read_text()
    assert markdown.index("This sweep is unfinished") < markdown.index("## Budget parity")
    assert "**1 of 2 cell(s) are left out of every comparison**" in markdown
    assert "This sweep is unfinished" in (tmp_path / "running" / "report.html").read_text()

    add_trial(client, spec, sweep, cnn, Outcome.COMPLETED, 0.3, 0)
    for run_id in [*sweep.cell_runs.values(), sweep.run_id]:
        client.set_terminated(run_id, status="KILLED")  # stopped by Ctrl-C
    (line,) = write_report(uri, spec.name, tmp_path / "stopped").unfinished
    assert line.startswith("**This sweep is unfinished** (its last launch was interrupted)")
    assert f"{cnn.name}: 1 of 2 trials" in line
    assert "`ablate run STUDY.yaml --resume` continues it" in line

    add_trial(client, spec, sweep, cnn, Outcome.PRUNED, 0.2, 1)
    for run_id in [*sweep.cell_runs.values(), sweep.run_id]:
        client.set_terminated(run_id, status="FINISHED")
    finished = write_report(uri, spec.name, tmp_path / "finished")
    assert finished.unfinished == []
    assert "unfinished" not in (tmp_path / "finished" / "report.md").read_text().split(
        "## Budget parity")[0]

    # A newer launch that never started its search: not the latest, reported only by name.
    idle = open_new(spec, prepared, uri)
    assert write_report(uri, spec.name, tmp_path / "again").sweep == sweep.sweep
    named = write_report(uri, spec.name, tmp_path / "idle", sweep=idle.sweep)
    (line,) = named.unfinished
    assert line.startswith("**This sweep is unfinished** (its search never started): 2 cell(s)")
    assert f"{kmer.name}: no trial yet (0 of 2 trials)" in line
    assert "cannot be resumed" in line and "--resume" not in line


# --- end to end: a real tiny study through the `ablate` command ------------------------------


def ablate(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ablate.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.integration
def test_an_edited_spec_is_refused_on_resume_through_the_command(tmp_path):
    from mlflow import MlflowClient

    from ablate.provenance import FINGERPRINT, START_PARTS, SUGGESTIONS

    spec = {
        "name": "tiny-sweeps",
        "data": {"synthetic": {"scale": 0.05, "seed": 2}, "tasks": ["tf/0"]},
        "axes": {"architecture": ["kmer"], "pretraining": ["none"], "tokenizer": ["char"]},
        "budget": {"trials_per_cell": 2, "max_epochs": 1, "concurrent_trials": 1},
        "seed": 0,
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlruns.db'}"},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    first = ablate("run", str(path), cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    client = MlflowClient(spec["tracking"]["uri"])
    experiment = client.get_experiment_by_name("tiny-sweeps").experiment_id
    (sweep_run,) = client.search_runs([experiment], tag_filter(Tag.STAGE, Stage.SWEEP))
    sweep = sweep_run.data.tags[Tag.SWEEP]
    assert Tag.SEARCH_STARTED in sweep_run.data.tags  # written by the real Tuner's callback
    assert sweep_run.data.tags[Tag.SPEC_FINGERPRINT] and sweep_run.data.tags[Tag.DATA_DIGEST]
    artifacts = {Path(a.path).name for a in client.list_artifacts(sweep_run.info.run_id,
                                                                   "provenance")}
    assert {*START_PARTS, FINGERPRINT, SUGGESTIONS} <= artifacts
    assert not any(name.startswith("resume-") for name in artifacts)  # opened once, not resumed

    listed = ablate("sweeps", str(path), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr[-3000:]
    (row,) = [line for line in listed.stdout.splitlines() if sweep in line]
    assert "finished" in row and "2 / 2" in row and "latest" in row

    spec["budget"]["trials_per_cell"] = 3
    path.write_text(yaml.safe_dump(spec))
    refused = ablate("run", str(path), "--resume", cwd=tmp_path)
    assert refused.returncode == 2, refused.stdout[-3000:] + refused.stderr[-3000:]
    assert f"sweep {sweep} cannot be resumed" in refused.stderr
    assert "budget.trials_per_cell: 2 -> 3" in refused.stderr
    assert "without --resume" in refused.stderr and "Traceback" not in refused.stderr
    assert "building tokenizer" not in refused.stdout  # refused before anything was prepared

    unknown = ablate("report", str(path), "--sweep", "tiny-sweeps-nosuch", cwd=tmp_path)
    assert unknown.returncode == 2, unknown.stdout[-3000:] + unknown.stderr[-3000:]
    assert "no sweep 'tiny-sweeps-nosuch'" in unknown.stderr
    assert f"{sweep} (latest)" in unknown.stderr
    # The refused resume changed nothing: still one sweep, its cells closed as finished.
    assert len(client.search_runs([experiment], tag_filter(Tag.STAGE, Stage.SWEEP))) == 1
    cells = client.search_runs([experiment], tag_filter(Tag.STAGE, Stage.CELL))
    assert [r.info.status for r in cells] == ["FINISHED"]


def test_parity_names_cells_short_of_replicates_and_only_those():
    import pandas as pd

    from ablate.report import _parity_section

    table = pd.DataFrame({"cell": ["a", "b"], "replicates": [3, 3]})
    assert not _parity_section(table, {}, 4, replicates_per_cell=3).after  # all there
    table.loc[1, "replicates"] = 1
    (line,) = _parity_section(table, {}, 4, replicates_per_cell=3).after
    assert "1 cell(s) have fewer replicates" in line and "b: 1 of 3" in line
    assert "a:" not in line and "nan" not in line
