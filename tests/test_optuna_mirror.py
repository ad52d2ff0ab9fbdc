"""Every cell's Optuna study copied to an RDB storage for optuna-dashboard, written behind.

Real Optuna, real SQLite (and, where PostgreSQL is installed, a real PostgreSQL), no mocks: a
``CellSearcher`` with a ``StudyMirror`` driven through Tune's calls, then the copies loaded back
with ``optuna.load_study`` and compared with the searcher's in-memory studies.
"""

from __future__ import annotations

import logging
import os
import pickle
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import yaml
from ray.tune.search import Searcher

from ablate.optuna_mirror import (
    LIVE_MIRRORS,
    POSTGRES_SCHEMA,
    SEARCHER_NUMBER,
    TUNE_TRIAL_ID,
    StudyMirror,
    close_mirrors,
    for_search,
    resolve_storage,
    study_name,
)
from ablate.spec import DEFAULT_SEARCH_SPACE_DIR, Cell, load_search_space
from ablate.tracking.schema import MetricName
from ablate.tune_plugins import TRIALS_SEEN, CellSearcher

REPO = Path(__file__).resolve().parents[1]
CELLS = [Cell("convnova", "none", "char", "tf/0"), Cell("transformer", "none", "bpe", "tf/0")]
MAX_EPOCHS = 3
State = optuna.trial.TrialState


@pytest.fixture(autouse=True)
def _clean():
    TRIALS_SEEN.clear()
    yield
    TRIALS_SEEN.clear()
    for key in list(LIVE_MIRRORS):
        close_mirrors(key, timeout=5)


def mirror_for(url: str, key: str = "test") -> StudyMirror:
    return for_search(url, "for the test", study="mirror", sweep="mirror-0001", cells=CELLS,
                      key=key, progress=lambda _: None)


def make_searcher(mirror: StudyMirror | None, trials: int = 4) -> CellSearcher:
    spaces = {a: load_search_space(DEFAULT_SEARCH_SPACE_DIR, a)
              for a in ("convnova", "transformer")}
    return CellSearcher(CELLS, spaces, trials_per_cell=trials, max_epochs=MAX_EPOCHS,
                        max_concurrent=8, seed=0, mirror=mirror)


def result(value: float, epoch: int, **extra) -> dict:
    return {MetricName.BEST_DEV_SCORE: value, "training_iteration": epoch, **extra}


def run_trial(searcher: CellSearcher, trial_id: str, outcome: str, value: float = 0.5) -> None:
    """Suggest one trial and end it: completed, stopped early (pruned), its model failed,
    or errored (an infrastructure failure)."""
    assert isinstance(searcher.suggest(trial_id), dict)
    searcher.on_trial_result(trial_id, result(value / 2, 1))
    if outcome == "complete":
        searcher.on_trial_result(trial_id, result(value * 0.8, 2))
        searcher.on_trial_complete(trial_id, result(value, MAX_EPOCHS))
    elif outcome == "pruned":
        searcher.on_trial_complete(trial_id, result(value * 0.7, 2))
    elif outcome == "model_failed":
        searcher.on_trial_complete(trial_id, result(value / 2, 2, **{
            MetricName.MODEL_FAILURE: 1, "failure": "nan_loss"}))
    else:
        searcher.on_trial_complete(trial_id, error=True)


# Two cells alternate, so each cell gets every other outcome: both see each state.
OUTCOMES = ["complete", "complete", "pruned", "model_failed", "model_failed", "pruned",
            "complete", "error", "error", "complete"]


def copies(url: str) -> dict[str, optuna.Study]:
    """The mirrored studies at ``url``, by cell."""
    studies = {}
    for name in optuna.study.get_all_study_names(url):
        study = optuna.load_study(study_name=name, storage=url)
        studies[study.user_attrs["cell"]] = study
    return studies


def assert_same_trials(searcher: CellSearcher, url: str) -> None:
    """The copies hold exactly the in-memory studies' finished trials, field for field."""
    mirrored = copies(url)
    assert set(mirrored) == {c.name for c in CELLS}
    for cell, study in searcher.studies.items():
        copy = mirrored[cell]
        assert copy.study_name == study_name("mirror", "mirror-0001", cell)
        assert copy.direction == optuna.study.StudyDirection.MAXIMIZE
        expected = [t for t in study.trials if t.state.is_finished()]
        got = sorted(copy.trials, key=lambda t: t.user_attrs[SEARCHER_NUMBER])
        assert [t.user_attrs[SEARCHER_NUMBER] for t in got] == [t.number for t in expected]
        for mine, theirs in zip(expected, got, strict=True):
            assert theirs.state == mine.state
            assert theirs.values == mine.values
            assert theirs.params == mine.params
            assert theirs.distributions == mine.distributions
            assert theirs.intermediate_values == mine.intermediate_values
            assert theirs.user_attrs == {**mine.user_attrs, SEARCHER_NUMBER: mine.number}
            assert theirs.datetime_start == mine.datetime_start
            assert theirs.datetime_complete == mine.datetime_complete


