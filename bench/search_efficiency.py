"""Search efficiency: per-cell TPE + ASHA against full-budget random search with 4x the trials.

A fair comparison of two search strategies needs many searches (several seeds, two tasks), and
training every trial of every search for real would not fit a benchmark run on a CPU. So the
benchmark works as tabular hyperparameter-optimisation benchmarks do, in two phases:

1. **Measure.** On each real GUE task, every configuration of a grid over the search space
   is trained for real, with ablate's own trainable (``ablate.training.train_trial``) in Ray
   Tune, for the full ``--epochs``. Each epoch's dev MCC and device-hours (the trial's own cost
   accounting) are recorded: a learning curve per configuration.
2. **Search.** Each strategy then searches that table, in real Ray Tune with ablate's own
   ``CellSearcher`` and ``CellScheduler``: a trainable looks up the configuration nearest to the
   hyperparameters it was given (learning rate on a log scale) and reports its recorded curve
   epoch by epoch, so ASHA stops it exactly where it would have stopped the real trial.

   - TPE + ASHA: ``--trials`` trials (TPE after half of them, the default start-up), one ASHA
     per cell with grace 1 epoch and reduction factor 2, up to ``--epochs`` epochs;
   - random search: ``4 x --trials`` trials, each run to ``--epochs`` (ASHA's grace period is
     the whole budget, so it stops nothing; every trial is a random start-up trial).

   Trials run one at a time, so the order of results (and so each strategy's spending) is
   deterministic for a given seed.

For each task and seed, the target is the best dev MCC either search found, less 0.01. A
strategy's compute to reach it is every device-hour it spent up to the epoch where one of its
trials first reached it. The figure is TPE + ASHA's compute over random search's, averaged over
the seeds. Target: at most 0.4. A search that never reached the target needed more than all it
spent: if TPE + ASHA never reached it, its whole spend stands in, the mean is a lower bound and
the target counts as missed; if random search never did, its whole spend stands in too, making
the ratio an upper bound.

    .venv/bin/python bench/search_efficiency.py [--tasks mouse/3 mouse/2] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

from benchlib import Result, Row, gue_dir, run_benchmark

TOLERANCE = 0.01
TARGET = 0.4
ARCH = "cnn"
# The grid the learning curves are measured on; a search's suggestion snaps to its nearest point.
LEARNING_RATES = [1e-4 * 10 ** (k / 4) for k in range(9)]  # 1e-4 .. 1e-2, 4 per decade
DROPOUTS = [0.0, 0.15, 0.3]
BATCH_SIZES = [32, 128]
FIXED = {"weight_decay": 0.01, "warmup_ratio": 0.1}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", nargs="+", default=["mouse/3", "mouse/2"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=16, help="TPE + ASHA trials per search")
    parser.add_argument("--epochs", type=int, default=4, help="max epochs (the full budget)")
    parser.add_argument("--concurrent", type=int, default=2,
                        help="trials trained at a time while measuring the curves")


def grid() -> list[dict]:
    return [{"learning_rate": lr, "dropout": d, "batch_size": b, **FIXED}
            for lr in LEARNING_RATES for d in DROPOUTS for b in BATCH_SIZES]


def grid_key(hparams: dict) -> tuple:
    """The grid point nearest to ``hparams`` (learning rate compared on a log scale)."""
    lr = min(LEARNING_RATES, key=lambda v: abs(math.log(v) - math.log(hparams["learning_rate"])))
    dropout = min(DROPOUTS, key=lambda v: abs(v - hparams["dropout"]))
    return round(lr, 10), dropout, int(hparams["batch_size"])


def write_space(folder: Path) -> Path:
    """The search space both strategies search: the grid's ranges, the rest pinned."""
    import yaml

    from ablate.spec import DEFAULT_SEARCH_SPACE_DIR, load_search_space

    folder.mkdir(parents=True, exist_ok=True)
    params = {
        "learning_rate": {"type": "float", "low": LEARNING_RATES[0], "high": LEARNING_RATES[-1],
                          "log": True},
        "dropout": {"type": "float", "low": DROPOUTS[0], "high": DROPOUTS[-1]},
        "batch_size": {"type": "categorical", "choices": BATCH_SIZES},
        **{name: {"type": "float", "low": value, "high": value} for name, value in FIXED.items()},
    }
    preset = load_search_space(DEFAULT_SEARCH_SPACE_DIR, ARCH).preset
    doc = {"architecture": ARCH, "preset": preset, "params": params}
    (folder / f"{ARCH}.yaml").write_text(yaml.safe_dump(doc))
    return folder


