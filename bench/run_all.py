"""Run every benchmark in sequence, each in its own process, and print one table.

Each benchmark script runs as a subprocess in its own sandbox (HOME, TMPDIR and RAY_TMPDIR
pointed at a temporary folder) and writes its result as JSON; this collects them, prints one
table and writes ``bench/results.json``. A benchmark that fails or runs past its time limit is
reported as such in the table and the others still run. The whole run keeps to a time budget
(``--budget-minutes``, 35 by default): each benchmark's time limit is cut to what is left, and
a benchmark that would start with less than a minute left is reported as not run.

scheduling_overhead.py is told its share of the budget and skips a study size that would
not fit it (the notes under the table say so).

    .venv/bin/python bench/run_all.py [--budget-minutes 35] [--only startup data_stall]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.json"
REPORT_RESULTS = HERE / "results_report.json"  # written by report_at_scale.py itself


@dataclass
class Benchmark:
    name: str
    script: str
    limit_seconds: int
    args: list[str] = field(default_factory=list)
    writes_json: bool = True  # report_at_scale.py writes results_report.json instead
    takes_time_limit: bool = False  # gets --time-limit (its share of the budget, less a margin)


BENCHMARKS = [
    Benchmark("startup", "startup.py", 120),
    Benchmark("gpu_efficiency", "gpu_efficiency.py", 180),
    Benchmark("data_stall", "data_stall.py", 180),
    Benchmark("tokenize_shard", "tokenize_shard.py", 180),
    Benchmark("harness_overhead", "harness_overhead.py", 420),
    Benchmark("scheduling_overhead", "scheduling_overhead.py", 420, takes_time_limit=True),
    Benchmark("report_at_scale", "report_at_scale.py", 300, writes_json=False),
    Benchmark("search_efficiency", "search_efficiency.py", 600),
    Benchmark("study_efficiency", "study_efficiency.py", 780),
]
REPORT_SECONDS, REPORT_MIB = 30, 2048  # the report's targets: 10,000 trial runs


def kill_session(session_id: int) -> None:
    """SIGKILL every process of the session a benchmark was started in (its local Ray too)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == session_id:
                    os.kill(int(entry), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                continue


def run_one(bench: Benchmark, limit: float, folder: Path) -> dict:
    """Run one benchmark script; its JSON result, or a failed one saying why."""
    folder.mkdir(parents=True)
    out = folder / "result.json"
    log = folder / "output.log"
    command = [sys.executable, str(HERE / bench.script), *bench.args]
    if bench.writes_json:
        command += ["--json", str(out)]
    else:
        REPORT_RESULTS.unlink(missing_ok=True)
    if bench.takes_time_limit:
        command += ["--time-limit", f"{max(limit - 30, 30):.0f}"]
    # Short: Ray's socket paths under the sandbox must stay within 107 characters.
    env = {**os.environ, "ABLATE_BENCH_SANDBOX": str(folder / "s")}
    env.pop("RAY_ADDRESS", None)
    start = time.perf_counter()
    with open(log, "w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env,
                                   cwd=HERE.parent, start_new_session=True)
        try:
            code = process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            kill_session(process.pid)
            process.wait()
            code = None
    seconds = round(time.perf_counter() - start, 1)
    tail = log.read_text(errors="replace").splitlines()[-15:]
    result = None
    if bench.writes_json and out.is_file():
        result = json.loads(out.read_text())
    elif not bench.writes_json and code == 0 and REPORT_RESULTS.is_file():
        result = report_result(json.loads(REPORT_RESULTS.read_text()))
    if code is None:
        status = f"failed: time limit ({limit:.0f} s) reached"
    elif result is None:
        status = f"failed: exit status {code}, no result written"
    else:
        status = result.get("status", "ok")
    result = result or {"benchmark": bench.name, "rows": [], "notes": [], "details": {}}
    result.update(benchmark=bench.name, status=status, seconds=seconds, command=command[1:])
    if status.startswith("failed"):
        result["output_tail"] = tail
    return result


def report_result(data: dict) -> dict:
    """report_at_scale.py's own JSON as rows of the table."""
    runs, seconds, mib = data["runs"], data["report_seconds"], data["peak_rss_mib"]
    at_scale = data["trial_runs"] >= 10_000
    rows = [
        {"case": f"{data['trial_runs']:,} trial runs ({runs:,} runs)",
         "figure": "report s / 30 s target", "ratio": seconds / REPORT_SECONDS,
         "measured": f"{seconds:.1f} s to read and render {data['cells_in_report']} cells",
         "target": "< 1" if at_scale else "",
         "met": seconds < REPORT_SECONDS if at_scale else None},
        {"case": f"{data['trial_runs']:,} trial runs ({runs:,} runs)",
         "figure": "peak RSS / 2 GiB target", "ratio": mib / REPORT_MIB,
         "measured": f"peak RSS {mib:.0f} MiB (before the report: "
                     f"{data['rss_before_report_mib']:.0f} MiB)",
         "target": "< 1" if at_scale else "", "met": mib < REPORT_MIB if at_scale else None},
    ]
    return {"status": "ok", "rows": rows, "notes": [], "details": data}


def table(results: list[dict]) -> str:
    from tabulate import tabulate

    lines = []
    for result in results:
        rows = result.get("rows") or [{}]
        for row in rows:
            ratio = row.get("ratio")
            met = row.get("met")
            verdict = "" if met is None else ("met" if met else "MISSED")
            status = result["status"] if result["status"] != "ok" else verdict or "ok"
            if len(status) > 60:  # the whole message is in results.json
                status = status[:57] + "..."
            lines.append([
                result["benchmark"], row.get("case", ""), row.get("figure", ""),
                "-" if ratio is None else f"{ratio:.3g}", row.get("target", ""), status,
                row.get("measured", ""),
            ])
    return tabulate(lines, headers=["benchmark", "case", "figure", "ratio", "target", "result",
                                    "measured"], tablefmt="github")


def machine() -> dict:
    from importlib.metadata import version

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: version(name) for name in ("torch", "ray", "mlflow", "optuna",
                                                      "tokenizers")},
        "load_average_start": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-minutes", type=float, default=35.0)
    parser.add_argument("--only", nargs="+", help="run only these benchmarks")
    args = parser.parse_args()
    chosen = [b for b in BENCHMARKS if not args.only or b.name in args.only]
    info = machine()
    deadline = time.perf_counter() + args.budget_minutes * 60
    sandbox = Path(tempfile.mkdtemp(prefix="abr-"))
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    results = []
    try:
        for number, bench in enumerate(chosen, start=1):
            left = deadline - time.perf_counter()
            if left < 60:
                results.append({"benchmark": bench.name, "rows": [], "notes": [],
                                "status": "not run: time budget spent", "seconds": 0})
                print(f"[{number}/{len(chosen)}] {bench.name}: not run (time budget spent)")
                continue
            print(f"[{number}/{len(chosen)}] {bench.name} ...", end=" ", flush=True)
            result = run_one(bench, min(bench.limit_seconds, left),
                             sandbox / str(number))
            results.append(result)
            print(f"{result['status']} ({result['seconds']:.0f} s)", flush=True)
            if result["status"].startswith("failed"):
                print("    " + "\n    ".join(result.get("output_tail", [])[-6:]), flush=True)
    finally:
        shutil.rmtree(sandbox, ignore_errors=True)
    total = sum(r.get("seconds", 0) for r in results)
    info["load_average_end"] = os.getloadavg()
    print()
    print(table(results))
    print()
    for result in results:
        for note in result.get("notes", []):
            print(f"{result['benchmark']}: {note}")
    print(f"\n{len(results)} benchmarks in {total / 60:.1f} min on {info['cpus']} CPUs; load "
          f"average {info['load_average_start'][0]:.1f} at start, "
          f"{info['load_average_end'][0]:.1f} at end")
    document = {"started": started, "seconds": total, "machine": info, "benchmarks": results}
    partial = RESULTS.with_suffix(".json.tmp")
    partial.write_text(json.dumps(document, indent=2, default=str))
    os.replace(partial, RESULTS)
    print(f"wrote {RESULTS.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
