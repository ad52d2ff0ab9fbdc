"""A write-behind copy of every cell's Optuna study in an RDB storage, for optuna-dashboard.

``CellSearcher`` keeps its Optuna studies in memory (its pickled state is what a resume
restores); ``StudyMirror`` copies each trial it tells into one Optuna study per cell of an
``optuna.storages.RDBStorage`` (SQLite or PostgreSQL), named ``<study>/<sweep>/<cell>``, so the
search can be watched and inspected with ``optuna-dashboard <url>``. The copy is only a view:
nothing reads it back.

Write-behind: the searcher's hand-off (``put``) only appends the told trial (Optuna's
``FrozenTrial``, which its in-memory storage never changes once the trial is finished) to a
list; when the searcher's state is next saved (``release``, from ``CellSearcher.save``: Tune
saves it with every experiment snapshot, about every second in a study) the list goes to a
queue that a daemon thread drains: it connects, creates the studies and adds the trials. So
the copy never holds a trial that a resume would forget (one told after the driver's last
save, run again after a kill). A storage that fails
or cannot be reached never fails nor slows the search: one warning is logged, the unwritten
trials are kept in memory and retried with back-off (1 s doubling to 60 s) until they are
written or the search ends; ``close`` (called by the driver at the end of the search, when the
searcher's state is final) releases what is held, waits for the queue to drain, at most its
timeout, and drops what is still unwritten with a warning naming how many (a ``--resume`` of
the sweep copies them again). With remote storage, the saved state a resume reads may lag the
local one the release follows by one upload.

Nothing of the thread or queue is pickled (Tune pickles the searcher, its mirror with it): an
unpickled mirror is its configuration only, and starts a new writer on its first ``put``. Each
copied trial carries the Tune trial id it ran as (user attribute ``tune_trial_id``) and its
number in the searcher's study (``searcher_trial_number``: the copy's own number follows the
order trials ended in); a writer reads the trials its studies already hold when it first opens
them and skips those, so a restored searcher can hand over all its finished trials again
(``put_all``) and only the missing ones are added. The first copy of a Tune trial wins.
"""

from __future__ import annotations

import collections
import copy
import logging
import queue
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import optuna

logger = logging.getLogger(__name__)

DISABLED = "none"
# The PostgreSQL schema Optuna's tables go to when they share MLflow's database: both keep their
# schema revision in a table named ``alembic_version``, so they cannot share one schema.
POSTGRES_SCHEMA = "optuna"
FLUSH_SECONDS = 30.0
RETRY_MIN_SECONDS, RETRY_MAX_SECONDS = 1.0, 60.0
TUNE_TRIAL_ID, SEARCHER_NUMBER = "tune_trial_id", "searcher_trial_number"
_FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
             optuna.trial.TrialState.FAIL)
# key -> the mirrors with a writer started in this process under that key (a search's state
# key); ``close_mirrors`` drains them. Module-level because Tune pickles and restores the
# searcher (and so its mirror) apart from the driver's own objects.
LIVE_MIRRORS: dict[str, list[StudyMirror]] = {}


