"""The console of `ablate run` and `ablate pretrain`: ablate's own lines, one progress display,
and the libraries' own output in a log file.

Ray, Ray Tune, Ray Train, Ray Data and MLflow each print as they see fit: worker start-up
warnings, execution plans, Tune's experiment box, a TensorBoard hint, per-run links. Within a
``StudyConsole`` their output goes to one log file (``LibraryOutput``), named at the start;
with ``verbose`` it stays on the console as they print it. What needs the user stays on the
console either way: a trial that failed, MLflow unreachable, a stop by signal and how to
resume, every error.

While Tune runs, ``ablate.tune_plugins.TrialProgress`` reports each trial to the current
console (``current()``). On a terminal that is one live table (rich): per cell, trials done
against its budget, running, stopped early and failed, and its best score so far, with the
elapsed and estimated remaining time. Elsewhere (a pipe, CI, a log file) it is one line per
finished trial, a progress line every ``SUMMARY_EVERY_S`` seconds and a table per cell when
the stage ends.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

SUMMARY_EVERY_S = 60.0  # how often a plain console prints a progress line while trials run
# Outcome kinds ``TrialProgress`` reports.
COMPLETED = "completed"
STOPPED = "stopped early"
MODEL_FAILED = "model failed"
FAILED = "failed"

# MLflow's own console output switched off while the libraries' output goes to a file: the
# "View run ... at http://..." lines of every run closed on a tracking server, and the progress
# bar of every artifact download (a pretrained model fetched for the trials).
MLFLOW_QUIET_ENV = {
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}

_CURRENT: StudyConsole | None = None


def current() -> StudyConsole | None:
    """The console this process reports trials to, if any (``StudyConsole`` sets it)."""
    return _CURRENT


def log_file_name(work_dir: Path, verb: str) -> Path:
    """A new log file for one command: ``<work_dir>/logs/<verb>-<date>-<time>.log``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(work_dir) / "logs" / f"{verb}-{stamp}.log"
    n = 1
    while path.exists():
        n += 1
        path = path.with_name(f"{verb}-{stamp}-{n}.log")
    return path


class LibraryOutput:
    """Ray's output (``ablate.ray_session.RayOutput``), MLflow's and Python's warnings into
    one log file.

    MLflow: its INFO lines (creating a database's tables, say) go to the file, its warnings
    to both; its links and progress bars are switched off (``MLFLOW_QUIET_ENV``). Python's
    warnings (deprecations in the libraries, mostly) go to the file.
    """

    def __init__(self, path: Path) -> None:
        import mlflow  # noqa: F401  (configures its logger when first imported)

        from ablate.ray_session import RayOutput

        self.path = Path(path)
        self.ray = RayOutput(self.path)
        handler = self.ray.handler
        self._env = {name: os.environ.get(name) for name in MLFLOW_QUIET_ENV}
        for name, value in MLFLOW_QUIET_ENV.items():
            os.environ.setdefault(name, value)
        self._levels: list[tuple[logging.Handler, int]] = []
        mlflow_logger = logging.getLogger("mlflow")
        for console in mlflow_logger.handlers:
            self._levels.append((console, console.level))
            console.setLevel(max(console.level, logging.WARNING))
        mlflow_logger.addHandler(handler)
        self._mlflow_level = mlflow_logger.level  # INFO reaches the file, whatever was set
        if mlflow_logger.getEffectiveLevel() > logging.INFO:
            mlflow_logger.setLevel(logging.INFO)
        logging.captureWarnings(True)
        warnings_logger = logging.getLogger("py.warnings")
        self._warnings_propagate = warnings_logger.propagate
        warnings_logger.addHandler(handler)
        warnings_logger.propagate = False

    def close(self) -> None:
        handler = self.ray.handler
        logging.getLogger("mlflow").removeHandler(handler)
        logging.getLogger("mlflow").setLevel(self._mlflow_level)
        for console, level in self._levels:
            console.setLevel(level)
        warnings_logger = logging.getLogger("py.warnings")
        warnings_logger.removeHandler(handler)
        warnings_logger.propagate = self._warnings_propagate
        logging.captureWarnings(False)
        for name, value in self._env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self.ray.close()


def progress_line(message: str) -> None:
    """An indented line of ablate's own progress, on stdout (above the live table, if any)."""
    print(f"  {message}", flush=True)


