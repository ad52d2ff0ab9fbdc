"""A driver SIGKILLed mid-sweep, then `ablate run --resume`: nothing lost, nothing twice."""

from __future__ import annotations

import pickle
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from ablate.analysis import trials
from ablate.tracking.schema import MetricName, Outcome, Stage, Tag, tag_filter
from tests.helpers import kill_session
from tests.test_e2e import ablate, write_spec

pytestmark = pytest.mark.integration




def test_resume_after_driver_is_killed(tmp_path):
    from mlflow import MlflowClient

    spec = write_spec(
        tmp_path,
        name="resume",
        data={"synthetic": {"scale": 0.1, "seed": 5}, "tasks": ["prom/prom_core_tata"]},
        axes={"architecture": ["cnn"], "pretraining": ["none"], "tokenizer": ["char", "kmer:3"]},
        budget={"trials_per_cell": 4, "max_epochs": 3, "concurrent_trials": 2},
    )
    log = open(tmp_path / "first.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "ablate.cli", "run", str(spec)],
                               cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    deadline = time.time() + 400
    try:
        while time.time() < deadline and "[3/8]" not in (tmp_path / "first.log").read_text():
            assert process.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.5)
        assert "[3/8]" in (tmp_path / "first.log").read_text(), "sweep too slow to interrupt"
    finally:
        kill_session(process.pid)
        process.wait()
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("resume").experiment_id
    before = client.search_runs([experiment], tag_filter(Tag.STAGE, Stage.TRIAL))
    finished_before = {r.data.tags[Tag.TRIAL_ID]: r.info.end_time for r in before
                       if r.info.status == "FINISHED"}
    assert 3 <= len(finished_before) < 8

    resumed = ablate("run", str(spec), "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming sweep" in resumed.stdout

    after = client.search_runs([experiment], tag_filter(Tag.STAGE, Stage.TRIAL))
    # A trial the killed driver had started but Tune had not yet saved is lost: its slot is run
    # again, and its run is tagged lost (closed as KILLED if it was still running) and left out
    # of the analysis. A trial Tune had saved but not yet as ended is not run again.
    lost = [r for r in after if r.data.tags.get(Tag.OUTCOME) == Outcome.LOST]
    assert all(r.info.status in ("KILLED", "FINISHED") for r in lost)
    analysed = set(trials(uri, "resume")["run_id"])
    assert not analysed & {r.info.run_id for r in lost}
    after = [r for r in after if r.info.run_id in analysed]
    per_cell = Counter(r.data.tags[Tag.CELL] for r in after)
    assert sorted(per_cell.values()) == [4, 4], per_cell
    ids = [r.data.tags[Tag.TRIAL_ID] for r in after]
    assert len(ids) == len(set(ids)) == 8  # no trial has two runs
    for run in after:
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, MetricName.DEV_MCC)]
        assert sorted(steps) == list(range(1, len(steps) + 1)), steps  # no epoch twice
        trial_id = run.data.tags[Tag.TRIAL_ID]
        if trial_id in finished_before:  # finished trials were not re-run
            assert run.info.end_time == finished_before[trial_id]

    # Each cell's Optuna study holds exactly its budget (lost trials would be marked).
    # One state file per driver session; the resumed session's is the latest.
    state_file = sorted(Path(tmp_path, ".ablate", "ray_results").glob(
        "resume-*/searcher-state-*"))[-1]
    state = pickle.loads(state_file.read_bytes())
    for study in state["studies"].values():
        counted = [t for t in study.trials if not t.user_attrs.get("lost")]
        assert len(counted) == 4
        assert all(t.state.is_finished() for t in counted)
