"""The console of `ablate run`: ablate's own lines and one progress display; Ray's, Tune's, Ray
Data's and MLflow's own output in a log file named at the start (on the console with
`--verbose`)."""

from __future__ import annotations

import io
import logging
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from ablate import console as board
from ablate.console import StudyConsole
from ablate.trial import TrialConfig
from ablate.tune_plugins import TrialProgress
from tests.test_e2e import ablate, write_spec

# What Ray, Tune, Ray Data, Ray Train and MLflow print on their own.
CHATTER = [
    "Configuration for experiment",
    "Number of trials",
    "9223372036854775807",
    "tensorboard",
    "View detailed results here",
    "(raylet)",
    "pid=",
    "Failed to query Ray Train Controller",
    "Execution plan of Dataset",
    "execution finished",
    "Progress bars disabled",
    "Token authentication",
    "View run",
    "Downloading artifacts",
    "mlflow.store.db.utils",
    "Started a local Ray instance",
]
# Every line ablate itself prints during a run: its headline, the log file, its progress
# (indented), a stage's table and the last line.
OWN_LINE = re.compile(
    r"^(study \S+: |Ray's logs: |  |(search|replicates): \d+/\d+ trials done|finished \d+ trials)"
)


def fake_trial(cell: str, trial_id: str, epochs: int, score: float, **result) -> SimpleNamespace:
    config = TrialConfig(cell=cell, hparams={"learning_rate": 0.01}, seed=0).to_tune()
    return SimpleNamespace(
        trial_id=trial_id, config=config, status="TERMINATED", error_file="err.txt",
        last_result={"training_iteration": epochs, "best_dev_score": score, **result},
    )


def test_plain_console_prints_a_line_per_trial_and_a_table_per_stage(capsys):
    lines: list[str] = []
    with StudyConsole(verbose=True, live=False, summary_every_s=0.0) as console:
        progress = TrialProgress(4, {"a": 2, "b": 2}, lines.append)
        progress.setup()
        progress.on_step_begin(0, [])
        progress.on_trial_start(0, [], fake_trial("a", "t1", 0, 0.0))
        progress.on_trial_complete(0, [], fake_trial("a", "t1", 2, 0.5))
        progress.on_trial_complete(0, [], fake_trial("a", "t2", 2, 0.7))
        progress.on_trial_complete(0, [], fake_trial("b", "t3", 1, 0.9))  # stopped by ASHA
        failed = fake_trial("b", "t4", 1, 0.2)
        progress.on_trial_error(0, [], failed)
        progress.on_step_end(0, [])
        progress.on_experiment_end([])
        assert console.stage is not None and console.stage.ended is not None
    assert lines == [
        "[1/4] a trial t1: completed after 2/2 epochs, best_dev_score 0.5000",
        "[2/4] a trial t2: completed after 2/2 epochs, best_dev_score 0.7000",
        "[3/4] b trial t3: stopped early after 1/2 epochs, best_dev_score 0.9000",
        "[3/4] b trial t4: FAILED, infrastructure (err.txt) after 1/2 epochs, "
        "best_dev_score 0.2000",
    ]
    out = capsys.readouterr().out
    # The periodic progress line, then the stage's table: the best of *completed* trials.
    assert "  search: 3/4 trials done, 0 running, 1 stopped early, 1 failed;" in out
    assert "about" in out and "left" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[-2:]}
    assert rows["a"][1:] == ["2/2", "0", "0", "0/0", "0.7000"]
    assert rows["b"][1:] == ["1/2", "0", "1", "0/1", "-"]
    assert board.current() is None  # the context ended


def test_live_console_draws_the_table_and_prints_only_failures(monkeypatch):
    lines: list[str] = []
    screen = io.StringIO()
    console = StudyConsole(verbose=True, live=True)
    from rich.console import Console

    console.console = Console(file=screen, force_terminal=True, width=140, height=30)
    with console:
        progress = TrialProgress(2, {"kmer|none|char|tf/0": 1}, lines.append,
                                 stage="replicates", budgets={"kmer|none|char|tf/0": 2},
                                 score="test_score", mean=True)
        progress.setup()
        progress.on_trial_start(0, [], fake_trial("kmer|none|char|tf/0", "r1", 0, 0.0))
        assert console._live is not None
        progress.on_trial_complete(
            0, [], fake_trial("kmer|none|char|tf/0", "r1", 1, 0.4, test_score=0.6))
        progress.on_trial_complete(
            0, [], fake_trial("kmer|none|char|tf/0", "r2", 1, 0.4, model_failure=1,
                              failure="nan_loss"))
        progress.on_experiment_end([])
        assert console._live is None
    assert lines == ["[2/2] kmer|none|char|tf/0 trial r2: model failed (nan_loss) after 1/1 "
                     "epochs, best_dev_score 0.4000"]
    drawn = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", screen.getvalue())
    assert "replicates: 2/2 trials done, 0 running, 0 stopped early, 1 failed" in drawn
    assert "mean test_score" in drawn and "0.3000" in drawn  # (0.6 + 0) / 2