def duration(seconds: float) -> str:
    """``45s``, ``3m10s``, ``2h05m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass
class CellTally:
    """One cell's trials in the stage shown."""

    budget: int
    done: int = 0  # counted against the budget: completed, stopped early, model failed
    stopped: int = 0
    model_failed: int = 0
    failed: int = 0  # infrastructure failures (not counted: the slot is issued again)
    running: set[str] = field(default_factory=set)
    scores: list[float] = field(default_factory=list)  # of completed trials

    def best(self, mean: bool) -> float | None:
        if not self.scores:
            return None
        return sum(self.scores) / len(self.scores) if mean else max(self.scores)


@dataclass
class StageView:
    """A Tune experiment as shown: the search (best dev score per cell) or the replicates
    (mean test score per cell, a model failure scoring 0)."""

    name: str
    cells: dict[str, CellTally]
    metric: str
    mean: bool = False  # the cell's score is the mean of its trials' (replicates), not the max
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None

    @property
    def total(self) -> int:
        return sum(c.budget for c in self.cells.values())

    def count(self, attribute: str) -> int:
        return sum(getattr(c, attribute) for c in self.cells.values())

    @property
    def running(self) -> int:
        return sum(len(c.running) for c in self.cells.values())

    def elapsed(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    def remaining(self) -> float | None:
        """Seconds left at the rate trials ended so far (None before the first)."""
        done = self.count("done")
        if not done:
            return None
        return self.elapsed() / done * max(self.total - done, 0)

    def headline(self) -> str:
        """One line: how far the stage is, and how long it has taken and may take."""
        done = self.count("done")
        left = self.remaining()
        timing = f"{duration(self.elapsed())} elapsed"
        if self.ended is None:
            timing += ", " + ("about " + duration(left) + " left" if left is not None
                              else "time left known after the first trial")
        return (
            f"{self.name}: {done}/{self.total} trials done, {self.running} running, "
            f"{self.count('stopped')} stopped early, "
            f"{self.count('model_failed') + self.count('failed')} failed; {timing}"
        )

    def table(self, max_rows: int | None = None) -> Any:
        """One row per cell (``max_rows`` at most, the last saying how many more)."""
        from rich.table import Table

        table = Table(box=None, pad_edge=False, padding=(0, 2, 0, 0))
        table.add_column("cell", overflow="fold")  # a long name wraps, never cut
        for column in ("done", "running", "stopped early", "failed model/infra"):
            table.add_column(column, justify="right", overflow="fold")
        label = f"mean {self.metric}" if self.mean else f"best {self.metric}"
        table.add_column(label, justify="right")
        items = list(self.cells.items())
        shown = items if max_rows is None or len(items) <= max_rows else items[: max_rows - 1]
        for name, cell in shown:
            score = cell.best(self.mean)
            table.add_row(
                name,
                f"{cell.done}/{cell.budget}",
                str(len(cell.running)),
                str(cell.stopped),
                f"{cell.model_failed}/{cell.failed}",
                "-" if score is None else f"{score:.4f}",
            )
        if len(shown) < len(items):
            table.add_row(f"... {len(items) - len(shown)} more cells", "", "", "", "", "")
        return table


class StudyConsole:
    """The console of one `ablate run` (or `ablate pretrain`): used as a context manager.

    ``log_path``: where the libraries' output goes (``LibraryOutput``), unless ``verbose``.
    ``live``: whether to draw the live table (default: stdout is a terminal).
    """

    def __init__(
        self,
        *,
        verbose: bool = False,
        log_path: Path | None = None,
        live: bool | None = None,
        file: TextIO | None = None,
        summary_every_s: float = SUMMARY_EVERY_S,
    ) -> None:
        from rich.console import Console

        self.verbose = verbose
        self.log_path = None if verbose else log_path
        self.file = file
        self.console = Console(file=file, highlight=False)
        terminal = self.console.is_terminal and not self.console.is_dumb_terminal
        if not terminal:  # piped or logged: do not squeeze tables into 80 columns
            self.console = Console(file=file, highlight=False, width=160)
        self.live = terminal if live is None else live
        self.summary_every_s = summary_every_s
        self.output: LibraryOutput | None = None
        self.stage: StageView | None = None
        self._live: Any = None
        self._last_summary = 0.0
        self._lock = threading.RLock()

    # --- the context --------------------------------------------------------------------------

    def __enter__(self) -> StudyConsole:
        global _CURRENT
        if self.log_path is not None:
            self.output = LibraryOutput(self.log_path)
        _CURRENT = self
        return self

    def __exit__(self, *exc: Any) -> None:
        global _CURRENT
        self._stop_live()
        if _CURRENT is self:
            _CURRENT = None
        if self.output is not None:
            self.output.close()
            self.output = None

    def say(self, message: str) -> None:
        """One line of ablate's own (above the live table, if one is drawn)."""
        print(message, file=self.file or sys.stdout, flush=True)

    def progress(self) -> Callable[[str], None]:
        """The ``progress`` callback of ablate's functions (``progress_line``; Tune pickles
        the callbacks it is handed to, so it holds no console)."""
        return progress_line

    # --- what TrialProgress reports -------------------------------------------------------------

    def stage_started(self, name: str, budgets: dict[str, int], metric: str,
                      mean: bool = False) -> None:
        with self._lock:
            cells = {cell: CellTally(budget) for cell, budget in budgets.items()}
            self.stage = StageView(name, cells, metric, mean)
            self._last_summary = time.monotonic()
        if self.live:
            self._start_live()

    def _cell(self, cell: str) -> CellTally | None:
        if self.stage is None:
            return None
        if cell not in self.stage.cells:
            self.stage.cells[cell] = CellTally(0)
        return self.stage.cells[cell]

    def trial_started(self, cell: str, trial_id: str) -> None:
        with self._lock:
            tally = self._cell(cell)
            if tally is not None:
                tally.running.add(trial_id)

    def trial_ended(self, cell: str, trial_id: str, kind: str, score: float | None) -> None:
        """A trial ended: ``kind`` one of COMPLETED, STOPPED, MODEL_FAILED, FAILED; ``score``
        the one its cell's column shows (a model failure scores 0 in a mean)."""
        with self._lock:
            tally = self._cell(cell)
            if tally is None:
                return
            tally.running.discard(trial_id)
            if kind == FAILED:
                tally.failed += 1
                return
            tally.done += 1
            if kind == STOPPED:
                tally.stopped += 1
            elif kind == MODEL_FAILED:
                tally.model_failed += 1
                if self.stage is not None and self.stage.mean:
                    tally.scores.append(0.0)
            elif score is not None:
                tally.scores.append(float(score))

    def trial_paused(self, cell: str, trial_id: str) -> None:
        """A trial stopped running for now (a retry after a crash starts it again)."""
        with self._lock:
            tally = self._cell(cell)
            if tally is not None:
                tally.running.discard(trial_id)

    def shows_trial(self, kind: str) -> bool:
        """Whether a trial's own line is printed: always on a plain console; above the live
        table only a failure's (the table counts the rest)."""
        return not self.live or kind in (MODEL_FAILED, FAILED)

    def tick(self) -> None:
        """Called on every step of Tune's loop: a plain console's periodic progress line."""
        if self.live or self.stage is None:
            return
        now = time.monotonic()
        if now - self._last_summary < self.summary_every_s:
            return
        self._last_summary = now
        with self._lock:
            line = self.stage.headline()
        self.say(f"  {line}")

    def stage_ended(self) -> None:
        """The stage's last table: drawn once more live, or printed once on a plain console."""
        with self._lock:
            if self.stage is None or self.stage.ended is not None:
                return
            self.stage.ended = time.monotonic()
        if self._live is not None:
            self._stop_live()
            return
        from rich.padding import Padding

        with self._lock:
            headline, table = self.stage.headline(), self.stage.table()
        self.say(f"  {headline}")
        self.console.print(Padding(table, (0, 0, 0, 2), expand=False))

    # --- the live table ------------------------------------------------------------------------

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.text import Text

        with self._lock:
            if self.stage is None:
                return Text("")
            return Group(Text(self.stage.headline(), style="bold"),
                         self.stage.table(max_rows=max(self.console.height - 6, 5)))

    def _start_live(self) -> None:
        from rich.live import Live

        self._stop_live()
        self._live = Live(self, console=self.console, refresh_per_second=2, transient=False,
                          redirect_stdout=True, redirect_stderr=True)
        self._live.start()

    def _stop_live(self) -> None:
        live, self._live = self._live, None
        if live is not None:
            live.stop()  # drawn once more, and left on the screen