def resolve_storage(setting: str | None, tracking_uri: str,
                    work_dir: Path) -> tuple[str | None, str]:
    """The RDB URL the cells' Optuna studies are copied to, and where it comes from (words).

    ``setting`` (``tracking.optuna_storage``): ``"none"`` turns the copy off; a URL is taken as
    it is, a bare path as a SQLite file (relative to the current folder). Unset, it follows
    MLflow's ``tracking_uri``: beside a ``sqlite:///X.db`` a ``sqlite:///X.optuna.db``;
    MLflow's own PostgreSQL database, in the schema ``optuna`` (``POSTGRES_SCHEMA``: MLflow's
    and Optuna's tables both have an ``alembic_version``); otherwise (a tracking server, a
    file store, MySQL, an in-memory SQLite) ``optuna.db`` in ``work_dir``.
    """
    if setting is not None and setting.strip():
        if setting.strip().lower() == DISABLED:
            return None, "off (tracking.optuna_storage: none)"
        if "://" in setting:
            return setting, "to tracking.optuna_storage"
        path = Path(setting).expanduser().resolve()
        return f"sqlite:///{path}", "to tracking.optuna_storage"
    scheme = tracking_uri.split("://", 1)[0].lower() if "://" in tracking_uri else ""
    if scheme == "sqlite":
        path = tracking_uri.split("://", 1)[1].split("?", 1)[0]
        path = path[1:] if path.startswith("/") else path
        if path and path != ":memory:":
            mlflow_db = Path(path).expanduser().resolve()
            return (f"sqlite:///{mlflow_db.with_name(mlflow_db.stem + '.optuna.db')}",
                    "beside MLflow's SQLite file")
    if scheme.split("+", 1)[0] in ("postgresql", "postgres"):
        return (with_search_path(tracking_uri, POSTGRES_SCHEMA),
                f"to MLflow's PostgreSQL database, schema {POSTGRES_SCHEMA}")
    where = "a tracking server" if scheme in ("http", "https") else f"{tracking_uri!r}"
    return (f"sqlite:///{(Path(work_dir) / 'optuna.db').resolve()}",
            f"to the work dir, as MLflow is {where} (tracking.optuna_storage sets another)")


def with_search_path(url: str, schema: str) -> str:
    """A PostgreSQL URL whose connections use ``schema`` (libpq's ``options``)."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    option = f"-csearch_path={schema}"
    for i, (name, value) in enumerate(query):
        if name == "options":
            query[i] = (name, f"{value} {option}")
            break
    else:
        query.append(("options", option))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def shown(url: str) -> str:
    """``url`` with its password hidden, for the console."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy parses: it has no password to hide either
        return url


def study_name(study: str, sweep: str, cell: str) -> str:
    return f"{study}/{sweep}/{cell}"


def for_search(url: str | None, note: str, *, study: str, sweep: str, cells: Iterable[Any],
               key: str, extra: dict[str, Any] | None = None,
               progress: Callable[[str], None] = print) -> StudyMirror | None:
    """The mirror of a search's cells (``ablate.spec.Cell``), with one console line naming
    where it goes and the command that opens it; None when it is off."""
    if url is None:
        return None
    names, attrs = {}, {}
    for cell in cells:
        name = names[cell.name] = study_name(study, sweep, cell.name)
        attrs[name] = {
            "study": study, "sweep": sweep, "cell": cell.name,
            "architecture": cell.architecture, "pretraining": cell.pretraining,
            "tokenizer": cell.tokenizer, "task": cell.task, **(extra or {}),
        }
    hidden = " (password hidden)" if shown(url) != url else ""
    progress(f"each cell's Optuna study is copied {note}; open them with: "
             f"optuna-dashboard '{shown(url)}'{hidden}")
    return StudyMirror(url, names, attrs, key=key)


