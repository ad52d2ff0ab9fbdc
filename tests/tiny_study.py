"""One tiny real study (synthetic data, real Ray, real MLflow), run once per test session.

Two cells (the k-mer floor and the small CNN, single-nucleotide tokens) x 10 one-epoch trials,
and one replicate each: enough completed trials per cell for hyperparameter importances, and
both stages for the recorded suggestions. Run through the ``ablate`` command, as a user would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

NAME = "tiny-provenance"
TRIALS_PER_CELL = 10


@dataclass(frozen=True)
class TinyStudy:
    folder: Path
    spec_path: Path
    tracking_uri: str
    name: str
    sweep: str
    cells: int = 2
    replicates: int = 1


_STUDY: TinyStudy | None = None


def run_ablate(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """The ``ablate`` command in a subprocess; fails the caller's test on a non-zero exit."""
    done = subprocess.run([sys.executable, "-m", "ablate.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def tiny_study() -> TinyStudy:
    """The session's tiny study, run on first use."""
    global _STUDY
    if _STUDY is not None:
        return _STUDY
    folder = Path(tempfile.mkdtemp(prefix="tiny-"))  # inside the tests' sandbox (conftest)
    uri = f"sqlite:///{folder / 'mlruns.db'}"
    spec = {
        "name": NAME,
        "data": {"synthetic": {"scale": 0.05, "seed": 3}, "tasks": ["tf/0"]},
        "axes": {"architecture": ["kmer", "cnn"], "pretraining": ["none"],
                 "tokenizer": ["char"]},
        "budget": {"trials_per_cell": TRIALS_PER_CELL, "max_epochs": 1,
                   "concurrent_trials": 2},
        "replicates": [0],
        "seed": 0,
        "tracking": {"uri": uri},
    }
    path = folder / "study.yaml"
    # A comment only the file's own text carries: the recorded spec must be the file itself.
    path.write_text("# tiny study for provenance tests\n" + yaml.safe_dump(spec))
    run_ablate("run", str(path), cwd=folder)
    from ablate.tracking.reader import latest_sweep

    _STUDY = TinyStudy(folder, path, uri, NAME, latest_sweep(uri, NAME)[1])
    return _STUDY
