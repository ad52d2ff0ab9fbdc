"""Resume keeps the science: a sweep stopped mid-search and resumed prunes the same trials, at
the same epochs, as the same sweep run straight through.

Two things make that possible, and both are exercised here: every cell's ASHA rungs travel in
the searcher's saved state (Tune restores a scheduler with empty rungs), and trial checkpoints
hold the random number generators' states, so a trial the signal stopped trains on after the
resume as it would have (``tests/test_billing.py`` checks that to the bit). One trial at a time
and fixed seeds make the two sweeps comparable run for run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from ablate.tracking.schema import MetricName, Outcome, Stage, Tag, tag_filter
from tests.helpers import kill_session
from tests.test_e2e import ablate, write_spec

pytestmark = pytest.mark.integration

TRIALS = 6


# Ranges where every trial learns, so scores are far apart: a cut-off that falls on a tie of
# untrained models (MCC 0) would turn on last-bit differences between processes.
SPACE = """architecture: cnn
preset: tiny
params:
  learning_rate: {type: float, low: 2.0e-3, high: 2.0e-2, log: true}
  weight_decay: {type: categorical, choices: [0.01]}
  dropout: {type: float, low: 0.1, high: 0.3}
  batch_size: {type: categorical, choices: [16, 32]}
"""


def sweep_spec(folder):
    (folder / "search_spaces").mkdir(parents=True)
    (folder / "search_spaces" / "cnn.yaml").write_text(SPACE)
    return write_spec(
        folder,
        name="asha",
        data={"synthetic": {"scale": 0.1, "seed": 3}, "tasks": ["prom/prom_core_tata"]},
        axes={"architecture": ["cnn"], "pretraining": ["none"], "tokenizer": ["char"]},
        budget={"trials_per_cell": TRIALS, "max_epochs": 4, "concurrent_trials": 1,
                "grace_epochs": 1, "reduction_factor": 2, "startup_trials": 2},
    )


def outcomes(folder) -> dict[int, tuple[str, int, list[float]]]:
    """Seed -> (outcome, epochs trained, dev score per epoch) of every counted search trial."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{folder / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("asha").experiment_id
    out = {}
    for run in client.search_runs([experiment], tag_filter(Tag.STAGE, Stage.TRIAL)):
        if run.data.tags.get(Tag.OUTCOME) == Outcome.LOST:
            continue
        history = client.get_metric_history(run.info.run_id, MetricName.DEV_SCORE)
        scores = [round(m.value, 6) for m in sorted(history, key=lambda m: m.step)]
        outcome = run.data.tags.get(Tag.OUTCOME, "running")
        out[int(run.data.params["seed"])] = (outcome, len(scores), scores)
    return out


def test_a_resumed_sweep_prunes_the_same_trials_as_a_straight_one(tmp_path):
    # The straight sweep runs beside the stopped one (each trains one trial at a time).
    straight = sweep_spec(tmp_path / "straight")
    straight_log = open(straight.parent / "run.log", "w")
    straight_run = subprocess.Popen(
        [sys.executable, "-m", "ablate.cli", "run", str(straight)], cwd=straight.parent,
        stdout=straight_log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        resumed = stop_and_resume(sweep_spec(tmp_path / "stopped"))
        code = straight_run.wait(timeout=600)
    finally:
        kill_session(straight_run.pid)
        straight_run.wait()
        straight_log.close()
    assert code == 0, (straight.parent / "run.log").read_text()[-3000:]
    expected = outcomes(straight.parent)
    assert len(expected) == TRIALS
    pruned = [seed for seed, (outcome, _, _) in expected.items() if outcome == Outcome.PRUNED]
    assert pruned, f"no trial was stopped early: the test would show nothing {expected}"
    # The same trials (by seed: slot n trains with seed n), stopped at the same epochs, with
    # the same dev scores epoch by epoch.
    assert outcomes(resumed) == expected


def stop_and_resume(stopped):
    """Run the sweep, SIGTERM its driver as its third trial ends, resume it; its folder."""
    log_path = stopped.parent / "first.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "ablate.cli", "run", str(stopped)],
            cwd=stopped.parent, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            deadline = time.time() + 300
            while time.time() < deadline and f"[3/{TRIALS}]" not in log_path.read_text():
                assert process.poll() is None, log_path.read_text()[-3000:]
                time.sleep(0.1)
            assert f"[3/{TRIALS}]" in log_path.read_text(), "sweep too slow to interrupt"
            # At once: the fourth trial (straight through, stopped at its second epoch by the
            # rungs the first three left) has not got that far, so with the rungs lost in the
            # resume it would run to the end.
            process.send_signal(signal.SIGTERM)  # as a cluster pre-empting the driver
            code = process.wait(timeout=120)
        finally:
            kill_session(process.pid)
            process.wait()
    assert code == 143, log_path.read_text()[-3000:]
    before = outcomes(stopped.parent)
    assert 3 <= sum(o != "running" for o, _, _ in before.values()) < TRIALS

    resumed = ablate("run", str(stopped), "--resume", cwd=stopped.parent)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    return stopped.parent