def study_spec(root: Path, task: str, args: argparse.Namespace, spaces: Path):
    from ablate.spec import parse_study

    return parse_study(
        {
            "name": f"bench_search_{task.replace('/', '_')}",
            "data": {"gue_dir": str(gue_dir()), "tasks": [task]},
            "axes": {"architecture": [ARCH], "pretraining": ["none"], "tokenizer": ["char"]},
            "budget": {"trials_per_cell": args.trials, "max_epochs": args.epochs,
                       "concurrent_trials": args.concurrent, "grace_epochs": 1,
                       "reduction_factor": 2},
            "seed": 0,
            "tracking": {"uri": f"sqlite:///{root}/mlruns.db"},
            "search_space_dir": str(spaces),
            "work_dir": str(root / "work"),
        },
        source="search_efficiency",
        base_dir=root,
    )


def measure_curves(spec, args: argparse.Namespace, storage: str) -> tuple[dict, object]:
    """Train every grid configuration for real; grid key -> per-epoch (dev MCC, device-hours)."""
    from ray import tune

    from ablate.study import cell_plans, prepare_study, share_splits
    from ablate.training import train_trial
    from ablate.trial import TrialConfig
    from ablate.tune_plugins import FixedConfigs

    prepared = prepare_study(spec, None, progress=lambda _msg: None)  # the spec's gue_dir
    # The spec's budget (max_epochs = --epochs, no patience): every grid configuration trains
    # the full --epochs.
    plans = cell_plans(spec, prepared, sources={})
    cell = prepared.cells[0]
    configs = [TrialConfig(cell.name, hp, seed=0).to_tune() for hp in grid()]
    curves: dict[tuple, list[tuple[float, float]]] = {}

    class Curves(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            curves.setdefault(grid_key(trial.config["hparams"]), []).append(
                (result["dev_mcc"], result["device_hours"]))

    trainable = tune.with_parameters(train_trial, plans=plans,
                                     split_arrays=share_splits(prepared.inputs,
                                                               lambda _m: None),
                                     model_files={})
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        tune_config=tune.TuneConfig(search_alg=FixedConfigs(configs), num_samples=-1,
                                    max_concurrent_trials=args.concurrent, reuse_actors=True),
        run_config=tune.RunConfig(name=f"{spec.name}-curves", storage_path=storage, verbose=0,
                                  callbacks=[Curves()],
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
    )
    results = tuner.fit()
    if results.errors:
        raise RuntimeError(f"{len(results.errors)} grid trials failed: {results.errors[0]}")
    # device_hours is cumulative; keep it so, one entry per epoch.
    return curves, cell


def replay_trial(config: dict, curves: dict, max_epochs: int) -> None:
    """Report the measured curve of the grid point nearest this trial's hyperparameters."""
    from ray import tune

    best = -1.0
    for mcc, hours in curves[grid_key(config["hparams"])][:max_epochs]:
        best = max(best, mcc)
        tune.report({"best_dev_mcc": best, "dev_mcc": mcc, "device_hours": hours})


def search(curves: dict, cell, spaces: dict, trials: int, epochs: int, seed: int,
           random_search: bool, storage: str) -> list[tuple[float, float]]:
    """One search over the measured curves; its results in order: (hours spent, best so far)."""
    from ray import tune

    from ablate.tune_plugins import TRIALS_SEEN, CellScheduler, CellSearcher

    timeline: list[tuple[float, float]] = []
    last_hours: dict[str, float] = {}

    class Spending(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            spent = timeline[-1][0] if timeline else 0.0
            spent += result["device_hours"] - last_hours.get(trial.trial_id, 0.0)
            last_hours[trial.trial_id] = result["device_hours"]
            best = max(timeline[-1][1] if timeline else -1.0, result["best_dev_mcc"])
            timeline.append((spent, best))

    TRIALS_SEEN.clear()
    searcher = CellSearcher([cell], spaces, trials_per_cell=trials, max_epochs=epochs,
                            max_concurrent=1, seed=seed,
                            startup_trials=trials if random_search else None)
    scheduler = CellScheduler([cell.name], max_t=epochs,
                              grace_period=epochs if random_search else 1, rf=2)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(replay_trial, curves=curves,
                                                 max_epochs=epochs), {"cpu": 1}),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=-1,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=f"replay-{'random' if random_search else 'tpe'}-{seed}-"
                                       f"{time.monotonic_ns()}",
                                  storage_path=storage, verbose=0, callbacks=[Spending()]),
    )
    results = tuner.fit()
    if results.errors:
        raise RuntimeError(f"replayed search failed: {results.errors[0]}")
    return timeline


def hours_to_reach(timeline: list[tuple[float, float]], target: float) -> float | None:
    return next((spent for spent, best in timeline if best >= target), None)


