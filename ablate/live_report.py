"""The live view: a running sweep's report, kept current in MLflow.

While a study runs, its report (``report.html``, ``report.md``, the CSV tables and figures) is
written again as trials end, at most once per ``interval`` seconds, and logged under
``report/`` as artifacts of the sweep's own run (its provenance run, the parent of the cell
runs), so whoever watches the MLflow UI reads the current answers. The last refresh, when the
sweep ends, replaces every earlier one.

Each refresh runs in a child process (``python -m ablate.live_report ARGS.pkl``): querying
MLflow, the statistics and the figures take seconds of CPU, which in the driver's own process
would hold the interpreter lock that Tune's scheduling loop needs. The driver only sets a flag
when a trial ends (``LiveReportPoke``); a daemon thread waits for the interval and starts the
child. Refreshes that fail (no trial ended yet, say) are skipped and counted; the study never
fails for one. What the refreshes cost (count, seconds) is logged on the sweep's run at the end
as ``live_report_refreshes`` and ``live_report_seconds``.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.tune import Callback

ARTIFACT_PATH = "report"
DEFAULT_INTERVAL_S = 60.0
REFRESH_TIMEOUT_S = 600.0

# The live reports of this driver by key (the experiment path): Tune restores its callbacks
# from pickles, so a poke finds its report here, not through an attribute.
LIVE_REPORTS: dict[str, LiveReport] = {}


class LiveReport:
    """Refreshes one sweep's report in MLflow from a background thread (see the module)."""

    def __init__(
        self,
        *,
        key: str,
        tracking_uri: str,
        study: str,
        sweep: str,
        run_id: str,
        out_dir: Path,
        report_kwargs: dict[str, Any],
        interval: float = DEFAULT_INTERVAL_S,
        progress: Callable[[str], None] = print,
    ) -> None:
        self.key = key
        self.args = {
            "tracking_uri": tracking_uri,
            "study": study,
            "sweep": sweep,
            "run_id": run_id,
            "out_dir": str(out_dir),
            "report_kwargs": report_kwargs,
        }
        self.run_id = run_id
        self.tracking_uri = tracking_uri
        self.interval = interval
        self.progress = progress
        self.refreshes = 0
        self.failures = 0
        self.seconds = 0.0
        self.last_error = ""
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._last_start = 0.0
        self._lock = threading.Lock()  # one refresh at a time
        self._thread = threading.Thread(target=self._loop, name="ablate-live-report", daemon=True)

    def start(self) -> LiveReport:
        LIVE_REPORTS[self.key] = self
        self._thread.start()
        return self

    def poke(self) -> None:
        """A trial ended: the report is out of date (cheap; called on Tune's loop)."""
        self._dirty.set()

    def _loop(self) -> None:
        if self.interval == float("inf"):  # refreshed only when the sweep ends
            self._stop.wait()
            return
        while not self._stop.is_set():
            if not self._dirty.wait(timeout=1.0):
                continue
            wait = self._last_start + self.interval - time.monotonic()
            if wait > 0 and self._stop.wait(timeout=wait):
                return
            self._dirty.clear()
            self.refresh()

    def refresh(self) -> bool:
        """Write the report and log it as artifacts now, in a child process; whether it did."""
        with self._lock:
            self._last_start = time.monotonic()
            Path(self.args["out_dir"]).mkdir(parents=True, exist_ok=True)
            args_file = Path(self.args["out_dir"]) / ".live_report_args.pkl"
            with open(args_file, "wb") as handle:
                pickle.dump(self.args, handle)
            started = time.perf_counter()
            try:
                child = subprocess.run(
                    [sys.executable, "-m", "ablate.live_report", str(args_file)],
                    capture_output=True,
                    text=True,
                    timeout=REFRESH_TIMEOUT_S,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
                ok = child.returncode == 0
                error = (child.stderr or child.stdout).strip().splitlines()[-1:] if not ok else []
            except subprocess.TimeoutExpired:
                ok, error = False, [f"timed out after {REFRESH_TIMEOUT_S:.0f} s"]
            self.seconds += time.perf_counter() - started
            if ok:
                self.refreshes += 1
            else:
                self.failures += 1
                self.last_error = error[0] if error else "no output"
            return ok

    def close(self, final: bool = True) -> None:
        """Stop the thread; with ``final``, refresh once more so the final report replaces the
        live ones; log what the refreshes cost on the sweep's run."""
        self._stop.set()
        self._thread.join(timeout=REFRESH_TIMEOUT_S)
        LIVE_REPORTS.pop(self.key, None)
        if final and not self.refresh():
            self.progress(f"  live report: the final refresh failed ({self.last_error})")
        try:
            from mlflow import MlflowClient

            client = MlflowClient(self.tracking_uri)
            client.log_metric(self.run_id, "live_report_refreshes", self.refreshes)
            client.log_metric(self.run_id, "live_report_seconds", self.seconds)
            client.log_metric(self.run_id, "live_report_failures", self.failures)
        except Exception as exc:  # the cost figures are not worth failing a finished study
            self.progress(f"  live report: its cost was not logged ({exc})")


class LiveReportPoke(Callback):
    """Tells the live report of its experiment that a trial ended."""

    def __init__(self, key: str) -> None:
        self.key = key

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        live = LIVE_REPORTS.get(self.key)
        if live is not None:
            live.poke()

    on_trial_error = on_trial_complete


def _refresh_in_child(args_file: str) -> None:
    """The child's work: write the report of the sweep and log its folder as artifacts."""
    import logging

    from mlflow import MlflowClient

    from ablate.report import write_report

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    os.nice(10)  # the trials first: a refresh takes the CPU they leave
    with open(args_file, "rb") as handle:
        args = pickle.load(handle)
    out_dir = Path(args["out_dir"])
    write_report(
        args["tracking_uri"], args["study"], out_dir, sweep=args["sweep"],
        **args["report_kwargs"],
    )
    files = [p for p in out_dir.iterdir() if p.is_file() and not p.name.startswith(".")]
    client = MlflowClient(args["tracking_uri"])
    for path in files:
        client.log_artifact(args["run_id"], str(path), ARTIFACT_PATH)


if __name__ == "__main__":
    _refresh_in_child(sys.argv[1])
