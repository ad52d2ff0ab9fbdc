"""A study stopped by a signal stops cleanly and says how to continue; only outages are retried."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from ablate.tracking import writer
from ablate.tracking.schema import Outcome, Stage, Tag, tag_filter
from ablate.tracking.writer import TrackingUnavailable, is_outage, with_retry
from tests.helpers import kill_session
from tests.test_e2e import ablate, write_spec


def outages() -> list[BaseException]:
    import requests
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException, RestException
    from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

    try:
        try:
            raise requests.ConnectionError("Connection refused")
        except requests.ConnectionError as exc:
            raise MlflowException(f"API request to http://x failed with exception {exc}")  # noqa: B904
    except MlflowException as wrapped:  # as MLflow's REST client raises it: no __cause__
        refused = wrapped
    locked = MlflowException(
        "(sqlite3.OperationalError) database is locked", error_code=TEMPORARILY_UNAVAILABLE
    )
    locked.__cause__ = sqlalchemy.exc.OperationalError(
        "INSERT", {}, Exception("database is locked")
    )
    return [
        requests.ConnectionError("Connection refused"),
        requests.Timeout("read timed out"),
        ConnectionResetError(),
        refused,
        RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"}),
        RestException({"error_code": "INTERNAL_ERROR", "message": "boom"}),
        RestException({"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "slow down"}),
        RestException({"error_code": "502", "message": "bad gateway"}),
        MlflowException(
            "API request to endpoint /api/2.0/mlflow/runs/log-batch failed with "
            "error code 503 != 200",
            error_code=TEMPORARILY_UNAVAILABLE,
        ),
        locked,
    ]


def bugs() -> list[BaseException]:
    from mlflow.exceptions import MlflowException, RestException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return [
        ValueError("a bug"),
        KeyError("trial_id"),
        MlflowException("Changing param values is not allowed", error_code=INVALID_PARAMETER_VALUE),
        MlflowException("a local store's internal error"),  # not the server: no retry
        RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such run"}),
        RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad metric"}),
    ]


def failing(errors: list[BaseException]):
    calls = []

    def call():
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return "sent"

    return call, calls


def test_only_outages_are_retried(monkeypatch):
    monkeypatch.setattr(writer.time, "sleep", lambda seconds: None)
    for exc in outages():
        assert is_outage(exc), repr(exc)
        call, calls = failing([exc, exc])
        assert with_retry(call, limit_seconds=60, what="a write") == "sent"
        assert len(calls) == 3
    for exc in bugs():
        assert not is_outage(exc), repr(exc)
        call, calls = failing([exc])
        with pytest.raises(type(exc)):
            with_retry(call, limit_seconds=60, what="a write")
        assert len(calls) == 1  # raised at once, never spooled as an outage


def test_an_outage_past_the_limit_is_one_message_naming_the_spool_and_resume():
    import requests

    call, _ = failing([requests.ConnectionError("Connection refused")] * 5)
    with pytest.raises(TrackingUnavailable) as raised:
        with_retry(call, limit_seconds=0, what="metrics of trial t1")
    stopped = TrackingUnavailable(raised.value.reason, spool="/w/spool.jsonl", unsent=3)
    message = str(stopped.with_resume("ablate run study.yaml --resume"))
    assert "metrics of trial t1" in message and "Connection refused" in message
    assert "3 unsent records are saved in /w/spool.jsonl" in message
    assert "`ablate run study.yaml --resume`" in message
    assert message.count("The study stopped") == 1


def test_sigterm_is_recorded_and_handed_to_tune(monkeypatch):
    from ablate.study import Interruption, StudyInterrupted

    told = []
    monkeypatch.setattr(
        signal,
        "getsignal",
        lambda signum, real=signal.getsignal: (
            (lambda sig, frame: told.append(sig)) if signum == signal.SIGUSR1 else real(signum)
        ),
    )
    before = signal.getsignal(signal.SIGTERM)
    with Interruption() as stop:
        assert os.environ["TUNE_DISABLE_SIGINT_HANDLER"] == "1"  # the study's handler, not Tune's
        stop.check()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert told == [signal.SIGTERM]  # Tune's stop flag is set: it saves and returns
        with pytest.raises(StudyInterrupted) as raised:
            stop.check()
        assert raised.value.exit_code == 143
        with pytest.raises(KeyboardInterrupt):  # a second signal: at once
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.integration
def test_sigint_stops_the_study_and_resume_finishes_it(tmp_path):
    from mlflow import MlflowClient

    spec = write_spec(
        tmp_path,
        name="interrupt",
        data={"synthetic": {"scale": 0.1, "seed": 7}, "tasks": ["prom/prom_core_tata"]},
        axes={"architecture": ["cnn"], "pretraining": ["none"], "tokenizer": ["char"]},
        budget={"trials_per_cell": 4, "max_epochs": 2, "concurrent_trials": 2},
        replicates=[0],
    )
    log_path = tmp_path / "first.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "ablate.cli", "run", str(spec)],
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            deadline = time.time() + 300
            while time.time() < deadline and "[1/4]" not in log_path.read_text():
                assert process.poll() is None, log_path.read_text()[-3000:]
                time.sleep(0.2)
            assert "[1/4]" in log_path.read_text(), "sweep too slow to interrupt"
            process.send_signal(signal.SIGINT)  # Ctrl-C, to the driver
            code = process.wait(timeout=120)
        finally:
            kill_session(process.pid)  # whatever of its local Ray is left
            process.wait()
    output = log_path.read_text()
    assert code == 130, output[-3000:]
    assert f"ablate run {spec} --resume" in output, output[-3000:]
    assert "Tuner.restore" not in output
    assert "trials (0 failed)" not in output
    assert "closed" not in output  # no lost runs were looked for

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("interrupt").experiment_id
    cells = client.search_runs([experiment], tag_filter(Tag.STAGE, Stage.CELL))
    assert cells and all(r.info.status == "KILLED" for r in cells)
    (sweep_run,) = client.search_runs([experiment], tag_filter(Tag.STAGE, Stage.SWEEP))
    assert sweep_run.info.status == "KILLED"
    assert not client.search_runs([experiment], tag_filter(Tag.STAGE, Stage.REPLICATE))
    trials = client.search_runs([experiment], tag_filter(Tag.STAGE, Stage.TRIAL))
    assert sum(r.info.status == "FINISHED" for r in trials) < 4

    resumed = ablate("run", str(spec), "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming sweep" in resumed.stdout
    trials = [
        r
        for r in client.search_runs([experiment], tag_filter(Tag.STAGE, Stage.TRIAL))
        if r.data.tags.get(Tag.OUTCOME) != Outcome.LOST
    ]
    assert Counter(r.data.tags[Tag.CELL] for r in trials).most_common() == [
        (cells[0].data.tags[Tag.CELL], 4)
    ]
    assert all(r.info.status == "FINISHED" for r in trials)
    assert len({r.data.tags[Tag.TRIAL_ID] for r in trials}) == 4
    replicates = client.search_runs([experiment], tag_filter(Tag.STAGE, Stage.REPLICATE))
    assert len(replicates) == 1 and replicates[0].info.status == "FINISHED"
    (cell,) = client.search_runs([experiment], tag_filter(Tag.STAGE, Stage.CELL))
    assert cell.info.status == "FINISHED"
