"""Scheduling overhead: driver time per trial of ablate's searcher and scheduler, by study size.

Runs one Ray Tune ``Tuner`` per size with ablate's ``CellSearcher`` (one Optuna TPE study per
cell) and ``CellScheduler`` (ASHA per cell) over an instant function trainable that calls
``tune.report`` once, and divides ``Tuner.fit``'s wall time by the number of trials. Tune's
experiment state is saved every second, as ``run_study`` sets it. Ray is started once, before
the first size, and not counted. Trials take 1 CPU each, ``--concurrent`` at a time.
Target: seconds per trial at the largest size <= 1.5 x at the smallest.

The size series reuses trial actors (``reuse_actors=True``), so what grows with the study is
the driver's own work (searcher, scheduler, Tune's bookkeeping and state saves), not process
start-up. ``run_study`` itself leaves Tune's default (a new actor per trial); the smallest size
is also run that way, and the ratio of the two shows what a trial's actor start-up costs.

    .venv/bin/python bench/scheduling_overhead.py [--sizes 10 100 1000] [--cells 2]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import tempfile
import time

from benchlib import Result, Row, run_benchmark

TARGET = 1.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000],
                        help="trials per study, smallest first")
    parser.add_argument("--cells", type=int, default=2, help="cells the trials are spread over")
    parser.add_argument("--concurrent", type=int, default=2)


def instant_trial(config: dict) -> None:
    """A trainable that does no work: one result, as if it trained one epoch."""
    from ray import tune

    tune.report({"best_dev_mcc": config["hparams"]["learning_rate"], "finished": 1})


def cells_and_spaces(count: int):
    from ablate.spec import DEFAULT_SEARCH_SPACE_DIR, Cell, load_search_space

    space = load_search_space(DEFAULT_SEARCH_SPACE_DIR, "cnn")
    cells = [Cell("cnn", "none", "char", f"task{i}") for i in range(count)]
    return cells, {"cnn": space}


def fit_seconds(
    trials: int, cells_count: int, concurrent: int, storage: str, reuse: bool
) -> tuple[float, int]:
    """Wall time of one Tuner.fit over ``trials`` instant trials, and how many finished."""
    from ray import tune

    from ablate.search import TRIALS_SEEN, CellScheduler, CellSearcher

    cells, spaces = cells_and_spaces(cells_count)
    per_cell = max(1, math.ceil(trials / cells_count))
    TRIALS_SEEN.clear()
    searcher = CellSearcher(cells, spaces, {c.name: {} for c in cells}, trials_per_cell=per_cell,
                            max_epochs=1, max_concurrent=concurrent, seed=0)
    scheduler = CellScheduler([c.name for c in cells], max_t=1, grace_period=1, rf=2)
    tuner = tune.Tuner(
        tune.with_resources(instant_trial, {"cpu": 1}),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=-1,
                                     reuse_actors=reuse),
        run_config=tune.RunConfig(name=f"sched-{trials}-{random.randrange(10**6)}",
                                  storage_path=storage, verbose=0),
    )
    start = time.perf_counter()
    results = tuner.fit()
    seconds = time.perf_counter() - start
    return seconds, len(results)


def measure(args: argparse.Namespace, result: Result) -> None:
    import ray

    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")  # as run_study sets it
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    sizes = sorted(args.sizes)
    result.note(f"sizes {sizes} trials over {args.cells} cells, {args.concurrent} at a time, "
                "instant trainable (one tune.report); Ray start-up not counted")
    storage = tempfile.mkdtemp(prefix="sched-")
    # "local": always a fresh Ray of our own, never one an earlier `ray start` left running.
    ray.init(address="local", num_cpus=args.concurrent + 1, include_dashboard=False,
             logging_level="WARNING")
    try:
        per_trial, counts = {}, {}
        for size in sizes:
            seconds, finished = fit_seconds(size, args.cells, args.concurrent, storage, True)
            per_trial[size], counts[size] = seconds / finished, finished
            result.details[f"reuse_actors/{finished}"] = {"fit_seconds": seconds}
            print(f"  {finished} trials (actors reused): {seconds:.1f} s, "
                  f"{per_trial[size]:.3f} s per trial", flush=True)
        fresh_seconds, fresh_count = fit_seconds(sizes[0], args.cells, args.concurrent, storage,
                                                 False)
        result.details[f"new_actor_per_trial/{fresh_count}"] = {"fit_seconds": fresh_seconds}
        print(f"  {fresh_count} trials (a new actor each, as run_study): {fresh_seconds:.1f} s",
              flush=True)
    finally:
        ray.shutdown()
    small, large = sizes[0], sizes[-1]
    for size in sizes[1:]:
        ratio = per_trial[size] / per_trial[small]
        last = size == large
        result.add(Row(
            f"{counts[size]} vs {counts[small]} trials",
            "s per trial, large / small (actors reused)",
            ratio,
            f"{per_trial[size]:.3f} vs {per_trial[small]:.3f} s per trial",
            f"<= {TARGET}" if last else "",
            ratio <= TARGET if last else None,
        ))
    fresh = fresh_seconds / fresh_count
    result.add(Row(
        f"{fresh_count} trials, new actor each",
        "s per trial, new actor / reused",
        fresh / per_trial[small],
        f"{fresh:.3f} vs {per_trial[small]:.3f} s per trial",
    ))


if __name__ == "__main__":
    run_benchmark("scheduling_overhead", __doc__.splitlines()[0], add_arguments, measure)
