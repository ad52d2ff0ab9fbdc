"""Search efficiency as users feel it: best dev score for the compute spent, TPE+ASHA vs random.

What a user of a study sees is the best configuration found so far against what it has cost.
So this benchmark compares **anytime performance**: the best dev score each search has reached
as a function of its compute, for ablate's search (per-cell TPE + ASHA, ``CellSearcher`` and
``CellScheduler`` from ``ablate.tune_plugins``, as a study builds them) against random search
with four times the trials, and the test score of the configuration each one picks.

Protocol (fixed before measuring):

- **Tasks**: tf/0 and tf/1 (real GUE; 1,000-row dev and test sets, whole). Train: a seeded
  subsample of ``--train-rows`` (1,500) of each task's train rows, the same for every trial.
- **Model**: cnn tiny, char tokens, from scratch; ``--epochs`` (4) epochs is the full budget.
- **Search space**: learning rate 1e-4 to 1e-2 (log), dropout 0 to 0.3, batch 32 or 128;
  weight decay 0.01 and warm-up ratio 0.1 pinned.
- **Compute unit: train samples**, i.e. train rows times epochs trained (1,500 per epoch here,
  whatever the batch). Dev evaluation is not counted (one per epoch in both strategies, so it
  is proportional). Device-seconds (ablate's own accounting) are recorded beside it.
- **Measure** (tabular, as HPO benchmarks are): each point of a grid over that space, learning
  rate 1e-4 to 1e-2 at 4 per decade x dropout {0, 0.3} x batch {32, 128} = 36 configurations,
  is trained for real with ablate's trainable (``ablate.training.train_trial``) in Ray Tune
  for the full budget, as a replicate, so it reports dev MCC after every epoch and, at the
  end, the test MCC of its best-on-dev model.
- **Search**: each strategy searches that table in real Ray Tune; the trainable reports the
  recorded curve of the grid point nearest the hyperparameters it was given (learning rate on
  a log scale), epoch by epoch, so ASHA stops it where it would have stopped the real trial.
  TPE + ASHA: ``--trials`` (16) trials, TPE after 8 random start-up trials (the study's
  default), ASHA grace 1 epoch, reduction factor 2, max ``--epochs``. Random search:
  4 x ``--trials`` (64) trials, all random start-up, each to the full budget (no early
  stopping). Trials run one at a time, so a seed's searches are deterministic.
- **Seeds**: 0, 1, 2 (``--seeds``), the searchers' seed.

Figures, per task (and pooled over tasks for a and b):

- **(a) anytime**: at every compute level up to the smaller of the two searches' totals (every
  epoch's worth of train samples, exact since every epoch costs the same), is TPE+ASHA's best
  dev MCC so far >= random's? The fraction of (level, seed) pairs where it holds, and the worst
  gap (TPE+ASHA minus random, lowest over levels and seeds). Target: 1.0 (every level, every
  seed).
- **(b) time to random's final best**: the compute TPE+ASHA spent until its best dev MCC first
  reached random search's final best, over random's total compute, mean over seeds. Target:
  <= 0.4. A seed where TPE+ASHA never reaches it counts as a miss (its whole spend stands in,
  so the mean is then a lower bound).
- **(c) test of the pick**: the test MCC of the configuration each search picks (its trial with
  the best dev MCC, the first one on a tie), as that configuration scored when trained for the
  full budget (best-on-dev epoch), mean over seeds; TPE+ASHA / random. Reported, no target.

    .venv/bin/python bench/search_efficiency.py [--tasks tf/0 tf/1] [--seeds 0 1 2]
        [--trials 16] [--epochs 4] [--train-rows 1500]
"""

from __future__ import annotations

import argparse
import csv
import math
import random
import statistics
import tempfile
import time
from pathlib import Path

from benchlib import Result, Row, gue_dir, run_benchmark

FRACTION_TARGET = 1.0
REACH_TARGET = 0.4
ARCH = "cnn"
# The grid the learning curves are measured on; a search's suggestion snaps to its nearest point.
LEARNING_RATES = [1e-4 * 10 ** (k / 4) for k in range(9)]  # 1e-4 .. 1e-2, 4 per decade
DROPOUTS = [0.0, 0.3]
BATCH_SIZES = [32, 128]
FIXED = {"weight_decay": 0.01, "warmup_ratio": 0.1}
SUBSAMPLE_SEED = 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", nargs="+", default=["tf/0", "tf/1"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=16,
                        help="TPE + ASHA trials per search (random search gets 4x)")
    parser.add_argument("--epochs", type=int, default=4, help="max epochs (the full budget)")
    parser.add_argument("--train-rows", type=int, default=1500,
                        help="seeded subsample of each task's train split (0: all of it)")
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


