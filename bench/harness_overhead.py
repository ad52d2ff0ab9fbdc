"""Harness overhead: training throughput inside an ablate trial against a bare PyTorch loop.

For each architecture, runs a real one-cell study (``ablate.study.run_study`` on a spec built
with ``ablate.spec.parse_study``) on a real GUE task, one trial, its hyperparameters pinned by a
search space whose ranges are single values, and reads the trial's ``train_samples_per_second``
for epochs >= 2 back from MLflow. Then it trains the same model (same config, data, batch size
and optimizer, one thread as a 1-CPU trial gets, an untimed dev evaluation after each epoch as
in the trial) in a bare loop over in-memory tensors, once before and once after the study, and
compares steady-state epochs (the first epoch is warm-up).

Also reports start-up: ``run_study``'s wall time minus the trial's own compute (its reported
``wall_seconds``: data set-up, model build and epochs), i.e. tokenizing, ``ray.init``, MLflow,
Ray Data reads, starting the trial's worker and Tune's bookkeeping.

    .venv/bin/python bench/harness_overhead.py [--task prom/prom_core_tata] [--epochs 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchlib import Result, Row, gue_dir, run_benchmark

ARCHITECTURES = ("convnova", "transformer")
TARGET = 0.95
BUSY_SHARE = 0.8  # below this share of a core, the bare loop was competing with other work
PINNED = {"learning_rate": 1e-3, "weight_decay": 0.01, "dropout": 0.1, "warmup_ratio": 0.1}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default="prom/prom_core_tata")
    parser.add_argument("--epochs", type=int, default=3, help="trial epochs (>= 2)")
    parser.add_argument("--bare-epochs", type=int, default=2,
                        help="bare-loop epochs per run (the first is warm-up); runs twice")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--architectures", nargs="+", default=list(ARCHITECTURES))


def write_pinned_spaces(folder: Path, architectures: list[str], batch_size: int) -> Path:
    """Search spaces whose every range is one value, so the trial's hyperparameters are known."""
    import yaml

    from ablate.spec import DEFAULT_SEARCH_SPACE_DIR, load_search_space

    folder.mkdir(parents=True, exist_ok=True)
    for arch in architectures:
        preset = load_search_space(DEFAULT_SEARCH_SPACE_DIR, arch).preset
        params = {name: {"type": "float", "low": value, "high": value}
                  for name, value in PINNED.items()}
        params["batch_size"] = {"type": "categorical", "choices": [batch_size]}
        doc = {"architecture": arch, "preset": preset, "params": params}
        (folder / f"{arch}.yaml").write_text(yaml.safe_dump(doc))
    return folder


def study_spec(root: Path, arch: str, task: str, epochs: int, spaces: Path):
    from ablate.spec import parse_study

    return parse_study(
        {
            "name": f"bench_harness_{arch}",
            "data": {"gue_dir": str(gue_dir()), "tasks": [task]},
            "axes": {"architecture": [arch], "pretraining": ["none"], "tokenizer": ["char"]},
            "budget": {"trials_per_cell": 1, "max_epochs": epochs, "concurrent_trials": 1,
                       "grace_epochs": epochs},
            "seed": 0,
            "tracking": {"uri": f"sqlite:///{root}/mlruns.db"},
            "search_space_dir": str(spaces),
            "work_dir": str(root / "work"),
        },
        source="harness_overhead",
        base_dir=root,
    )


def trial_throughput(spec) -> dict:
    """The trial's per-epoch samples/s (from MLflow's metric history), its compute and params."""
    from mlflow import MlflowClient

    from ablate.tracking.reader import runs
    from ablate.tracking.schema import (
        MetricName,
        Stage,
        Tag,
        metric_column,
        param_column,
        tag_column,
    )

    frame = runs(spec.tracking.uri, spec.name)
    trials = frame[frame[tag_column(Tag.STAGE)] == Stage.TRIAL]
    if len(trials) != 1:
        raise RuntimeError(f"expected 1 trial run, found {len(trials)}")
    trial = trials.iloc[0]
    history = MlflowClient(spec.tracking.uri).get_metric_history(
        trial["run_id"], "train_samples_per_second"
    )
    per_epoch = {m.step: m.value for m in history}
    return {
        "per_epoch": per_epoch,
        "wall_seconds": float(trial[metric_column(MetricName.WALL_SECONDS)]),
        "batch_size": int(trial[param_column("batch_size")]),
        "learning_rate": float(trial[param_column("learning_rate")]),
        "weight_decay": float(trial[param_column("weight_decay")]),
        "dropout": float(trial[param_column("dropout")]),
        "seed": int(trial[param_column("seed")]),
        "outcome": trial.get(tag_column(Tag.OUTCOME)),
    }


