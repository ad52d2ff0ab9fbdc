"""Scheduling overhead: the driver's time between a trial's end and its successor's start.

Runs one Ray Tune ``Tuner`` per study size with ablate's ``CellSearcher`` (one Optuna TPE study
per cell) and ``CellScheduler`` (ASHA per cell) over an instant function trainable that calls
``tune.report`` once. A driver-side Tune callback stamps every trial's start and completion;
each start that waited for a free slot is paired with the latest completion before it, and the
gap between the two is the driver's scheduling time for that trial (searcher, scheduler, Tune's
bookkeeping and experiment-state saves, every second as ``run_study`` sets it). The figure per
size is the median gap (a size with few hand-offs, under ``--pool-gaps``, is run several times
and its gaps pooled), with the 90th percentile beside it.
Ray is started once, before the first size, and not counted. Trials take 1 CPU each,
``--concurrent`` at a time. Target: the 1,000-trial median gap <= 1.5 x the 10-trial one.

The searcher's own share of each hand-off (``CellSearcher.suggest``: Optuna's ask and its
draws) is timed apart. Optuna's TPE models every earlier trial of a cell, so its cost grows with
the cell's history; the largest size is therefore also run with that history bounded
(``--trials-per-cell`` trials in each of many cells), which leaves the rest of the driver.

The size series reuses trial actors (``reuse_actors=True``, as ``run_study`` does), so what is
measured is the driver's own work, which is what could grow with the study. The smallest size
is also run with Tune's default, a new actor per trial, to show what reusing them saves.

    .venv/bin/python bench/scheduling_overhead.py [--sizes 10 100 1000] [--time-limit S]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import tempfile
import time

from benchlib import Result, Row, run_benchmark

TARGET = 1.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000],
                        help="trials per study, smallest first")
    parser.add_argument("--cells", type=int, default=2, help="cells the trials are spread over")
    parser.add_argument("--concurrent", type=int, default=2)
    parser.add_argument("--pool-gaps", type=int, default=50,
                        help="a size smaller than this is run repeatedly (up to 10 times) and "
                             "its hand-offs pooled")
    parser.add_argument("--trials-per-cell", type=int, default=10,
                        help="per-cell trials of the bounded-history run of the largest size")
    parser.add_argument("--time-limit", type=float, default=None,
                        help="seconds this benchmark may take; a size predicted (from the "
                             "previous size's time per trial, with 50%% headroom) not to fit is "
                             "skipped, and the output says so")


def instant_trial(config: dict) -> None:
    """A trainable that does no work: one result, as if it trained one epoch."""
    from ray import tune

    tune.report({"best_dev_mcc": config["hparams"]["learning_rate"], "finished": 1})


def cells_and_spaces(count: int):
    from ablate.spec import DEFAULT_SEARCH_SPACE_DIR, Cell, load_search_space

    space = load_search_space(DEFAULT_SEARCH_SPACE_DIR, "cnn")
    cells = [Cell("cnn", "none", "char", f"task{i}") for i in range(count)]
    return cells, {"cnn": space}


def handoff_gaps(events: list[tuple[float, str]], concurrent: int) -> list[float]:
    """Seconds from the completion that freed a slot to the next trial's start.

    ``events`` are (time, "start" | "end") in the order the driver saw them. The first
    ``concurrent`` starts had free slots from the beginning and are not gaps.
    """
    gaps, ends, starts = [], [], 0
    for stamp, kind in sorted(events):
        if kind == "end":
            ends.append(stamp)
        else:
            starts += 1
            if starts > concurrent and ends:
                gaps.append(stamp - ends.pop(0))
    return gaps


def fit(trials: int, cells_count: int, concurrent: int, storage: str, reuse: bool) -> dict:
    """One Tuner.fit over ``trials`` instant trials: wall time, trials finished, hand-off gaps."""
    from ray import tune

    from ablate.tune_plugins import TRIALS_SEEN, CellScheduler, CellSearcher

    events: list[tuple[float, str]] = []

    class Stamps(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            events.append((time.perf_counter(), "start"))

        def on_trial_complete(self, iteration, trials, trial, **info):
            events.append((time.perf_counter(), "end"))

    class TimedSearcher(CellSearcher):
        """ablate's searcher, timing its own share of each hand-off (Optuna's ask and draws)."""

        suggest_seconds = 0.0

        def suggest(self, trial_id):
            start = time.perf_counter()
            try:
                return super().suggest(trial_id)
            finally:
                self.suggest_seconds += time.perf_counter() - start

    cells, spaces = cells_and_spaces(cells_count)
    per_cell = max(1, math.ceil(trials / cells_count))
    TRIALS_SEEN.clear()
    searcher = TimedSearcher(cells, spaces, trials_per_cell=per_cell, max_epochs=1,
                             max_concurrent=concurrent, seed=0)
    scheduler = CellScheduler([c.name for c in cells], max_t=1, grace_period=1, rf=2)
    tuner = tune.Tuner(
        tune.with_resources(instant_trial, {"cpu": 1}),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=-1,
                                    reuse_actors=reuse),
        run_config=tune.RunConfig(name=f"sched-{trials}-{random.randrange(10**6)}",
                                  storage_path=storage, verbose=0, callbacks=[Stamps()]),
    )
    start = time.perf_counter()
    results = tuner.fit()
    seconds = time.perf_counter() - start
    gaps = handoff_gaps(events, concurrent)
    return {"fit_seconds": seconds, "finished": len(results), "gaps": gaps, "cells": cells_count,
            "searcher_seconds_per_trial": searcher.suggest_seconds / max(len(results), 1),
            "median_gap": statistics.median(gaps), "p90_gap": statistics.quantiles(gaps, n=10)[-1]}


def pooled(fits: list[dict]) -> dict:
    """Several runs of one study size as one: hand-offs pooled, times and counts summed."""
    gaps = [gap for run in fits for gap in run["gaps"]]
    finished = sum(run["finished"] for run in fits)
    return {
        "fit_seconds": sum(run["fit_seconds"] for run in fits), "finished": finished,
        "gaps": gaps, "cells": fits[0]["cells"], "repeats": len(fits),
        "searcher_seconds_per_trial": sum(run["searcher_seconds_per_trial"] * run["finished"]
                                          for run in fits) / max(finished, 1),
        "median_gap": statistics.median(gaps), "p90_gap": statistics.quantiles(gaps, n=10)[-1],
    }


def measure(args: argparse.Namespace, result: Result) -> None:
    import ray

    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")  # as run_study sets it
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    began = time.perf_counter()
    wanted = sorted(args.sizes)
    result.note(f"sizes {wanted} trials over {args.cells} cells, {args.concurrent} at a time, "
                "instant trainable (one tune.report); Ray start-up not counted")
    storage = tempfile.mkdtemp(prefix="sched-")
    # "local": always a fresh Ray of our own, never one an earlier `ray start` left running.
    ray.init(address="local", num_cpus=args.concurrent + 1, include_dashboard=False,
             logging_level="WARNING")
    runs: dict[int, dict] = {}
    try:
        for size in wanted:
            if runs and args.time_limit:
                last = runs[max(runs)]
                predicted = size * last["fit_seconds"] / last["finished"] * 1.5
                left = args.time_limit - (time.perf_counter() - began)
                if predicted > left:
                    result.note(f"{size} trials skipped: predicted {predicted:.0f} s, "
                                f"{left:.0f} s of the time limit left")
                    continue
            # A small study has few hand-offs: repeat it and pool them, for a steady median.
            repeats = max(1, min(args.pool_gaps // size, 10))
            run = pooled([fit(size, args.cells, args.concurrent, storage, reuse=True)
                          for _ in range(repeats)])
            runs[size] = run
            result.details[f"reuse_actors/{size}"] = {k: v for k, v in run.items()
                                                      if k != "gaps"}
            print(f"  {size} trials x {repeats} (actors reused): {run['fit_seconds']:.1f} s, "
                  f"median hand-off {run['median_gap'] * 1000:.1f} ms", flush=True)
            if len(runs) == 1:
                fresh = fit(size, args.cells, args.concurrent, storage, reuse=False)
                result.details[f"new_actor_per_trial/{size}"] = {
                    k: v for k, v in fresh.items() if k != "gaps"}
                print(f"  {fresh['finished']} trials (a new actor each): "
                      f"median hand-off {fresh['median_gap'] * 1000:.1f} ms", flush=True)
        # The same largest study with each cell's history bounded (--trials-per-cell trials in
        # each of many cells): separates the driver's own work from Optuna TPE's per-cell cost.
        largest = max(runs)
        cells = max(1, largest // args.trials_per_cell)
        left = args.time_limit - (time.perf_counter() - began) if args.time_limit else None
        if largest > min(runs) and (left is None or left > 1.5 * runs[largest]["fit_seconds"]):
            bounded = fit(largest, cells, args.concurrent, storage, reuse=True)
            result.details[f"bounded/{largest}"] = {k: v for k, v in bounded.items()
                                                    if k != "gaps"}
            print(f"  {bounded['finished']} trials in {cells} cells: median hand-off "
                  f"{bounded['median_gap'] * 1000:.1f} ms", flush=True)
        else:
            bounded = None
    finally:
        ray.shutdown()
    sizes = sorted(runs)
    small = runs[sizes[0]]

    def compare(run: dict, label: str, target: bool) -> None:
        ratio = run["median_gap"] / small["median_gap"]
        result.add(Row(
            label,
            "median trial hand-off, large / small",
            ratio,
            f"{run['median_gap'] * 1000:.1f} vs {small['median_gap'] * 1000:.1f} ms (p90 "
            f"{run['p90_gap'] * 1000:.1f} vs {small['p90_gap'] * 1000:.1f}); of which the "
            f"searcher {run['searcher_seconds_per_trial'] * 1000:.1f} vs "
            f"{small['searcher_seconds_per_trial'] * 1000:.1f} ms per trial",
            f"<= {TARGET}" if target else "",
            ratio <= TARGET if target else None,
        ))

    for size in sizes[1:]:
        run = runs[size]
        compare(run, f"{size} vs {sizes[0]} trials, {args.cells} cells",
                target=size == sizes[-1] and size >= 1000)
    if bounded is not None:
        compare(bounded, f"{bounded['finished']} trials in {bounded['cells']} cells vs "
                         f"{sizes[0]}", target=False)
    result.add(Row(
        f"{fresh['finished']} trials, new actor each",
        "median trial hand-off, new actor / reused",
        fresh["median_gap"] / small["median_gap"],
        f"{fresh['median_gap'] * 1000:.1f} vs {small['median_gap'] * 1000:.1f} ms",
    ))


if __name__ == "__main__":
    run_benchmark("scheduling_overhead", __doc__.splitlines()[0], add_arguments, measure)