def test_a_resumed_experiment_counts_the_trials_it_had_finished():
    lines: list[str] = []
    progress = TrialProgress(4, {"a": 2, "b": 2}, lines.append)
    progress.setup()
    errored = fake_trial("b", "t0", 1, 0.0)
    errored.status = "ERROR"
    restored = [fake_trial("a", "t1", 2, 0.5), fake_trial("b", "t2", 1, 0.1), errored]
    progress.on_step_begin(0, restored)
    progress.on_trial_complete(0, [], fake_trial("a", "t3", 2, 0.6))
    assert lines[0].startswith("[3/4] a trial t3: completed")


def test_library_output_goes_to_the_log_file_and_verbose_leaves_it(tmp_path, capfd):
    from ray._private import worker

    ray_logger = logging.getLogger("ray")
    handlers = list(ray_logger.handlers)
    path = tmp_path / "logs" / "run.log"
    with StudyConsole(log_path=path, live=False) as console:
        assert console.output is not None
        logging.getLogger("ray.tune").warning("a warning of Tune's")
        logging.getLogger("ray.data").info("an execution plan of Ray Data's")
        logging.getLogger("mlflow").info("creating the tables")
        worker.print_worker_logs(
            {"lines": ["a worker's line"], "pid": 7, "ip": "x", "localhost": "x"}, sys.stdout)
    seen = capfd.readouterr()
    text = path.read_text()
    for line in ("a warning of Tune's", "an execution plan of Ray Data's", "creating the tables",
                 "(pid=7) a worker's line"):
        assert line in text, line
        assert line not in seen.out + seen.err, line
    assert set(ray_logger.handlers) == set(handlers)  # put back

    printer = worker.print_worker_logs
    assert printer.__module__ == "ray._private.worker"  # Ray's own, put back
    with StudyConsole(verbose=True, log_path=tmp_path / "unused.log", live=False) as console:
        assert console.output is None and console.log_path is None
        assert set(ray_logger.handlers) == set(handlers)  # Ray's own, untouched
        assert worker.print_worker_logs is printer
    assert not (tmp_path / "unused.log").exists()


def study_spec(folder: Path, name: str, **overrides) -> Path:
    fields = {
        "data": {"synthetic": {"scale": 0.05, "seed": 3}, "tasks": ["tf/0"]},
        "axes": {"architecture": ["kmer", "cnn"], "pretraining": ["none"], "tokenizer": ["char"]},
        "budget": {"trials_per_cell": 2, "max_epochs": 1, "concurrent_trials": 2},
        **overrides,
    }
    return write_spec(folder, name=name, **fields)


@pytest.mark.integration
def test_run_console_holds_only_ablate_lines_and_names_the_log(tmp_path):
    spec = study_spec(tmp_path, "console", replicates=[0])
    run = ablate("run", str(spec), cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    output = run.stdout + run.stderr
    for chatter in CHATTER:
        assert chatter not in output, chatter
    lines = output.splitlines()
    strangers = [line for line in lines if not OWN_LINE.match(line)]
    assert not strangers, strangers
    assert "[4/4]" in run.stdout and "[2/2]" in run.stdout
    assert "search: 4/4 trials done" in run.stdout
    assert "replicates: 2/2 trials done" in run.stdout
    assert "finished 4 trials (0 failed)" in run.stdout
    (named,) = [line for line in lines if line.startswith("Ray's logs: ")]
    log = Path(named.removeprefix("Ray's logs: "))
    assert log.parent == tmp_path / ".ablate" / "logs"
    text = log.read_text()
    assert "Started a local Ray instance" in text  # Ray's
    assert "Wrote the latest version of all result files" in text  # Tune's
    assert "execution finished" in text  # Ray Data's
    assert "Creating initial MLflow database tables" in text  # MLflow's


@pytest.mark.integration
def test_verbose_run_leaves_ray_output_on_the_console(tmp_path):
    spec = study_spec(tmp_path, "console-verbose",
                      axes={"architecture": ["kmer"], "pretraining": ["none"],
                            "tokenizer": ["char"]},
                      budget={"trials_per_cell": 1, "max_epochs": 1, "concurrent_trials": 1})
    run = ablate("run", str(spec), "--verbose", cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Ray's logs:" not in run.stdout
    assert "Configuration for experiment" in run.stdout  # Tune's own box
    assert "execution finished" in run.stderr  # Ray Data's
    assert "[1/1]" in run.stdout
    assert not (tmp_path / ".ablate" / "logs").exists()
