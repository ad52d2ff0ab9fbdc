"""What every benchmark script shares: a sandbox, where the data is, and how results are written.

Each benchmark is a script that measures on the machine it runs on and writes one JSON result:

    {"benchmark": name, "status": "ok" | "failed: ..." | "skipped: ...", "seconds": wall,
     "rows": [{"case", "figure", "ratio", "measured", "target", "met"}], "notes": [...]}

Every ``ratio`` divides two quantities measured in the same run; ``measured`` gives them.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
SHARED = PROJECT.parent / "shared" / "data"


def sandbox() -> Path:
    """Point HOME, TMPDIR and RAY_TMPDIR at one short-lived folder, before Ray is imported.

    Ray writes ``~/.ray``, lock files under the temp folder and whole session folders; keep all
    of it out of the user's home and away from other Ray instances on the machine. The path is
    kept short because Ray's socket paths must stay under about 100 characters. A folder given
    by ``ABLATE_BENCH_SANDBOX`` (set by run_all.py) is used as is and left for its owner.
    """
    given = os.environ.get("ABLATE_BENCH_SANDBOX")
    if given:
        folder = Path(given)
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = Path(tempfile.mkdtemp(prefix="abb-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    for name in ("HOME", "TMPDIR", "RAY_TMPDIR"):
        os.environ[name] = str(folder)
    os.environ.pop("RAY_ADDRESS", None)  # never join a cluster someone else is using
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    # Benchmarks save Tune's state as often as run_study does; Tune's warning about it is noise.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    tempfile.tempdir = None  # forget the cached temp folder so the new TMPDIR applies
    return folder


def gue_dir() -> Path:
    """The real GUE folder: ``ABLATE_GUE_DIR`` if set, else the shared data beside the project."""
    value = os.environ.get("ABLATE_GUE_DIR")
    path = Path(value) if value else SHARED / "GUE"
    if not path.is_dir():
        raise FileNotFoundError(f"no GUE folder at {path}; set ABLATE_GUE_DIR")
    return path


def dnabert2_tokenizer() -> Path:
    """DNABERT-2's ``tokenizer.json``, expected beside the GUE folder."""
    return gue_dir().parent / "dnabert2_tokenizer" / "tokenizer.json"


@dataclass
class Row:
    """One line of the results table."""

    case: str
    figure: str  # what the ratio is: "a / b"
    ratio: float | None
    measured: str  # the two absolute numbers the ratio comes from
    target: str = ""
    met: bool | None = None


@dataclass
class Result:
    benchmark: str
    status: str = "ok"
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def note(self, text: str) -> None:
        """Record a note (scale, caveat) and print it, so the script's output says it too."""
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        ratio = "-" if row.ratio is None else f"{row.ratio:.3g}"
        verdict = "" if row.met is None else ("  (target met)" if row.met else "  (target MISSED)")
        print(f"  {row.case}: {row.figure} = {ratio}  [{row.measured}]{verdict}", flush=True)

    def as_dict(self) -> dict:
        return asdict(self)


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def run_benchmark(
    name: str,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    measure: Callable[[argparse.Namespace, Result], None],
) -> None:
    """Parse arguments, run ``measure`` in a sandbox, and write its result as JSON.

    A benchmark that raises is recorded as failed (with the error's last line) rather than
    lost; the exit status is then 1.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--json", type=Path, help="write the result here (default: print only)")
    add_arguments(parser)
    args = parser.parse_args()
    sandbox()
    result = Result(name)
    print(f"{name}: {description}", flush=True)
    start = time.perf_counter()
    code = 0
    try:
        measure(args, result)
    except Exception as exc:
        traceback.print_exc()
        message = str(exc).splitlines()[0] if str(exc) else ""
        result.status = f"failed: {type(exc).__name__}: {message}"
        code = 1
    result.seconds = round(time.perf_counter() - start, 1)
    print(f"{name}: {result.status} in {result.seconds:.0f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(result.as_dict(), indent=2, default=str))
    sys.exit(code)