class StudyMirror:
    """Copies told trials to one RDB study per cell, from a thread of its own.

    ``names`` maps a cell to its study's name in the storage, ``attrs`` a study name to its
    user attributes; ``key`` is the search it belongs to (``close_mirrors``)."""

    def __init__(self, url: str, names: dict[str, str],
                 attrs: dict[str, dict[str, Any]] | None = None, *, key: str = "") -> None:
        self.url = url
        self.names = dict(names)
        self.attrs = dict(attrs or {})
        self.key = key
        self._runtime()

    # --- pickling: the configuration only ------------------------------------------------------

    _CONFIG = ("url", "names", "attrs", "key")

    def __getstate__(self) -> dict[str, Any]:
        return {name: self.__dict__[name] for name in self._CONFIG}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._runtime()

    def _runtime(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._held: list[tuple[str, optuna.trial.FrozenTrial]] = []  # told, not yet saved
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._enqueued = 0  # written by the hand-off's thread only
        self._handled = 0  # by the writer's only: trials written, or found already there
        self._storage: Any = None
        self._studies: dict[str, tuple[optuna.Study, set[str]]] = {}
        self._failing: str | None = None

    # --- the hand-off: no I/O ---------------------------------------------------------------

    def put(self, cell: str, trial: optuna.trial.FrozenTrial) -> None:
        """Hold one finished trial of ``cell`` for copying, once the searcher's state that
        has it is saved (``release``)."""
        if cell in self.names:
            self._enqueued += 1
            self._held.append((cell, trial))

    def release(self) -> None:
        """Hand the trials held so far to the writer (the searcher's state has them)."""
        if not self._held:
            return
        if self._thread is None:
            self._start()
        held, self._held = self._held, []
        for record in held:
            self._queue.put(record)

    def put_all(self, studies: dict[str, optuna.Study]) -> None:
        """Copy every finished trial of the searcher's ``studies`` (cell -> study), restored
        from its saved state: those its earlier driver had not copied (the rest are skipped)."""
        for cell, study in studies.items():
            for trial in study.get_trials(deepcopy=False, states=_FINISHED):
                self.put(cell, trial)
        self.release()

    def backlog(self) -> int:
        """Trials told and not yet written (held or queued)."""
        return self._enqueued - self._handled

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name=f"optuna-mirror {self.key}")
            self._thread.start()
            LIVE_MIRRORS.setdefault(self.key, []).append(self)

    # --- the end of a search ---------------------------------------------------------------

    def flush(self, timeout: float = FLUSH_SECONDS, release: bool = True) -> bool:
        """Wait until every trial told so far (with ``release``, else only those released) is
        written (True), or the storage failed once more, or ``timeout`` seconds passed
        (False)."""
        if release:
            self.release()
        if self._thread is None or not self._thread.is_alive():
            return self.backlog() == 0
        marker = _Flush()
        self._queue.put(marker)
        marker.done.wait(timeout)
        return marker.ok

    def close(self, timeout: float = FLUSH_SECONDS) -> bool:
        """Flush, then stop the writer; warn of trials left unwritten. True if none were."""
        done = self.flush(timeout)
        thread = self._thread
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(min(timeout, 5.0))
            self._thread = None
            mirrors = LIVE_MIRRORS.get(self.key, [])
            if self in mirrors:
                mirrors.remove(self)
        if not done and self.backlog():
            logger.warning("Optuna mirror %s: %d trial(s) not copied (%s); a --resume of the "
                           "sweep copies them", shown(self.url), self.backlog(),
                           self._failing or "timed out")
        return done

    # --- the writer's thread ---------------------------------------------------------------

    def _run(self) -> None:
        pending: collections.deque = collections.deque()
        delay = RETRY_MIN_SECONDS
        while True:
            try:
                items = [self._queue.get(timeout=delay if pending else None)]
            except queue.Empty:
                items = []
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is _STOP for item in items)
            flushes = [item for item in items if isinstance(item, _Flush)]
            pending.extend(item for item in items if isinstance(item, tuple))
            if pending:
                try:
                    self._write(pending)
                    delay = RETRY_MIN_SECONDS
                    if self._failing is not None:
                        logger.info("Optuna mirror %s reachable again", shown(self.url))
                        self._failing = None
                except Exception as exc:  # never let the copy stop the search
                    self._fail(exc)
                    delay = min(delay * 2, RETRY_MAX_SECONDS)
            for marker in flushes:
                marker.ok = not pending
                marker.done.set()
            if stop:
                return

    def _fail(self, exc: Exception) -> None:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if self._failing is None:
            logger.warning("Optuna mirror %s failed (%s); the search goes on, the copy is "
                           "retried", shown(self.url), reason)
        self._failing = reason
        storage, self._storage, self._studies = self._storage, None, {}
        engine = getattr(storage, "engine", None)
        if engine is not None:
            try:
                engine.dispose()
            except Exception:
                pass

    def _write(self, pending: collections.deque) -> None:
        while pending:
            cell, trial = pending[0]
            study, seen = self._study(cell)
            key = _key(trial.user_attrs, trial.number)
            if key not in seen:
                study.add_trial(_copy(trial))
                seen.add(key)
            pending.popleft()
            self._handled += 1

    def _study(self, cell: str) -> tuple[optuna.Study, set[str]]:
        if cell in self._studies:
            return self._studies[cell]
        if self._storage is None:
            self._storage = _connect(self.url)
        name = self.names[cell]
        study = optuna.create_study(storage=self._storage, study_name=name,
                                    direction="maximize", load_if_exists=True,
                                    sampler=optuna.samplers.RandomSampler(seed=0))
        have = study.user_attrs
        for attr, value in self.attrs.get(name, {}).items():
            if have.get(attr) != value:
                study.set_user_attr(attr, value)
        seen = {_key(t.user_attrs, t.user_attrs.get(SEARCHER_NUMBER))
                for t in study.get_trials(deepcopy=False)}
        self._studies[cell] = (study, seen)
        return study, seen