def bare_loop(
    plan, train, dev, hp: dict, epochs: int
) -> tuple[list[float], list[float]]:
    """Samples/s of each epoch of a plain PyTorch loop: the trial's math, none of its harness.

    Same model, AdamW, gradient clipping and shuffled in-memory batches as ``train_trial``, and
    an (untimed) dev evaluation after every epoch as the trial does; no learning-rate schedule,
    metrics logging, checkpoints or reporting. The evaluation matters to the comparison:
    measured here, training epochs that follow an evaluation pass run 10-30% faster, because
    its large batches raise glibc malloc's dynamic mmap threshold, after which training's
    tensors come from the heap instead of fresh mmap/munmap calls.

    Also returns the share of a core the loop got in each epoch (CPU time / wall time): well
    below 1 means other work on the machine was competing for the core.
    """
    import torch

    from ablate.training import GRAD_CLIP_NORM, build_model, evaluate
    from ablate.trial import TrialConfig

    torch.manual_seed(hp["seed"])
    model = build_model(plan, TrialConfig(plan.cell.name, {"dropout": hp["dropout"]}, hp["seed"]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=hp["learning_rate"],
                                  weight_decay=hp["weight_decay"])
    batch_size = hp["batch_size"]
    generator = torch.Generator().manual_seed(hp["seed"])
    rates, shares = [], []
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(train), generator=generator)
        start, cpu_start = time.perf_counter(), time.process_time()
        for first in range(0, len(train), batch_size):
            idx = order[first : first + batch_size]
            logits = model(train.input_ids[idx], train.attention_mask[idx])
            loss = torch.nn.functional.cross_entropy(logits, train.labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP_NORM)
            optimizer.step()
        wall = time.perf_counter() - start
        rates.append(len(train) / wall)
        shares.append((time.process_time() - cpu_start) / wall)
        evaluate(model, dev, torch.device("cpu"), batch_size=max(batch_size, 256))
    return rates, shares


def load_split(folder: str):
    """A shard set read straight from Parquet (no Ray) into the tensors a trial trains on."""
    from ablate.shards import read_shard_set
    from ablate.tokenization import PAD_ID
    from ablate.training import SplitTensors

    return SplitTensors.from_arrays(read_shard_set(folder, PAD_ID))


def measure(args: argparse.Namespace, result: Result) -> None:
    import os
    import tempfile

    import ray
    import torch

    from ablate.study import cell_plans, prepare_study, run_study

    if args.epochs < 2:
        raise ValueError("--epochs must be at least 2 (epoch 1 is warm-up)")
    torch.set_num_threads(1)  # a trial reserves 1 CPU; Ray sets its thread count from that
    result.note(f"task {args.task} (real GUE), char tokens, batch {args.batch_size}, "
                f"trial: {args.epochs} epochs (epochs >= 2 counted); bare loop: 2 runs of "
                f"{args.bare_epochs} epochs (first epoch of each is warm-up), 1 thread")
    root = Path(tempfile.mkdtemp(prefix="harness-"))
    spaces = write_pinned_spaces(root / "spaces", args.architectures, args.batch_size)
    for arch in args.architectures:
        folder = root / arch
        folder.mkdir()
        spec = study_spec(folder, arch, args.task, args.epochs, spaces)
        # The trial's own plan (as run_study builds it); prepare_study tokenizes here and
        # run_study then finds the shards cached, so the study below is charged no tokenizing.
        # The start-up figure therefore excludes tokenization; it is reported apart.
        tok_start = time.perf_counter()
        prepared = prepare_study(spec, None, progress=lambda _msg: None)
        tokenize_seconds = time.perf_counter() - tok_start
        plan = cell_plans(spec, prepared, sources={})[prepared.cells[0].name]
        train = load_split(plan.inputs.splits["train"])
        dev = load_split(plan.inputs.splits["dev"])
        hp = {"seed": 0, "batch_size": args.batch_size, **PINNED}
        before, before_share = bare_loop(plan, train, dev, hp, args.bare_epochs)

        start = time.perf_counter()
        study = run_study(spec, progress=lambda _msg: None)
        study_seconds = time.perf_counter() - start
        ray.shutdown()
        if study.num_errors:
            raise RuntimeError(f"{arch}: the trial failed (see Ray's output above)")
        trial = trial_throughput(spec)
        hp = {k: trial[k] for k in ("seed", "batch_size", "learning_rate", "weight_decay",
                                    "dropout")}
        after, after_share = bare_loop(plan, train, dev, hp, args.bare_epochs)

        steady = [v for step, v in sorted(trial["per_epoch"].items()) if step >= 2]
        bare = before[1:] + after[1:]
        trial_rate = sum(steady) / len(steady)
        bare_rate = sum(bare) / len(bare)
        startup = study_seconds - trial["wall_seconds"]
        result.details[arch] = {
            "train_rows": len(train),
            "trial_samples_per_s_by_epoch": trial["per_epoch"],
            "bare_samples_per_s_before": before,
            "bare_samples_per_s_after": after,
            "bare_core_share_before": before_share,
            "bare_core_share_after": after_share,
            "load_average_end": os.getloadavg(),
            "run_study_seconds": study_seconds,
            "trial_wall_seconds": trial["wall_seconds"],
            "tokenize_seconds_before_study": tokenize_seconds,
            "torch_threads_bare": torch.get_num_threads(),
            "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        }
        share = min(before_share[-1], after_share[-1])
        busy = (f"; BUSY machine: the bare loop got only {share:.2f} of a core, so the ratio "
                "mostly measures contention" if share < BUSY_SHARE else "")
        result.add(Row(
            f"{arch} tiny, {len(train)} rows",
            "trial / bare samples/s",
            trial_rate / bare_rate,
            f"{trial_rate:.0f} vs {bare_rate:.0f} samples/s (bare before/after the study: "
            f"{before[-1]:.0f}/{after[-1]:.0f}, core share {before_share[-1]:.2f}/"
            f"{after_share[-1]:.2f}){busy}",
            f">= {TARGET}",
            trial_rate / bare_rate >= TARGET,
        ))
        result.add(Row(
            f"{arch} start-up",
            "(run_study - trial compute) / run_study",
            startup / study_seconds,
            f"{startup:.1f} s of {study_seconds:.1f} s (trial compute {trial['wall_seconds']:.1f}"
            f" s; tokenizing beforehand {tokenize_seconds:.1f} s, not included)",
        ))


if __name__ == "__main__":
    run_benchmark("harness_overhead", __doc__.splitlines()[0], add_arguments, measure)