def subsample_task(task: str, rows: int, root: Path) -> tuple[Path, int]:
    """A GUE folder holding ``task`` with a seeded subsample of its train rows (dev, test whole).

    Returns the folder and the number of train rows in it."""
    source = gue_dir() / task
    target = root / task
    target.mkdir(parents=True, exist_ok=True)
    n_train = 0
    for split in ("train", "dev", "test"):
        with open(source / f"{split}.csv", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader)
            body = list(reader)
        if split == "train":
            if rows and rows < len(body):
                body = random.Random(SUBSAMPLE_SEED).sample(body, rows)
            n_train = len(body)
        with open(target / f"{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(body)
    return root, n_train


def study_spec(root: Path, task: str, data_dir: Path, args: argparse.Namespace, spaces: Path):
    from ablate.spec import parse_study

    return parse_study(
        {
            "name": f"bench_search_{task.replace('/', '_')}",
            "data": {"gue_dir": str(data_dir), "tasks": [task]},
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


def measure_curves(spec, args: argparse.Namespace, storage: str) -> tuple[dict, dict, object]:
    """Train every grid configuration for real, as a replicate.

    Returns grid key -> per-epoch (dev MCC, cumulative device-hours), grid key -> test MCC of
    its best-on-dev model, and the cell."""
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
    configs = [TrialConfig(cell.name, hp, seed=0, stage="replicate").to_tune() for hp in grid()]
    curves: dict[tuple, list[tuple[float, float]]] = {}
    tests: dict[tuple, float] = {}

    class Curves(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            key = grid_key(trial.config["hparams"])
            curves.setdefault(key, []).append((result["dev_mcc"], result["device_hours"]))
            if "test_mcc" in result:
                tests[key] = result["test_mcc"]

    trainable = tune.with_parameters(train_trial, plans=plans,
                                     split_arrays=share_splits(prepared.inputs,
                                                               lambda _m: None,
                                                               with_test=True),
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
    short = [k for k, c in curves.items() if len(c) < args.epochs or k not in tests]
    if short or len(curves) != len(configs):
        raise RuntimeError(f"{len(short)} grid configurations lack a full curve or a test score")
    return curves, tests, cell


def replay_trial(config: dict, curves: dict, max_epochs: int, train_rows: int) -> None:
    """Report the measured curve of the grid point nearest this trial's hyperparameters."""
    from ray import tune

    from ablate.tracking.schema import MetricName

    best = -1.0
    for epoch, (mcc, hours) in enumerate(curves[grid_key(config["hparams"])][:max_epochs], 1):
        best = max(best, mcc)
        tune.report({MetricName.BEST_DEV_SCORE: best, MetricName.BEST_DEV_MCC: best,
                     "dev_mcc": mcc, "device_hours": hours, "train_samples": epoch * train_rows,
                     "finished": int(epoch >= max_epochs)})


def search(curves: dict, cell, spaces: dict, trials: int, epochs: int, seed: int,
           random_search: bool, storage: str, train_rows: int) -> list[dict]:
    """One search over the measured curves; one event per epoch reported, in order: train
    samples and device-hours spent so far, best dev MCC so far and the grid key that holds it."""
    from ray import tune

    from ablate.tune_plugins import TRIALS_SEEN, CellScheduler, CellSearcher

    timeline: list[dict] = []
    last: dict[str, tuple[int, float]] = {}

    class Spending(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            before = timeline[-1] if timeline else {"samples": 0, "hours": 0.0, "best": -math.inf,
                                                     "pick": None}
            samples0, hours0 = last.get(trial.trial_id, (0, 0.0))
            last[trial.trial_id] = (result["train_samples"], result["device_hours"])
            best, pick = before["best"], before["pick"]
            if result["best_dev_mcc"] > best:  # strictly: the first to reach it is the pick
                best, pick = result["best_dev_mcc"], grid_key(trial.config["hparams"])
            timeline.append({"samples": before["samples"] + result["train_samples"] - samples0,
                             "hours": before["hours"] + result["device_hours"] - hours0,
                             "best": best, "pick": pick})

    TRIALS_SEEN.clear()
    searcher = CellSearcher([cell], spaces, trials_per_cell=trials, max_epochs=epochs,
                            max_concurrent=1, seed=seed,
                            startup_trials=trials if random_search else None)
    scheduler = CellScheduler([cell.name], max_t=epochs,
                              grace_period=epochs if random_search else 1, rf=2)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(replay_trial, curves=curves, max_epochs=epochs,
                                                 train_rows=train_rows), {"cpu": 1}),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=-1,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=f"replay-{'random' if random_search else 'tpe'}-{seed}-"
                                       f"{time.monotonic_ns()}",
                                  storage_path=storage, verbose=0, callbacks=[Spending()]),
    )
    results = tuner.fit()
    if results.errors:
        raise RuntimeError(f"replayed search failed: {results.errors[0]}")
    if len(results) != trials:
        raise RuntimeError(f"replayed search ran {len(results)} trials, not {trials}")
    return timeline


def best_at(timeline: list[dict], samples: int) -> float:
    """Best dev MCC a search had reached once it had spent ``samples`` train samples."""
    reached = [e["best"] for e in timeline if e["samples"] <= samples]
    return reached[-1] if reached else -math.inf


def compare(tpe: list[dict], rnd: list[dict], step: int) -> dict:
    """Figures (a) and (b) of one seed's pair of searches."""
    common = min(tpe[-1]["samples"], rnd[-1]["samples"])
    levels = range(step, common + 1, step)
    gaps = [best_at(tpe, c) - best_at(rnd, c) for c in levels]
    goal = rnd[-1]["best"]
    reach = next((e["samples"] for e in tpe if e["best"] >= goal), None)
    spent = reach if reach is not None else tpe[-1]["samples"]
    return {"levels": len(gaps), "held": sum(g >= 0 for g in gaps), "worst_gap": min(gaps),
            "worst_gap_at": step * (1 + gaps.index(min(gaps))),
            "random_final_best": goal, "tpe_final_best": tpe[-1]["best"],
            "tpe_samples_to_reach": reach, "reach_fraction": spent / rnd[-1]["samples"],
            "tpe_samples": tpe[-1]["samples"], "random_samples": rnd[-1]["samples"],
            "tpe_device_s": tpe[-1]["hours"] * 3600, "random_device_s": rnd[-1]["hours"] * 3600}


def measure(args: argparse.Namespace, result: Result) -> None:
    import ray
    from scipy.stats import spearmanr

    from ablate.ray_session import start_ray
    from ablate.spec import load_search_space

    result.note(f"{ARCH} tiny, char tokens, on {', '.join(args.tasks)} (real GUE, train "
                f"subsampled to {args.train_rows or 'all'} rows, dev and test whole); grid of "
                f"{len(grid())} configurations trained for {args.epochs} epochs each, then "
                f"searched: TPE+ASHA {args.trials} trials vs random {4 * args.trials} trials at "
                f"the full budget, seeds {args.seeds}; compute in train samples")
    root = Path(tempfile.mkdtemp(prefix="search-"))
    spaces_dir = write_space(root / "spaces")
    storage = str(root / "tune")
    start_ray(None, cpus=args.concurrent + 1)
    pooled: list[dict] = []
    try:
        for task in args.tasks:
            data_dir, n_train = subsample_task(task, args.train_rows, root / "GUE")
            spec = study_spec(root / task.replace("/", "_"), task, data_dir, args, spaces_dir)
            started = time.perf_counter()
            curves, tests, cell = measure_curves(spec, args, storage)
            measured_seconds = time.perf_counter() - started
            spaces = {ARCH: load_search_space(spaces_dir, ARCH)}
            finals = {k: max(m for m, _ in c) for k, c in curves.items()}
            grid_best = max(finals.values())
            # How well ASHA's first rung predicts a configuration's rank at the full budget.
            early = spearmanr([curves[k][0][0] for k in finals], list(finals.values()))[0]
            dev_test = spearmanr(list(finals.values()), [tests[k] for k in finals])[0]
            grid_hours = sum(curve[-1][1] for curve in curves.values())
            print(f"  {task}: {len(curves)} curves measured in {measured_seconds:.0f} s "
                  f"(best dev MCC on the grid {grid_best:.3f}, {n_train} train rows)", flush=True)
            details = {"train_rows": n_train, "measure_seconds": measured_seconds,
                       "grid_best_dev": grid_best, "grid_best_test": max(tests.values()),
                       "spearman_epoch1_vs_best": early, "spearman_best_dev_vs_test": dev_test,
                       "grid_device_s": grid_hours * 3600,
                       "curves": {str(k): v for k, v in curves.items()},
                       "tests": {str(k): v for k, v in tests.items()}, "seeds": {}}
            per_seed = []
            for seed in args.seeds:
                tpe = search(curves, cell, spaces, args.trials, args.epochs, seed, False,
                             storage, n_train)
                rnd = search(curves, cell, spaces, 4 * args.trials, args.epochs, seed, True,
                             storage, n_train)
                figures = compare(tpe, rnd, n_train)
                figures.update(seed=seed, task=task, tpe_pick=str(tpe[-1]["pick"]),
                               random_pick=str(rnd[-1]["pick"]),
                               tpe_test=tests[tpe[-1]["pick"]], random_test=tests[rnd[-1]["pick"]],
                               tpe_timeline=[(e["samples"], e["best"]) for e in tpe],
                               random_timeline=[(e["samples"], e["best"]) for e in rnd])
                per_seed.append(figures)
                details["seeds"][seed] = figures
                reach = figures["tpe_samples_to_reach"]
                print(f"    seed {seed}: (a) TPE+ASHA >= random at {figures['held']}/"
                      f"{figures['levels']} levels, worst gap {figures['worst_gap']:+.3f}; "
                      f"(b) random's final best {figures['random_final_best']:.4f} "
                      + (f"reached at {reach:,} of random's {figures['random_samples']:,} "
                         "samples" if reach is not None else
                         f"not reached (TPE+ASHA best {figures['tpe_final_best']:.4f}, short by "
                         f"{figures['random_final_best'] - figures['tpe_final_best']:.4f})")
                      + f" -> {figures['reach_fraction']:.3f}; (c) test MCC of the pick "
                      f"{figures['tpe_test']:.3f} vs {figures['random_test']:.3f}", flush=True)
            result.details[task] = details
            pooled.extend(per_seed)
            add_rows(result, f"{task}, {ARCH} tiny", per_seed,
                     f"; grid: {len(curves)} configs, best dev {grid_best:.3f}, rank "
                     f"correlation of epoch-1 with best dev {early:+.2f}")
    finally:
        ray.shutdown()
    if len(args.tasks) > 1:
        add_rows(result, "all tasks", pooled, "", test_row=False)


def add_rows(result: Result, case: str, runs: list[dict], grid_note: str,
             test_row: bool = True) -> None:
    levels, held = sum(r["levels"] for r in runs), sum(r["held"] for r in runs)
    worst = min(r["worst_gap"] for r in runs)
    fraction = held / levels
    per_seed_held = ", ".join(f"{r['held']}/{r['levels']}" for r in runs)
    per_seed_gap = ", ".join(f"{r['worst_gap']:+.3f}" for r in runs)
    result.add(Row(
        case, "anytime: levels x seeds with TPE+ASHA best dev >= random's", fraction,
        f"{held} of {levels} (seeds {per_seed_held}); worst gap {worst:+.3f} MCC (per seed "
        f"{per_seed_gap})",
        f">= {FRACTION_TARGET}", fraction >= FRACTION_TARGET))
    fractions = [r["reach_fraction"] for r in runs]
    missed = sum(r["tpe_samples_to_reach"] is None for r in runs)
    mean = statistics.mean(fractions)
    shorts = ", ".join(f"{r['random_final_best'] - r['tpe_final_best']:.4f}" for r in runs
                       if r["tpe_samples_to_reach"] is None)
    bound = (f"; TPE+ASHA never reached it with {missed} seed(s) (short by {shorts} MCC), so "
             "the mean is a lower bound" if missed else "")
    result.add(Row(
        case, "train samples to random's final best: TPE+ASHA / random's total", mean,
        f"mean of {len(runs)} seeds ({', '.join(f'{f:.3f}' for f in fractions)}){bound}; whole "
        f"searches {statistics.mean(r['tpe_samples'] for r in runs):,.0f} vs "
        f"{statistics.mean(r['random_samples'] for r in runs):,.0f} samples, "
        f"{statistics.mean(r['tpe_device_s'] for r in runs):.0f} vs "
        f"{statistics.mean(r['random_device_s'] for r in runs):.0f} device-s{grid_note}",
        f"<= {REACH_TARGET}", mean <= REACH_TARGET and not missed))
    if test_row:
        tpe_test = statistics.mean(r["tpe_test"] for r in runs)
        rnd_test = statistics.mean(r["random_test"] for r in runs)
        pairs = ", ".join(f"{r['tpe_test']:.3f}/{r['random_test']:.3f}" for r in runs)
        result.add(Row(
            case, "test MCC of the pick: TPE+ASHA / random",
            tpe_test / rnd_test if rnd_test else None,
            f"mean {tpe_test:.3f} vs {rnd_test:.3f} (per seed, TPE+ASHA/random: {pairs})"))


if __name__ == "__main__":
    run_benchmark("search_efficiency", __doc__.splitlines()[0], add_arguments, measure)
