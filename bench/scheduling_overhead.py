"""Scheduling overhead: the driver's time between a trial's end and its successor's start.

Runs Ray Tune ``Tuner``s with ablate's ``CellSearcher`` (one Optuna TPE study per cell) and
``CellScheduler`` (ASHA per cell) over an instant function trainable that calls ``tune.report``
once. A driver-side Tune callback stamps every trial's start and completion; each start that
waited for a free slot is paired with the earliest unpaired completion before it, and the gap
between the two (a "hand-off") is the driver's scheduling time for that trial: the searcher's
ask, the scheduler, Tune's bookkeeping, the actor's reset, and Tune's experiment-state
snapshots (on the period ``run_study`` sets, ``ablate.study.snapshot_period``: every second up
to 1,000 trials, Tune's "auto" past that). Ray is
started once, before the first study, and not counted. Trials take 1 CPU each,
``--concurrent`` (2) at a time, over ``--cells`` (2) cells.

Protocol (fixed before measuring; these machines are shared and their load drifts):

- The small size (10 trials) has only 8 hand-offs per study, so a *small block* is
  ``--small-repeats`` (5) studies of 10 trials, its figure the median of their pooled
  hand-offs (40).
- Sizes are interleaved in ``--rounds`` (3) rounds: ``S, 100, 1000, S, 100, 1000, S, ...,
  S``, one study of each large size per round, every round bracketed by a small block before
  and after it. A round's ratio is its large study's median hand-off over the mean of the two
  small blocks around it, so a drift in machine load over minutes cancels out.
- Each figure is reported as the median over repeats with its range (min-max): the small
  size's over all small blocks, a large size's over rounds, and the ratio's over rounds. The
  target is on the median of the 1,000-trial rounds' ratios: <= 1.5; the range is beside it.
- Once after the rounds (each bracketed by one more small block): 1,000 trials with each cell's
  history bounded (100 cells of 10 trials), which separates Optuna TPE's cost with a cell's
  history from the rest of the driver; and 10 trials with a new actor per trial (Tune's
  default; ``run_study`` reuses actors), to show what reusing them saves.
- ``--with-10k`` adds one study of 10,000 trials (100 cells x 100), not part of the default run.
- The searcher's own time is measured apart: ``suggest`` per trial (in the hand-off) and its
  ``save`` per snapshot (Tune calls it with every experiment-state snapshot).
- Under ``--time-limit`` (``make bench`` gives one), rounds and extra studies predicted (from
  the first round's time, with 20% headroom) not to fit are skipped, and the notes say so.

The default run is estimated at 6-7 minutes on 2 idle cores (from the study times of the old
protocol: 2.4 s per 10-trial study, 73 s per 1,000); under ``make bench``'s 390 s limit the
bounded study is the one skipped if it would not fit.

    .venv/bin/python bench/scheduling_overhead.py [--rounds 3] [--with-10k] [--time-limit S]
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
SMALL = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000],
                        help="large study sizes, each run once per round (the small size is "
                             f"{SMALL})")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--small-repeats", type=int, default=5,
                        help=f"studies of {SMALL} trials in each small block")
    parser.add_argument("--cells", type=int, default=2, help="cells the trials are spread over")
    parser.add_argument("--concurrent", type=int, default=2)
    parser.add_argument("--trials-per-cell", type=int, default=10,
                        help="per-cell trials of the bounded-history study of 1,000 trials")
    parser.add_argument("--with-10k", action="store_true",
                        help="also one study of 10,000 trials in 100 cells of 100 (long)")
    parser.add_argument("--time-limit", type=float, default=None,
                        help="seconds this benchmark may take; rounds and extra studies "
                             "predicted not to fit are skipped, and the output says so")


def instant_trial(config: dict) -> None:
    """A trainable that does no work: one result, as if it trained one epoch."""
    from ray import tune

    from ablate.tune_plugins import METRIC

    tune.report({METRIC: config["hparams"]["learning_rate"], "finished": 1})


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
        """ablate's searcher, timing its own share: its ask (in the hand-off) and its save."""

        suggest_seconds = 0.0
        save_seconds = 0.0
        saves = 0

        def suggest(self, trial_id):
            start = time.perf_counter()
            try:
                return super().suggest(trial_id)
            finally:
                self.suggest_seconds += time.perf_counter() - start

        def save(self, checkpoint_path):
            start = time.perf_counter()
            try:
                return super().save(checkpoint_path)
            finally:
                self.save_seconds += time.perf_counter() - start
                self.saves += 1

    from ablate.study import set_snapshot_period

    cells, spaces = cells_and_spaces(cells_count)
    per_cell = max(1, math.ceil(trials / cells_count))
    set_snapshot_period(per_cell * cells_count)  # as run_study does
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
            "searcher_save_seconds": searcher.save_seconds / max(searcher.saves, 1),
            "saves": searcher.saves}


