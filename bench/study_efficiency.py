"""Study efficiency: useful compute over the slots a whole study holds, with where the rest went.

Runs one small but complete study with ``ablate.study.run_study`` on real GUE: two masked-LM
pretrainings (side by side), a search of three cells, then the replicates of each cell's best
configuration, evaluated on test. Then it reads back from MLflow what every trial, replicate
and pretraining computed, and from the driver (``StudyRun.phases``) how long each phase took.

Useful compute is optimizer steps and evaluation: a trial's epochs (``epoch_seconds``: its
training steps and the dev evaluation after each) and its test evaluation (``test_seconds``),
and a pretraining's optimizer steps (``optimizer_seconds``). Slots are what the study
reserves for that work: ``concurrent_trials`` x ``resources.cpu`` for trials, and each running
pretraining's workers x ``cpus_per_worker``. The figures:

- the whole study: useful compute / (``run_study`` wall x trial slots);
- the pretraining phase: the pretrainings' optimizer seconds / (the phase's wall x the
  pretraining slots held at once);
- the search and replicate phases alike, with trial slots;
- every overhead as a share of the study's slot-seconds: data preparation (tokenizing and
  sharding), Ray start, the sweep's provenance records, the pretraining phase's start-up
  (per run: its run's wall less its optimizer steps), the splits put in the object store,
  each trial's set-up and checkpoints, the slots left idle between trials (hand-off, worker
  start, Tune's own bookkeeping, and the tail where fewer trials remain than slots), the
  replicate stage's start, MLflow writes on the driver (part of the hand-off) and the close
  (runs closed, the final report).

Protocol (fixed before measuring): task prom/prom_core_tata (4,904 train rows), ConvNova
``tiny``, char tokens, cells none / mlm:a / mlm:b, where the two pretrainings differ only in
their learning rate (5e-4 and 1e-3; 500 steps of batch 64 on prom/prom_core_all's train split,
one worker of one CPU each); 2 trials per cell, 6 epochs each with no early stopping
(``grace_epochs`` = ``max_epochs``), 2 at a time on one CPU each; replicates with seeds 0 and
1; study seed 0. Target: at least 0.85 for the whole study and for its pretraining phase, on
a study whose trials and pretrainings each compute for 30 s or more (the script says whether
they did).

    .venv/bin/python bench/study_efficiency.py [--steps 500] [--epochs 6]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from benchlib import Result, Row, gue_dir, run_benchmark

TARGET = 0.85
MIN_COMPUTE_SECONDS = 30.0  # each trial and pretraining should compute at least this long
TASK = "prom/prom_core_tata"
CORPUS_TASK = "prom/prom_core_all"
RATES = {"a": 5e-4, "b": 1e-3}
SEARCH_AND_BEFORE = ("prepare", "ray_start", "provenance", "pretraining", "trial_inputs", "search")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=500, help="optimizer steps per pretraining")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per trial and replicate")
    parser.add_argument("--trials", type=int, default=2, help="trials per cell")


def study_spec(root: Path, args: argparse.Namespace):
    from ablate.spec import parse_study

    recipe = {"corpus": {"gue_tasks": [CORPUS_TASK]}, "max_steps": args.steps,
              "batch_size": 64, "checkpoint_every": max(args.steps // 2, 1), "workers": 1}
    return parse_study(
        {
            "name": "bench_study_efficiency",
            "data": {"gue_dir": str(gue_dir()), "tasks": [TASK]},
            "axes": {"architecture": ["convnova"],
                     "pretraining": ["none", *(f"mlm:{name}" for name in RATES)],
                     "tokenizer": ["char"]},
            "budget": {"trials_per_cell": args.trials, "max_epochs": args.epochs,
                       "grace_epochs": args.epochs, "concurrent_trials": 2},
            "pretrain_specs": {name: {**recipe, "learning_rate": rate}
                               for name, rate in RATES.items()},
            "replicates": [0, 1],
            "seed": 0,
            "tracking": {"uri": f"sqlite:///{root}/mlruns.db", "live_report_seconds": 60},
            "work_dir": str(root / "work"),
        },
        source="study_efficiency",
        base_dir=root,
    )


def trial_runs(uri: str, study: str) -> list[dict]:
    """Each search trial's and replicate's compute, as MLflow recorded it."""
    from mlflow import MlflowClient

    from ablate.tracking.reader import runs
    from ablate.tracking.schema import MetricName, Stage, Tag, tag_column

    client = MlflowClient(uri)
    frame = runs(uri, study)
    out = []
    stages = frame[tag_column(Tag.STAGE)].isin([Stage.TRIAL, Stage.REPLICATE])
    for run_id in frame.loc[stages, "run_id"]:
        run = client.get_run(run_id)
        metrics = run.data.metrics
        epochs = client.get_metric_history(run.info.run_id, "epoch_seconds")
        out.append({
            "stage": run.data.tags[Tag.STAGE],
            "cell": run.data.tags[Tag.CELL],
            "epochs": len(epochs),
            "epoch_seconds": sum(m.value for m in epochs),
            "test_seconds": float(metrics.get(MetricName.TEST_SECONDS, 0.0)),
            "wall_seconds": float(metrics[MetricName.WALL_SECONDS]),
            "checkpoint_seconds": float(metrics.get(MetricName.CHECKPOINT_SECONDS, 0.0)),
            "start": run.info.start_time / 1000,
            "end": run.info.end_time / 1000,
        })
    return out


def pretraining_runs(uri: str, study: str) -> list[dict]:
    from mlflow import MlflowClient

    from ablate.pretrain import DATA_WAIT_SECONDS, OPTIMIZER_SECONDS
    from ablate.tracking.reader import find_runs
    from ablate.tracking.schema import PRETRAIN_EXPERIMENT, MetricName, Tag, tag_filter

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(PRETRAIN_EXPERIMENT)
    out = []
    for run in find_runs(client, experiment.experiment_id, tag_filter(Tag.STUDY, study)):
        metrics = run.data.metrics
        out.append({
            "name": run.info.run_name,
            "optimizer_seconds": float(metrics[OPTIMIZER_SECONDS]),
            "data_wait_seconds": float(metrics.get(DATA_WAIT_SECONDS, 0.0)),
            "worker_seconds": float(metrics["step_seconds"]),
            "wall_seconds": float(metrics[MetricName.WALL_SECONDS]),
            "checkpoint_seconds": float(metrics.get(MetricName.CHECKPOINT_SECONDS, 0.0)),
            "steps": float(metrics["steps"]),
            "run_seconds": (run.info.end_time - run.info.start_time) / 1000,
            "start": run.info.start_time / 1000,
            "end": run.info.end_time / 1000,
        })
    return out


def stage_figures(trials: list[dict], slots: float, wall: float) -> dict:
    """A stage's useful compute, set-up, checkpoints and idle slot-seconds."""
    useful = sum(t["epoch_seconds"] + t["test_seconds"] for t in trials)
    setup = sum(t["wall_seconds"] - t["epoch_seconds"] - t["test_seconds"] for t in trials)
    checkpoints = sum(t["checkpoint_seconds"] for t in trials)
    first = min((t["start"] for t in trials), default=0.0)
    return {"useful": useful, "setup": setup, "checkpoints": checkpoints,
            "idle": slots * wall - useful - setup - checkpoints, "first_start": first,
            "wall": wall}


