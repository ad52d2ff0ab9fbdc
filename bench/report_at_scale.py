"""How long `ablate report` takes on a large study: 10,000 trial runs in a SQLite MLflow store.

Builds a synthetic study in a temporary store (cells x trials search runs plus replicates, with
the tags and metrics real runs carry), then times reading it back and rendering the full report,
and records the peak resident memory of the process. Prints one line per figure and writes
bench/results_report.json.

    .venv/bin/python bench/report_at_scale.py [--cells 100] [--trials 100] [--replicates 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np


def build_store(
    uri: str, cells: int, trials: int, replicates: int, seed: int = 0
) -> tuple[float, int]:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    rng = np.random.default_rng(seed)
    client = MlflowClient(uri)
    experiment = client.create_experiment("scale")
    archs, pres, toks = ["convnova", "unet", "transformer", "cnn"], ["none", "mlm:small"], [
        "char", "bpe"]
    tasks = [f"task{i}" for i in range(max(1, cells // (len(archs) * len(pres) * len(toks))))]
    start = time.perf_counter()
    made = 0
    for c in range(cells):
        arch, pre, tok = archs[c % 4], pres[(c // 4) % 2], toks[(c // 8) % 2]
        task = tasks[(c // 16) % len(tasks)]
        cell = f"{arch}|{pre}|{tok}|{task}"
        base = {"ablate.study": "scale", "ablate.sweep": "scale-1", "ablate.cell": cell,
                "ablate.architecture": arch, "ablate.pretraining": pre,
                "ablate.tokenizer": tok, "ablate.task": task}
        parent = client.create_run(experiment, tags={**base, "ablate.stage": "cell"}).info.run_id
        stages = [("trial", i) for i in range(trials)] + [("replicate", i)
                                                          for i in range(replicates)]
        for stage, i in stages:
            tags = {**base, "ablate.stage": stage, "mlflow.parentRunId": parent,
                    "ablate.trial_id": f"{c}-{stage}-{i}", "ablate.outcome": "completed"}
            if stage == "replicate":
                tags["ablate.replicate_seed"] = str(i)
            run = client.create_run(experiment, tags=tags).info.run_id
            now = int(time.time() * 1000)
            score = float(rng.uniform(0.2, 0.8))
            metrics = {"best_dev_mcc": score, "dev_mcc": score, "wall_seconds": 30.0,
                       "flops": 1e12, "device_hours": 30 / 3600}
            if stage == "replicate":
                metrics["test_mcc"] = score - 0.02
            client.log_batch(
                run,
                metrics=[Metric(k, v, now, 1) for k, v in metrics.items()],
                params=[Param("learning_rate", "0.001"), Param("max_epochs", "3")],
                tags=[RunTag("ablate.device_type", "cpu")],
            )
            client.set_terminated(run, "FINISHED")
            made += 1
        client.set_terminated(parent, "FINISHED")
    return time.perf_counter() - start, made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=100)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--replicates", type=int, default=3)
    args = parser.parse_args()

    from ablate.report import write_report

    with tempfile.TemporaryDirectory() as folder:
        uri = f"sqlite:///{folder}/mlruns.db"
        build_seconds, made = build_store(uri, args.cells, args.trials, args.replicates)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        report = write_report(uri, "scale", Path(folder) / "report")
        seconds = time.perf_counter() - start
        rss_peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    results = {
        "runs": made,
        "trial_runs": args.cells * args.trials,
        "build_store_seconds": round(build_seconds, 1),
        "report_seconds": round(seconds, 2),
        "peak_rss_mib": round(rss_peak_kib / 1024, 1),
        "rss_before_report_mib": round(rss_before / 1024, 1),
        "cells_in_report": len(report.cells),
    }
    for key, value in results.items():
        print(f"{key:>24}: {value}")
    Path(__file__).with_name("results_report.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
