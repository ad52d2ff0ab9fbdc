"""Data stall: the share of a training step spent waiting for the next batch.

A trial holds its whole split as in-memory tensors (``ablate.training.SplitTensors``) and
batches by indexing them with a shuffled order (``SplitTensors.batch``; on a GPU the split is
resident on the device). This runs the same inner loop as ``train_trial`` (batch, forward, loss,
backward, gradient clipping, AdamW, learning-rate schedule, loss summed on the device) on GUE
tf/0's train split, tokenized with ``char`` through ``ablate.shards.write_shards``, and times
the batch fetch apart from the whole step, for each architecture's tiny preset, with one thread
(as a 1-CPU trial). Target: under 2% of step time.

    .venv/bin/python bench/data_stall.py [--steps 40] [--warmup 5] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchlib import Result, Row, gue_dir, run_benchmark

from ablate.models.registry import PRETRAINABLE as ARCHITECTURES  # the k-mer floor aside

TASK = "tf/0"
TARGET = 0.02  # at most 2% of step time spent waiting for the batch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=40, help="timed steps per architecture")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--architectures", nargs="+", default=list(ARCHITECTURES))


def tokenized_train(root: Path):
    """tf/0's whole train split as a trial gets it: shards written, read, padded, tensors."""
    from ablate.data.gue import get_dataset, read_split
    from ablate.shards import ShardManifest, read_shard_set, write_shards
    from ablate.tokenization import PAD_ID, char_tokenizer, tokenizer_hash
    from ablate.training import SplitTensors

    tokenizer = char_tokenizer()
    split = read_split(gue_dir(), TASK, "train")
    folder = write_shards(split.sequences, split.labels, tokenizer, root=root,
                          source=str(split.path), source_sha256=split.sha256,
                          tokenizer_hash=tokenizer_hash(tokenizer),
                          length_bp=get_dataset(TASK).length_bp)
    manifest = ShardManifest.read(folder)
    return SplitTensors.from_arrays(read_shard_set(folder, PAD_ID)), tokenizer, manifest


def time_steps(model, train, batch_size: int, steps: int, warmup: int) -> tuple[float, float]:
    """Seconds spent fetching batches and seconds of whole steps, over ``steps`` timed steps."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    from ablate.training import pick_device, train_step

    device = pick_device()
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    total = steps + warmup
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.1 * total), total)
    train = train.resident(device)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    order = order.to(train.labels.device)
    fetch = whole = 0.0
    loss_sum = torch.zeros((), device=device)
    model.train()
    for step in range(total):
        start = time.perf_counter()
        idx = order[step * batch_size : (step + 1) * batch_size]
        batch = train.batch(idx, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        fetched = time.perf_counter()
        loss = train_step(model, optimizer, batch, device)
        scheduler.step()
        loss_sum += loss * len(idx)  # as the trial does: summed on the device
        if device.type == "cuda":
            torch.cuda.synchronize()  # the step's own time, not just its launch
        if step >= warmup:
            fetch += fetched - start
            whole += time.perf_counter() - start
    return fetch, whole


def measure(args: argparse.Namespace, result: Result) -> None:
    import tempfile

    import torch

    from ablate.models.registry import build_classifier
    from ablate.tokenization import PAD_ID, complement_ids

    torch.set_num_threads(1)
    train, tokenizer, manifest = tokenized_train(Path(tempfile.mkdtemp(prefix="stall-")))
    steps_available = len(train) // args.batch_size
    steps = min(args.steps, steps_available - args.warmup)
    result.note(f"{TASK} train ({len(train)} rows, char, {manifest.max_tokens} tokens wide); "
                f"{args.warmup} warm-up + {steps} timed steps of batch {args.batch_size} per "
                f"architecture (of {steps_available} per epoch), 1 thread, "
                f"device {'cuda' if torch.cuda.is_available() else 'cpu'}")
    for arch in args.architectures:
        torch.manual_seed(0)
        model = build_classifier(
            arch, preset="tiny", vocab_size=tokenizer.get_vocab_size(), num_classes=2,
            max_len=manifest.max_tokens, pad_id=PAD_ID, dropout=0.1,
            complement_ids=complement_ids(tokenizer),
        )
        fetch, whole = time_steps(model, train, args.batch_size, steps, args.warmup)
        result.details[arch] = {"fetch_seconds": fetch, "step_seconds": whole, "steps": steps}
        result.add(Row(
            f"{arch} tiny",
            "batch fetch / step time",
            fetch / whole,
            f"{1000 * fetch / steps:.2f} of {1000 * whole / steps:.1f} ms per step",
            f"< {TARGET}",
            fetch / whole < TARGET,
        ))


if __name__ == "__main__":
    run_benchmark("data_stall", __doc__.splitlines()[0], add_arguments, measure)
