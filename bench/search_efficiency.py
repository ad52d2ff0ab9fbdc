"""Search efficiency (small budget): per-cell TPE + ASHA against random search with 4x the trials.

Two studies of one cell on one small real GUE task, run back to back with ``run_study`` in one
Ray session:

- TPE + ASHA: ``--trials`` trials, TPE after half of them (the default start-up), ASHA per
  cell (grace 1 epoch, reduction factor 2) up to ``--epochs`` epochs;
- random search: 4 x ``--trials`` trials at the full budget. The study spec emulates it: ASHA
  never stops a trial (``grace_epochs = max_epochs``) and every trial is a random start-up
  trial (``startup_trials = trials_per_cell``).

From MLflow (``metrics.device_hours``, ``metrics.best_dev_mcc``), trials in the order they were
issued, it finds the device-hours each search spent until a trial came within 0.01 dev MCC of
the best either search found, and reports random's over TPE + ASHA's.

This is a SMALL budget (a few trials of a tiny model for a few epochs on a ~2k-row task) so it
fits a benchmark run; it measures the mechanism, not what a full study's search would gain.

    .venv/bin/python bench/search_efficiency.py [--task mouse/3] [--arch cnn] [--trials 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchlib import Result, Row, gue_dir, run_benchmark

TOLERANCE = 0.01


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default="mouse/3")
    parser.add_argument("--arch", default="cnn")
    parser.add_argument("--trials", type=int, default=5, help="TPE + ASHA trials")
    parser.add_argument("--epochs", type=int, default=3, help="max epochs (full budget)")
    parser.add_argument("--concurrent", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)


def spec_for(name: str, args: argparse.Namespace, root: Path, random_search: bool):
    from ablate.spec import parse_study

    trials = 4 * args.trials if random_search else args.trials
    budget = {"trials_per_cell": trials, "max_epochs": args.epochs,
              "concurrent_trials": args.concurrent, "grace_epochs": 1, "reduction_factor": 2}
    if random_search:
        budget.update(grace_epochs=args.epochs, startup_trials=trials)
    return parse_study(
        {
            "name": name,
            "data": {"gue_dir": str(gue_dir()), "tasks": [args.task]},
            "axes": {"architecture": [args.arch], "pretraining": ["none"],
                     "tokenizer": ["char"]},
            "budget": budget,
            "seed": args.seed,
            "tracking": {"uri": f"sqlite:///{root}/mlruns.db"},
            "work_dir": str(root / "work"),
        },
        source=name,
        base_dir=root,
    )


def trials_in_order(spec) -> list[dict]:
    """Each trial's device-hours, best dev MCC and outcome, in the order they were issued.

    The order is the Optuna trial number, recorded in every trial's seed parameter. A trial
    that failed before its first epoch has no metrics: it counts as 0 device-hours and no MCC.
    """
    import math

    from ablate.analysis import trials

    frame = trials(spec.tracking.uri, spec.name)
    frame = frame.assign(order=frame["params.seed"].astype(int)).sort_values("order")
    rows = []
    for _, row in frame.iterrows():
        hours = float(row.get("metrics.device_hours", math.nan))
        mcc = float(row.get("metrics.best_dev_mcc", math.nan))
        rows.append({"device_hours": 0.0 if math.isnan(hours) else hours,
                     "best_dev_mcc": -1.0 if math.isnan(mcc) else mcc,
                     "outcome": row.get("tags.ablate.outcome")})
    return rows


def best_within(rows: list[dict], hours: float) -> float:
    """The best dev MCC found by trials (in order) whose cumulative device-hours fit ``hours``."""
    spent, best = 0.0, -1.0
    for row in rows:
        spent += row["device_hours"]
        if spent > hours * (1 + 1e-9):
            break
        best = max(best, row["best_dev_mcc"])
    return best


def hours_to_reach(rows: list[dict], target: float) -> tuple[float | None, int | None]:
    """Device-hours spent up to and including the first trial at or above ``target``."""
    spent = 0.0
    for number, row in enumerate(rows, start=1):
        spent += row["device_hours"]
        if row["best_dev_mcc"] >= target:
            return spent, number
    return None, None


def measure(args: argparse.Namespace, result: Result) -> None:
    import ray

    from ablate.sweep import run_study

    result.note(f"SMALL budget: {args.arch} tiny on {args.task} (real GUE, char), "
                f"TPE+ASHA {args.trials} trials vs random {4 * args.trials} trials, up to "
                f"{args.epochs} epochs, {args.concurrent} at a time")
    root = Path(tempfile.mkdtemp(prefix="search-"))
    searches = {"TPE+ASHA": spec_for("bench_tpe_asha", args, root, False),
                "random": spec_for("bench_random", args, root, True)}
    found, wall = {}, {}
    try:
        for label, spec in searches.items():
            start = time.perf_counter()
            study = run_study(spec, progress=lambda _msg: None)
            wall[label] = time.perf_counter() - start
            found[label] = trials_in_order(spec)
            print(f"  {label}: {study.num_trials} trials ({study.num_errors} failed) in "
                  f"{wall[label]:.0f} s", flush=True)
    finally:
        ray.shutdown()
    best = max(row["best_dev_mcc"] for rows in found.values() for row in rows)
    target = best - TOLERANCE
    reached = {label: hours_to_reach(rows, target) for label, rows in found.items()}
    for label, rows in found.items():
        hours, number = reached[label]
        result.details[label] = {
            "trials": rows, "wall_seconds": wall[label],
            "device_hours_total": sum(r["device_hours"] for r in rows),
            "best_dev_mcc": max(r["best_dev_mcc"] for r in rows),
            "device_hours_to_target": hours, "trials_to_target": number,
        }
    result.details["target_dev_mcc"] = target

    def describe(label: str) -> str:
        hours, number = reached[label]
        detail = result.details[label]
        if hours is None:
            return (f"{label}: not reached in {len(found[label])} trials "
                    f"({detail['device_hours_total'] * 3600:.0f} device-s, best "
                    f"{detail['best_dev_mcc']:.3f})")
        return (f"{label}: {hours * 3600:.0f} device-s, trial {number} of {len(found[label])} "
                f"(best {detail['best_dev_mcc']:.3f})")

    tpe_hours, rnd_hours = reached["TPE+ASHA"][0], reached["random"][0]
    ratio = rnd_hours / tpe_hours if tpe_hours and rnd_hours else None
    result.add(Row(
        f"{args.arch} tiny, {args.task}",
        f"device-h to dev MCC >= {target:.3f}: random / TPE+ASHA",
        ratio,
        f"{describe('TPE+ASHA')}; {describe('random')}",
    ))
    totals = {label: result.details[label]["device_hours_total"] for label in found}
    tpe_best = result.details["TPE+ASHA"]["best_dev_mcc"]
    random_best = best_within(found["random"], totals["TPE+ASHA"])
    result.add(Row(
        "equal spend",
        "best dev MCC within TPE+ASHA's device-h: random / TPE+ASHA",
        random_best / tpe_best if tpe_best > 0 else None,
        f"{random_best:.3f} vs {tpe_best:.3f} after {totals['TPE+ASHA'] * 3600:.0f} device-s",
    ))
    result.add(Row(
        "whole search",
        "device-h spent: random / TPE+ASHA",
        totals["random"] / totals["TPE+ASHA"],
        f"{totals['random'] * 3600:.0f} vs {totals['TPE+ASHA'] * 3600:.0f} device-s",
    ))


if __name__ == "__main__":
    run_benchmark("search_efficiency", __doc__.splitlines()[0], add_arguments, measure)