def measure(args: argparse.Namespace, result: Result) -> None:
    import ray

    from ablate.study import run_study

    root = Path(tempfile.mkdtemp(prefix="study-eff-"))
    spec = study_spec(root, args)
    slots = spec.budget.concurrent_trials * spec.resources.cpu
    result.note(
        f"task {TASK} (real GUE), convnova tiny, char; cells none, mlm:a, mlm:b (pretraining "
        f"lr {RATES['a']:g} / {RATES['b']:g}, {args.steps} steps of batch 64 on {CORPUS_TASK}, "
        f"1 worker each); {args.trials} trials per cell x {args.epochs} epochs, no early "
        f"stopping, {slots:g} trial slots; replicates 0 and 1")
    messages: list[tuple[float, str]] = []
    start, started_at = time.perf_counter(), time.time()

    def progress(message: str) -> None:
        messages.append((time.perf_counter() - start, message))
        print(f"  [{time.perf_counter() - start:6.1f} s] {message}", flush=True)

    study = run_study(spec, progress=progress)
    wall = time.perf_counter() - start
    ray.shutdown()
    if study.num_errors:
        raise RuntimeError(f"{study.num_errors} trial(s) failed")
    phases, inside = study.phases, study.phases_inside
    trials = trial_runs(spec.tracking.uri, spec.name)
    pretrainings = pretraining_runs(spec.tracking.uri, spec.name)
    search = stage_figures([t for t in trials if t["stage"] == "trial"], slots,
                           phases["search"])
    replicates = stage_figures([t for t in trials if t["stage"] == "replicate"], slots,
                               phases.get("replicates", 0.0))
    pretrain_slots = len(pretrainings)  # side by side, one worker of one CPU each
    optimizer = sum(p["optimizer_seconds"] for p in pretrainings)
    useful = search["useful"] + replicates["useful"] + optimizer
    total = wall * slots
    result.details.update({"phases": phases, "phases_inside": inside, "trials": trials,
                           "pretrainings": pretrainings, "wall_seconds": wall,
                           "trial_slots": slots, "messages": messages,
                           "load_average_end": os.getloadavg()})

    shortest_trial = min(t["epoch_seconds"] + t["test_seconds"] for t in trials)
    shortest_pretraining = min(p["optimizer_seconds"] for p in pretrainings)
    long_enough = min(shortest_trial, shortest_pretraining) >= MIN_COMPUTE_SECONDS
    result.note(
        f"shortest compute: trial {shortest_trial:.1f} s, pretraining "
        f"{shortest_pretraining:.1f} s ({'both' if long_enough else 'NOT both'} >= "
        f"{MIN_COMPUTE_SECONDS:.0f} s, as the target asks)")

    result.add(Row(
        "whole study", "useful compute / (wall x trial slots)", useful / total,
        f"{useful:.0f} s of {wall:.0f} s x {slots:g} slots ({len(trials)} trial runs, "
        f"{len(pretrainings)} pretrainings)", f">= {TARGET}", useful / total >= TARGET))
    phase = phases["pretraining"]
    result.add(Row(
        "pretraining phase", "optimizer seconds / (phase wall x pretraining slots)",
        optimizer / (phase * pretrain_slots),
        f"{optimizer:.0f} s of {phase:.0f} s x {pretrain_slots} slots; runs "
        + ", ".join(f"{p['optimizer_seconds']:.0f} s of steps in {p['run_seconds']:.0f} s"
                    for p in pretrainings),
        f">= {TARGET}", optimizer / (phase * pretrain_slots) >= TARGET))
    for name, stage in (("search phase", search), ("replicate phase", replicates)):
        if stage["wall"]:
            result.add(Row(name, "useful compute / (phase wall x trial slots)",
                           stage["useful"] / (stage["wall"] * slots),
                           f"{stage['useful']:.0f} s of {stage['wall']:.0f} s x {slots:g}"))

    # Where the rest of the study's slot-seconds went.
    losses = {
        "prepare (tokenize, shard, open the sweep)": phases["prepare"] * slots,
        "Ray start": phases["ray_start"] * slots,
        "provenance records": phases["provenance"] * slots,
        "pretraining: corpus, Ray Train start and finish (run wall - worker wall)":
            sum(p["run_seconds"] - p["worker_seconds"] - p["checkpoint_seconds"]
                for p in pretrainings),
        "pretraining: worker set-up (worker wall - steps - data wait)":
            sum(p["worker_seconds"] - p["optimizer_seconds"] - p["data_wait_seconds"]
                for p in pretrainings),
        "pretraining: waiting for the corpus's batches":
            sum(p["data_wait_seconds"] for p in pretrainings),
        "pretraining: checkpoints": sum(p["checkpoint_seconds"] for p in pretrainings),
        "pretraining: slots idle beside the runs":
            phase * slots - sum(p["run_seconds"] for p in pretrainings),
        "splits into the object store": phases["trial_inputs"] * slots,
        "trial set-up (data, model; inside trials)": search["setup"] + replicates["setup"],
        "trial checkpoints": search["checkpoints"] + replicates["checkpoints"],
        "search: slots idle (hand-off, worker start, tail)": search["idle"],
        "replicates: slots idle (stage start, hand-off, tail)": replicates["idle"],
        "close (runs, suggestions, final report)": phases.get("close", 0.0) * slots,
    }
    for case, seconds in losses.items():
        result.add(Row(f"lost: {case}", "slot-seconds / study slot-seconds", seconds / total,
                       f"{seconds:.1f} of {total:.0f} slot-seconds"))
    writes = inside.get("mlflow_writes", 0.0)
    result.add(Row("inside the idle: MLflow writes on the driver",
                   "driver seconds / study wall", writes / wall, f"{writes:.1f} of {wall:.0f} s"))
    if replicates["wall"]:
        # The replicate stage's start: from the search's end to the first replicate's run.
        search_end = started_at + sum(
            seconds for name, seconds in phases.items() if name in SEARCH_AND_BEFORE)
        gap = replicates["first_start"] - search_end
        result.add(Row("replicate stage start", "seconds / study wall", gap / wall,
                       f"{gap:.1f} s from the search's end to the first replicate's run"))


if __name__ == "__main__":
    run_benchmark("study_efficiency", __doc__.splitlines()[0], add_arguments, measure)