def measure(args: argparse.Namespace, result: Result) -> None:
    import ray
    from scipy.stats import spearmanr

    from ablate.ray_session import start_ray
    from ablate.spec import load_search_space

    result.note(f"{ARCH} tiny, char tokens, on {', '.join(args.tasks)} (real GUE); grid of "
                f"{len(grid())} configurations trained for {args.epochs} epochs each, then "
                f"searched: TPE+ASHA {args.trials} trials vs random {4 * args.trials} trials, "
                f"seeds {args.seeds}")
    root = Path(tempfile.mkdtemp(prefix="search-"))
    spaces_dir = write_space(root / "spaces")
    storage = str(root / "tune")
    start_ray(None, cpus=args.concurrent + 1)
    ratios, missed_all = [], 0
    try:
        for task in args.tasks:
            spec = study_spec(root / task.replace("/", "_"), task, args, spaces_dir)
            started = time.perf_counter()
            curves, cell = measure_curves(spec, args, storage)
            measured_seconds = time.perf_counter() - started
            spaces = {ARCH: load_search_space(spaces_dir, ARCH)}
            grid_best = max(mcc for curve in curves.values() for mcc, _ in curve)
            # How well ASHA's first rung predicts a configuration's rank at the full budget.
            early = spearmanr([curve[0][0] for curve in curves.values()],
                              [max(m for m, _ in curve) for curve in curves.values()])[0]
            grid_hours = sum(curve[-1][1] for curve in curves.values())
            print(f"  {task}: {len(curves)} curves measured in {measured_seconds:.0f} s "
                  f"(best dev MCC on the grid {grid_best:.3f})", flush=True)
            task_details = {"curves": {str(k): v for k, v in curves.items()},
                            "measure_seconds": measured_seconds, "grid_best": grid_best,
                            "spearman_epoch1_vs_best": early,
                            "seeds": {}}
            task_ratios, tpe_missed = [], 0
            for seed in args.seeds:
                tpe = search(curves, cell, spaces, args.trials, args.epochs, seed, False,
                             storage)
                rnd = search(curves, cell, spaces, 4 * args.trials, args.epochs, seed, True,
                             storage)
                best = max(tpe[-1][1], rnd[-1][1])
                target = best - TOLERANCE
                tpe_hours, rnd_hours = hours_to_reach(tpe, target), hours_to_reach(rnd, target)
                ratio = (tpe_hours or tpe[-1][0]) / (rnd_hours or rnd[-1][0])
                task_ratios.append(ratio)
                tpe_missed += tpe_hours is None
                task_details["seeds"][seed] = {
                    "target": target, "tpe_asha": {"hours_to_target": tpe_hours,
                                                   "spent": tpe[-1][0], "best": tpe[-1][1]},
                    "random": {"hours_to_target": rnd_hours, "spent": rnd[-1][0],
                               "best": rnd[-1][1]}, "ratio": ratio}

                def said(hours, timeline):
                    if hours is None:
                        return f"not reached (all {timeline[-1][0] * 3600:.0f} device-s)"
                    return f"{hours * 3600:.0f} device-s"

                print(f"    seed {seed}: target {target:.3f}; TPE+ASHA {said(tpe_hours, tpe)} "
                      f"(best {tpe[-1][1]:.3f}), random {said(rnd_hours, rnd)} (best "
                      f"{rnd[-1][1]:.3f}); ratio {ratio:.2f}", flush=True)
            result.details[task] = task_details
            mean = statistics.mean(task_ratios)
            ratios.extend(task_ratios)
            seeds = task_details["seeds"].values()

            def spent(label, seeds=seeds):
                """Mean device-seconds a whole search of this strategy spent."""
                return statistics.mean(s[label]["spent"] for s in seeds) * 3600

            missed_all += tpe_missed
            bound = (f"; TPE+ASHA never reached it with {tpe_missed} seed(s), so the mean is a "
                     "lower bound") if tpe_missed else ""
            result.add(Row(
                f"{task}, {ARCH} tiny",
                "device-h to best-0.01: TPE+ASHA / random",
                mean,
                f"mean of {len(task_ratios)} seeds ({', '.join(f'{r:.2f}' for r in task_ratios)}"
                f"){bound}; TPE+ASHA {spent('tpe_asha'):.0f} vs random {spent('random'):.0f} "
                f"device-s per whole search; grid: {len(curves)} configs, "
                f"{grid_hours * 3600:.0f} device-s, rank correlation of epoch-1 with best dev "
                f"MCC {early:+.2f}",
                f"<= {TARGET}",
                mean <= TARGET and not tpe_missed,
            ))
    finally:
        ray.shutdown()
    overall = statistics.mean(ratios)
    result.add(Row("both tasks", "device-h to best-0.01: TPE+ASHA / random", overall,
                   f"mean of {len(ratios)} search pairs"
                   + (f"; {missed_all} with TPE+ASHA never reaching it" if missed_all else ""),
                   f"<= {TARGET}", overall <= TARGET and not missed_all))


if __name__ == "__main__":
    run_benchmark("search_efficiency", __doc__.splitlines()[0], add_arguments, measure)