class _Flush:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = False


_STOP = object()


def _key(user_attrs: dict[str, Any], number: Any) -> str:
    """A trial's identity across copies: its Tune trial id, else its searcher number."""
    tune_id = user_attrs.get(TUNE_TRIAL_ID)
    return f"tune:{tune_id}" if tune_id is not None else f"number:{number}"


def _copy(trial: optuna.trial.FrozenTrial) -> optuna.trial.FrozenTrial:
    out = copy.copy(trial)
    out.user_attrs = {**trial.user_attrs, SEARCHER_NUMBER: trial.number}
    return out


def _connect(url: str) -> optuna.storages.RDBStorage:
    """The storage at ``url``: a SQLite file's folder is made, a PostgreSQL ``search_path``
    schema created, first."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    schema = _search_path(parsed.query.get("options"))
    if parsed.get_backend_name() == "postgresql" and schema:
        import sqlalchemy

        engine = sqlalchemy.create_engine(url)
        try:
            with engine.begin() as connection:
                connection.execute(sqlalchemy.text(
                    f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        finally:
            engine.dispose()
    return optuna.storages.RDBStorage(url)


def _search_path(options: Any) -> str | None:
    if isinstance(options, tuple):
        options = " ".join(options)
    for option in str(options or "").split():
        if option.startswith("-csearch_path="):
            return option.split("=", 1)[1].split(",")[0].strip() or None
    return None


def close_mirrors(key: str, timeout: float = FLUSH_SECONDS) -> None:
    """Drain and stop the mirrors of the search ``key`` (its end), within ``timeout`` overall."""
    deadline = time.monotonic() + timeout
    for mirror in list(LIVE_MIRRORS.get(key, [])):
        mirror.close(max(0.1, deadline - time.monotonic()))
    LIVE_MIRRORS.pop(key, None)


def search_mirror(spec: Any, cells: Iterable[Any], path: str, tracking_uri: str | None,
                  progress: Callable[[str], None] = print) -> StudyMirror | None:
    """The mirror of a search of ``spec`` (a ``StudySpec``) whose Tune experiment is at
    ``path`` (``<storage>/<sweep>``, its searcher's state key), MLflow at ``tracking_uri``."""
    url, note = resolve_storage(spec.tracking.optuna_storage,
                                tracking_uri or spec.tracking.uri, spec.work_path)
    sweep = path.rstrip("/").rsplit("/", 1)[-1]
    budget = {"trials_per_cell": spec.budget.trials_per_cell, "seed": spec.seed}
    return for_search(url, note, study=spec.name, sweep=sweep, cells=cells, key=path,
                      extra=budget, progress=progress)
