"""Start-up: wall time of the CLI's fast paths against a bare Python start, and what they import.

Times ``ablate --help`` and ``ablate data check DIR`` (DIR: a temporary folder holding one copy
of a small GUE dataset) as subprocesses, ``--repeats`` times each in alternation with
``python -c pass`` (the interpreter alone), and keeps the median of each. Then runs both
commands once more under ``python -X importtime`` and checks that torch, ray and mlflow (and
transformers) were never imported. Target: each command under 1 s.

    .venv/bin/python bench/startup.py [--dataset mouse/3] [--repeats 5]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import Result, Row, gue_dir, median, run_benchmark

TARGET_SECONDS = 1.0
HEAVY = ("torch", "ray", "mlflow", "transformers")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="mouse/3", help="GUE dataset copied for data check")
    parser.add_argument("--repeats", type=int, default=5)


def ablate_script() -> Path:
    """The installed ``ablate`` console script beside this interpreter."""
    script = Path(sys.executable).parent / "ablate"
    if not script.is_file():
        raise FileNotFoundError(f"no ablate command at {script} (is the package installed?)")
    return script


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def imported_top_level(args: list[str]) -> set[str]:
    """Top-level packages a command imports, from ``python -X importtime`` (its stderr)."""
    done = subprocess.run([sys.executable, "-X", "importtime", *args], check=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    names = set()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            module = line.rsplit("|", 1)[1].strip()
            if module and module != "package":
                names.add(module.split(".")[0])
    return names


def measure(args: argparse.Namespace, result: Result) -> None:
    folder = Path(tempfile.mkdtemp(prefix="startup-"))
    group, name = args.dataset.split("/")
    shutil.copytree(gue_dir() / group / name, folder / group / name)
    script = str(ablate_script())
    commands = {
        "ablate --help": [script, "--help"],
        "ablate data check": [script, "data", "check", str(folder)],
    }
    baseline = [sys.executable, "-c", "pass"]
    result.note(f"data check on a copy of {args.dataset}; median of {args.repeats} runs each, "
                "in alternation with `python -c pass`")
    for command in commands.values():  # warm the file cache once, untimed
        wall(command)
    times: dict[str, list[float]] = {label: [] for label in commands}
    base: list[float] = []
    for _ in range(args.repeats):
        base.append(wall(baseline))
        for label, command in commands.items():
            times[label].append(wall(command))
    python_seconds = median(base)
    result.details["python -c pass"] = base
    for label, command in commands.items():
        seconds = median(times[label])
        imported = imported_top_level(command)
        if "ablate" not in imported:  # the check below would pass vacuously
            raise RuntimeError(f"{label}: -X importtime listed no ablate import; cannot check")
        heavy = sorted(set(HEAVY) & imported)
        result.details[label] = {"seconds": times[label], "heavy_imports": heavy}
        imports = "imports " + ", ".join(heavy) if heavy else "no torch/ray/mlflow imported"
        result.add(Row(
            label,
            "command / `python -c pass` wall time",
            seconds / python_seconds,
            f"{seconds:.2f} vs {python_seconds:.2f} s; {imports}",
            f"< {TARGET_SECONDS:g} s, no heavy imports",
            seconds < TARGET_SECONDS and not heavy,
        ))
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    run_benchmark("startup", __doc__.splitlines()[0], add_arguments, measure)