# --- where the copy goes ------------------------------------------------------------------------


def test_storage_follows_mlflow_unless_set(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    work = tmp_path / ".ablate"
    url, _ = resolve_storage(None, "sqlite:///mlruns.db", work)
    assert url == f"sqlite:///{tmp_path / 'mlruns.optuna.db'}"
    url, _ = resolve_storage(None, f"sqlite:///{tmp_path / 'sub' / 'x.db'}", work)
    assert url == f"sqlite:///{tmp_path / 'sub' / 'x.optuna.db'}"
    url, note = resolve_storage(None, "http://mlflow:5000", work)
    assert url == f"sqlite:///{work / 'optuna.db'}" and "tracking server" in note
    url, _ = resolve_storage(None, "postgresql+psycopg2://u:p@db:5432/mlflow?sslmode=require",
                             work)
    assert url == ("postgresql+psycopg2://u:p@db:5432/mlflow?sslmode=require"
                   f"&options=-csearch_path%3D{POSTGRES_SCHEMA}")
    assert resolve_storage("none", "sqlite:///mlruns.db", work)[0] is None
    assert resolve_storage("sqlite:///o.db", "http://x", work)[0] == "sqlite:///o.db"
    assert resolve_storage("runs/o.db", "http://x", work)[0] == (
        f"sqlite:///{tmp_path / 'runs' / 'o.db'}")


def test_the_search_names_the_storage_and_the_dashboard_command():
    lines: list[str] = []
    url = "postgresql://mlflow:secret@db/mlflow"
    for_search(url, "to a test database", study="s", sweep="s-1", cells=CELLS, key="k",
               progress=lines.append)
    (line,) = lines
    assert "optuna-dashboard 'postgresql://mlflow:***@db/mlflow'" in line
    assert "secret" not in line and "password hidden" in line
    assert for_search(None, "off", study="s", sweep="s-1", cells=CELLS, key="k",
                      progress=lines.append) is None
    assert len(lines) == 1


# --- (a) the copy is the study ------------------------------------------------------------------


def test_the_copy_has_every_trial_as_the_searcher_told_it(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    mirror = mirror_for(url)
    searcher = make_searcher(mirror)
    for n, outcome in enumerate(OUTCOMES):
        run_trial(searcher, f"t{n}", outcome, value=0.1 * (n + 1))
    assert searcher.suggest("done") == Searcher.FINISHED
    assert mirror.flush(timeout=60)
    assert mirror.backlog() == 0
    states = {t.state for s in searcher.studies.values() for t in s.trials}
    assert states == {State.COMPLETE, State.PRUNED, State.FAIL}
    assert_same_trials(searcher, url)
    copy = copies(url)[CELLS[0].name]
    assert {"study": "mirror", "sweep": "mirror-0001", "architecture": "convnova",
            "tokenizer": "char", "task": "tf/0"}.items() <= copy.user_attrs.items()
    failed = [t for s in copies(url).values() for t in s.trials if t.state == State.FAIL]
    assert {t.user_attrs.get("model_failure") for t in failed} >= {"nan_loss"}
    assert any(t.user_attrs.get("infrastructure") for t in failed)
    assert all(t.user_attrs[TUNE_TRIAL_ID].startswith("t") for t in failed)
    mirror.close(timeout=10)
    assert not LIVE_MIRRORS.get("test")


# --- (b) the hand-off never waits for the database -------------------------------------------


def test_telling_a_trial_does_no_database_io(tmp_path):
    path = tmp_path / "optuna.db"
    url = f"sqlite:///{path}"
    mirror = mirror_for(url)
    searcher = make_searcher(mirror)
    run_trial(searcher, "first", "complete")
    run_trial(searcher, "second", "complete")
    assert mirror.flush(timeout=60)  # the tables and both studies exist
    lock = sqlite3.connect(path, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # nobody else may read or write the file now
    try:
        for n, outcome in enumerate(["complete", "pruned", "model_failed", "complete"]):
            run_trial(searcher, f"locked{n}", outcome)  # returns: no I/O in the hand-off
        searcher.save(str(tmp_path / "state.pkl"))  # returns too: the writer has them now
        # Told to the searcher's studies, queued, and not in the file: the mirror lags.
        assert sum(len(s.trials) for s in searcher.studies.values()) == 6
        assert mirror.backlog() == 4
        assert lock.execute("SELECT count(*) FROM trials").fetchone() == (2,)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert mirror.flush(timeout=60)  # then catches up
    assert mirror.backlog() == 0
    assert_same_trials(searcher, url)


def test_a_trial_is_copied_once_the_searchers_state_holding_it_is_saved(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    mirror = mirror_for(url)
    searcher = make_searcher(mirror)
    run_trial(searcher, "saved", "complete")
    searcher.save(str(tmp_path / "state.pkl"))
    run_trial(searcher, "told-after", "pruned")
    assert mirror.flush(timeout=60, release=False)  # what was released is written...
    assert [t.user_attrs[TUNE_TRIAL_ID] for s in copies(url).values() for t in s.trials] == [
        "saved"]
    assert mirror.backlog() == 1  # ...the trial a resume would not know yet is held back
    assert mirror.flush(timeout=60)  # the end of the search: the searcher's state is final
    assert_same_trials(searcher, url)


# --- (c) save, restore: nothing copied twice, nothing missing -------------------------------


DRIVER = textwrap.dedent("""
    import os, sqlite3, sys
    from tests.test_optuna_mirror import mirror_for, make_searcher, run_trial
    url, db, state = sys.argv[1:4]
    mirror = mirror_for(url)
    searcher = make_searcher(mirror, trials=6)
    for n, outcome in enumerate(["complete", "pruned", "complete"]):
        run_trial(searcher, f"a{n}", outcome)
    searcher.save(state)
    assert mirror.flush(timeout=60, release=False)
    lock = sqlite3.connect(db, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    for n, outcome in enumerate(["complete", "model_failed"]):
        run_trial(searcher, f"b{n}", outcome)
    assert isinstance(searcher.suggest("running"), dict)  # live when the driver dies
    searcher.save(state)
    run_trial(searcher, "forgotten", "complete")  # told after the last save
    assert mirror.backlog() == 3
    os._exit(0)  # killed: two saved trials never copied, one never saved
""")


def test_a_restored_searcher_copies_what_was_missing_and_nothing_twice(tmp_path):
    db = tmp_path / "optuna.db"
    url, state = f"sqlite:///{db}", tmp_path / "searcher.pkl"
    done = subprocess.run([sys.executable, "-c", DRIVER, url, str(db), str(state)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sum(len(s.trials) for s in copies(url).values()) == 3
    with open(state, "rb") as handle:
        saved = pickle.load(handle)
    assert set(saved["mirror"].__getstate__()) == {"url", "names", "attrs", "key"}
    assert saved["mirror"]._thread is None  # the pickle holds the configuration only

    searcher = make_searcher(mirror_for("sqlite:///elsewhere-unused.db"), trials=6)
    searcher.restore(str(state))  # the mirror comes back from the saved configuration
    assert searcher.mirror.url == url
    for n, outcome in enumerate(["complete", "pruned", "complete", "error", "complete"]):
        run_trial(searcher, f"c{n}", outcome)
    assert searcher.mirror.flush(timeout=60)
    assert_same_trials(searcher, url)  # the two missing, the lost one, the new ones, once
    ids = [t.user_attrs[TUNE_TRIAL_ID] for s in copies(url).values() for t in s.trials]
    assert len(ids) == len(set(ids)) == 3 + 2 + 1 + 5
    assert "forgotten" not in ids  # the resumed search knows nothing of it: nor does the copy
    lost = [t for s in copies(url).values() for t in s.trials if t.user_attrs.get("lost")]
    assert [t.user_attrs[TUNE_TRIAL_ID] for t in lost] == ["running"]
    assert pickle.loads(pickle.dumps(searcher)).mirror.url == url  # live writer: still pickles

    again = make_searcher(None, trials=6)  # a second restore of the same state copies nothing more
    searcher.mirror.close(timeout=10)
    again.restore(str(state))
    again.suggest("d0")
    assert again.mirror.flush(timeout=60)
    assert sum(len(s.trials) for s in copies(url).values()) == 11


# --- (d) a broken storage: one warning, the search goes on ------------------------------------


def _unreachable_postgres() -> str:
    from tests.helpers import free_port

    return f"postgresql+psycopg2://nobody:nothing@127.0.0.1:{free_port()}/none"


@pytest.mark.parametrize("broken", ["sqlite-under-a-file", "postgres-refused"])
def test_a_broken_storage_warns_once_and_the_search_goes_on(tmp_path, caplog, broken):
    if broken == "sqlite-under-a-file":
        (tmp_path / "a-file").write_text("not a folder")
        url = f"sqlite:///{tmp_path / 'a-file' / 'optuna.db'}"
    else:
        url = _unreachable_postgres()
    mirror = mirror_for(url)
    searcher = make_searcher(mirror, trials=3)
    with caplog.at_level(logging.WARNING, logger="ablate.optuna_mirror"):
        for n, outcome in enumerate(OUTCOMES[:6]):
            run_trial(searcher, f"t{n}", outcome)
            assert mirror.flush(timeout=30) is False  # each flush retries, and fails again
        assert searcher.suggest("done") == Searcher.FINISHED
        warnings = [r for r in caplog.records if r.name == "ablate.optuna_mirror"]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert "failed" in warnings[0].getMessage() and "search goes on" in warnings[0].getMessage()
        assert mirror.backlog() == 6
        assert mirror.close(timeout=10) is False
    final = [r.getMessage() for r in caplog.records if r.name == "ablate.optuna_mirror"][-1]
    assert "6 trial(s) not copied" in final
    assert sum(len(s.trials) for s in searcher.studies.values()) == 6


# --- PostgreSQL: MLflow's database, Optuna's own schema --------------------------------------


def test_the_copy_shares_mlflows_postgres_database_in_a_schema_of_its_own(postgres, tmp_path):
    from mlflow import MlflowClient

    mlflow_uri = postgres.uri()
    client = MlflowClient(mlflow_uri)
    client.search_experiments()  # MLflow's tables, with its alembic_version
    (mlflow_revision,) = postgres.query("SELECT version_num FROM public.alembic_version")
    url, _ = resolve_storage(None, mlflow_uri, tmp_path)
    mirror = for_search(url, "test", study="mirror", sweep="mirror-0001", cells=CELLS,
                        key="pg", progress=lambda _: None)
    searcher = make_searcher(mirror, trials=2)
    for n, outcome in enumerate(OUTCOMES[:4]):
        run_trial(searcher, f"t{n}", outcome)
    assert mirror.flush(timeout=120)
    assert_same_trials(searcher, url)
    tables = {schema for (schema,) in postgres.query(
        "SELECT table_schema FROM information_schema.tables WHERE table_name = 'trials'")}
    assert tables == {POSTGRES_SCHEMA}
    assert postgres.query("SELECT version_num FROM public.alembic_version") == [mlflow_revision]
    client.create_experiment(f"after-optuna-{tmp_path.name}")  # MLflow still at home


# --- (e) end to end: one real tiny study through the `ablate` command ------------------------


@pytest.mark.integration
def test_a_study_leaves_one_optuna_study_per_cell(tmp_path):
    from ablate.tracking.reader import latest_sweep

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    spec = {
        "name": "mirror-e2e",
        "data": {"synthetic": {"scale": 0.02, "seed": 1}, "tasks": ["tf/0"]},
        "axes": {"architecture": ["cnn", "kmer"], "pretraining": ["none"],
                 "tokenizer": ["char"]},
        "budget": {"trials_per_cell": 2, "max_epochs": 1, "concurrent_trials": 2},
        "seed": 0,
        "tracking": {"uri": uri},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    done = subprocess.run([sys.executable, "-m", "ablate.cli", "run", str(path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    url = f"sqlite:///{tmp_path / 'mlruns.optuna.db'}"
    assert f"optuna-dashboard '{url}'" in done.stdout
    _, sweep = latest_sweep(uri, "mirror-e2e")
    names = optuna.study.get_all_study_names(url)
    assert sorted(names) == sorted(f"mirror-e2e/{sweep}/{cell}" for cell in
                                   ("cnn|none|char|tf/0", "kmer|none|char|tf/0"))
    for name in names:
        study = optuna.load_study(study_name=name, storage=url)
        assert study.user_attrs["sweep"] == sweep and study.user_attrs["trials_per_cell"] == 2
        assert len(study.trials) == 2
        assert all(t.state == State.COMPLETE and t.intermediate_values for t in study.trials)
        assert len({t.user_attrs[TUNE_TRIAL_ID] for t in study.trials}) == 2