def summary(runs: list[dict]) -> dict:
    """Studies of one size as one: hand-offs pooled, times and counts summed."""
    gaps = [gap for run in runs for gap in run["gaps"]]
    finished = sum(run["finished"] for run in runs)
    saves = sum(run["saves"] for run in runs)
    return {
        "fit_seconds": sum(run["fit_seconds"] for run in runs), "finished": finished,
        "studies": len(runs), "cells": runs[0]["cells"], "handoffs": len(gaps),
        "searcher_seconds_per_trial": sum(run["searcher_seconds_per_trial"] * run["finished"]
                                          for run in runs) / max(finished, 1),
        "searcher_save_seconds": sum(run["searcher_save_seconds"] * run["saves"]
                                     for run in runs) / max(saves, 1),
        "median_gap": statistics.median(gaps),
        "p90_gap": statistics.quantiles(gaps, n=10)[-1] if len(gaps) > 1 else gaps[0],
    }


def spread(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    """'median (min-max)' of ``values`` times ``scale``."""
    med = statistics.median(values) * scale
    lo, hi = min(values) * scale, max(values) * scale
    return f"{med:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def measure(args: argparse.Namespace, result: Result) -> None:
    import ray

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    began = time.perf_counter()
    sizes = sorted(args.sizes)
    result.note(f"{args.rounds} interleaved rounds of {SMALL} (x{args.small_repeats}), "
                f"{', '.join(map(str, sizes))} trials over {args.cells} cells, "
                f"{args.concurrent} at a time, instant trainable (one tune.report); each round "
                f"between two blocks of {SMALL}-trial studies; Ray start-up not counted")
    storage = tempfile.mkdtemp(prefix="sched-")
    # "local": always a fresh Ray of our own, never one an earlier `ray start` left running.
    ray.init(address="local", num_cpus=args.concurrent + 1, include_dashboard=False,
             logging_level="WARNING")

    def left() -> float:
        if not args.time_limit:
            return math.inf
        return args.time_limit - (time.perf_counter() - began)

    def small_block() -> dict:
        block = summary([fit(SMALL, args.cells, args.concurrent, storage, reuse=True)
                         for _ in range(args.small_repeats)])
        print(f"  {SMALL} trials x {block['studies']}: {block['fit_seconds']:.1f} s, median "
              f"hand-off {block['median_gap'] * 1000:.1f} ms", flush=True)
        return block

    def large(trials: int, cells: int) -> dict:
        run = summary([fit(trials, cells, args.concurrent, storage, reuse=True)])
        print(f"  {trials} trials in {cells} cells: {run['fit_seconds']:.1f} s, median "
              f"hand-off {run['median_gap'] * 1000:.1f} ms, searcher "
              f"{run['searcher_seconds_per_trial'] * 1000:.2f} ms per ask", flush=True)
        return run

    blocks: list[dict] = []
    rounds: list[dict[int, dict]] = []
    extras: dict[str, tuple[dict, float]] = {}  # name -> (study, mean of its bracketing blocks)
    try:
        blocks.append(small_block())
        first_round = None
        for index in range(args.rounds):
            if first_round is not None and first_round * 1.2 > left():
                result.note(f"rounds {index + 1}-{args.rounds} skipped: a round took "
                            f"{first_round:.0f} s, {left():.0f} s of the time limit left")
                break
            start = time.perf_counter()
            rounds.append({size: large(size, args.cells) for size in sizes})
            blocks.append(small_block())
            first_round = first_round or time.perf_counter() - start
        # Per trial, a 1,000-trial study costs about what the largest size did.
        per_trial = rounds[0][max(sizes)]["fit_seconds"] / max(sizes) if rounds else math.inf
        block_seconds = blocks[0]["fit_seconds"]
        wanted = [("bounded", 1000, max(1, 1000 // args.trials_per_cell))]
        if args.with_10k:
            wanted.append(("10k", 10_000, 100))
        for name, trials, cells in wanted:
            predicted = 1.2 * (trials * per_trial + block_seconds)
            if name == "bounded" and max(sizes) < 1000:
                continue
            if predicted > left():
                result.note(f"{trials} trials in {cells} cells skipped: predicted "
                            f"{predicted:.0f} s, {left():.0f} s of the time limit left")
                continue
            run = large(trials, cells)
            blocks.append(small_block())
            extras[name] = (run, (blocks[-2]["median_gap"] + blocks[-1]["median_gap"]) / 2)
        fresh = None
        if left() > 1.2 * 30:
            fresh = summary([fit(SMALL, args.cells, args.concurrent, storage, reuse=False)])
            print(f"  {SMALL} trials (a new actor each): median hand-off "
                  f"{fresh['median_gap'] * 1000:.1f} ms", flush=True)
    finally:
        ray.shutdown()

    result.details["small_blocks"] = blocks
    result.details["rounds"] = [{str(size): run for size, run in r.items()} for r in rounds]
    result.details["extras"] = {name: run for name, (run, _) in extras.items()}
    small_medians = [b["median_gap"] for b in blocks]
    small_searcher = statistics.median(b["searcher_seconds_per_trial"] for b in blocks)
    small_save = statistics.median(b["searcher_save_seconds"] for b in blocks)
    small_text = f"{spread(small_medians, 1000)} ms ({len(blocks)} blocks)"

    def row(case: str, runs: list[dict], ratios: list[float], target: bool) -> None:
        med = statistics.median(ratios)
        result.add(Row(
            case,
            "median hand-off, large / small (bracketing blocks)"
            + ("; median (range) over rounds" if len(ratios) > 1 else ""),
            med,
            f"{spread([r['median_gap'] for r in runs], 1000)} vs {small_text}; ratio range "
            f"{min(ratios):.2f}-{max(ratios):.2f}; p90 "
            f"{statistics.median(r['p90_gap'] for r in runs) * 1000:.0f} ms; searcher ask "
            f"{statistics.median(r['searcher_seconds_per_trial'] for r in runs) * 1000:.1f} vs "
            f"{small_searcher * 1000:.1f} ms, save "
            f"{statistics.median(r['searcher_save_seconds'] for r in runs) * 1000:.1f} vs "
            f"{small_save * 1000:.1f} ms",
            f"<= {TARGET}" if target else "",
            med <= TARGET if target else None,
        ))

    for size in sizes:
        runs = [r[size] for r in rounds]
        ratios = [r[size]["median_gap"] / ((blocks[i]["median_gap"] + blocks[i + 1]["median_gap"])
                                           / 2) for i, r in enumerate(rounds)]
        row(f"{size:,} vs {SMALL} trials, {args.cells} cells", runs, ratios,
            target=size == 1000)
    for name, (run, bracket) in extras.items():
        label = {"bounded": f"1,000 trials in {run['cells']} cells vs {SMALL}",
                 "10k": f"10,000 trials in {run['cells']} cells vs {SMALL}"}[name]
        row(label, [run], [run["median_gap"] / bracket], target=False)
    if fresh is not None:
        result.details["new_actor_per_trial"] = fresh
        result.add(Row(
            f"{SMALL} trials, new actor each",
            "median hand-off, new actor / reused",
            fresh["median_gap"] / statistics.median(small_medians),
            f"{fresh['median_gap'] * 1000:,.0f} vs {statistics.median(small_medians) * 1000:.1f}"
            " ms",
        ))


if __name__ == "__main__":
    run_benchmark("scheduling_overhead", __doc__.splitlines()[0], add_arguments, measure)
