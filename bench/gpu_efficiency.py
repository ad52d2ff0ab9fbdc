"""GPU efficiency: model FLOPs utilisation of one trial on a GPU, and of 4 trials packed on it.

Runs only where ``torch.cuda.is_available()``; elsewhere it records "skipped: no GPU". For
each architecture preset (by default the ``dnabert2-base`` transformer and the ``nt``
ConvNova), it runs ``train_trial``'s training step (bf16 autocast where the GPU supports it,
AdamW, gradient clipping, the split resident on the device) on batches of GUE tf/0 (char
tokens):

- one trial alone: samples/s and MFU, i.e. FLOPs counted by ``torch.utils.flop_counter``
  (``ablate.training.count_step_flops``) per second over the GPU's datasheet bf16 peak
  (``ablate.cost.gpu_peak``; a datasheet figure, not measured here);
- ``--packed`` trials (4 by default) at once on the same GPU, each in its own process as Ray
  places trials that ask for ``resources: {gpu: 0.25}``, started together behind a barrier:
  their summed samples/s over the single trial's.

``--device cpu`` runs the same code on the CPU (no MFU), to check the script where no GPU is.

    .venv/bin/python bench/gpu_efficiency.py [--presets transformer:dnabert2-base convnova:nt]
"""

from __future__ import annotations

import argparse
import time

from benchlib import Result, Row, gue_dir, run_benchmark

TASK = "tf/0"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--presets", nargs="+",
                        default=["transformer:dnabert2-base", "convnova:nt"],
                        help="architecture:preset pairs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--packed", type=int, default=4, help="trials sharing the GPU")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])


def build(arch: str, preset: str, vocab_size: int, width: int, complement: list[int] | None):
    import torch

    from ablate.models.registry import build_classifier
    from ablate.tokenization import PAD_ID

    torch.manual_seed(0)
    return build_classifier(arch, preset=preset, vocab_size=vocab_size, num_classes=2,
                            max_len=width, pad_id=PAD_ID, complement_ids=complement)


def step_rate(model, split, batch_size: int, device, steps: int, warmup: int) -> float:
    """Training samples per second over ``steps`` steps after ``warmup`` untimed ones."""
    import torch

    from ablate.training import train_step

    model = model.to(device).train()
    split = split.resident(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rows = len(split)
    seen, start = 0, 0.0
    for step in range(warmup + steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, seen = time.perf_counter(), 0
        first = (step * batch_size) % (rows - batch_size + 1)
        train_step(model, optimizer, split.batch(slice(first, first + batch_size), device),
                   device)
        seen += batch_size
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def packed_worker(args: tuple, barrier, rates) -> None:
    """One of the packed trials: build, warm up, wait for the others, then time its steps."""
    import torch

    arch, preset, vocab, width, complement, split, batch_size, device, steps, warmup = args
    torch.set_num_threads(1)
    model = build(arch, preset, vocab, width, complement)
    step_rate(model, split, batch_size, torch.device(device), 1, warmup)  # warm-up, untimed
    barrier.wait()
    rates.put(step_rate(model, split, batch_size, torch.device(device), steps, 0))


def packed_rate(args: tuple, count: int) -> float:
    """Summed samples/s of ``count`` trials training at once on the same device."""
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")  # CUDA cannot be used in forked children
    barrier, rates = context.Barrier(count), context.Queue()
    workers = [context.Process(target=packed_worker, args=(args, barrier, rates))
               for _ in range(count)]
    for worker in workers:
        worker.start()
    total = sum(rates.get(timeout=1800) for _ in workers)
    for worker in workers:
        worker.join()
    return total


def measure(args: argparse.Namespace, result: Result) -> None:
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        result.status = "skipped: no GPU"
        print("  skipped: torch.cuda.is_available() is False on this machine", flush=True)
        return
    from ablate.cost import gpu_peak
    from ablate.data.gue import get_dataset, read_split
    from ablate.shards import split_arrays, token_table
    from ablate.tokenization import PAD_ID, char_tokenizer, complement_ids
    from ablate.training import SplitTensors, count_step_flops

    tokenizer = char_tokenizer()
    source = read_split(gue_dir(), TASK, "train")
    bp = get_dataset(TASK).length_bp
    rows = args.batch_size * 16
    encoded = tokenizer.encode_batch_fast([s[:bp] for s in source.sequences[:rows]])
    table, _ = token_table(encoded, source.labels[:rows])
    arrays = split_arrays(table, PAD_ID)  # padded to the longest row
    split = SplitTensors.from_arrays(arrays)
    width = arrays.input_ids.shape[1]
    device = torch.device(args.device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(0)
        peak, peak_source = gpu_peak(name)
    else:
        name, peak, peak_source = "cpu", float("nan"), "none (no MFU on CPU)"
    result.note(f"{name}; {TASK} char batches of {args.batch_size}, {args.warmup} warm-up + "
                f"{args.steps} timed steps; peak FLOP/s from {peak_source}; {args.packed} "
                "packed trials in separate processes")
    vocab, complement = tokenizer.get_vocab_size(), complement_ids(tokenizer)
    for pair in args.presets:
        arch, preset = pair.split(":")
        model = build(arch, preset, vocab, width, complement).to(device)
        probe = split.resident(device).batch(slice(0, args.batch_size), device)
        flops_per_sample = count_step_flops(model, probe, backward=True) / args.batch_size
        single = step_rate(model, split, args.batch_size, device, args.steps, args.warmup)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        packed = packed_rate((arch, preset, vocab, width, complement, split, args.batch_size,
                              args.device, args.steps, args.warmup), args.packed)
        mfu = flops_per_sample * single / peak if peak == peak else None
        packed_mfu = flops_per_sample * packed / peak if peak == peak else None
        result.details[pair] = {"single_samples_per_s": single, "packed_samples_per_s": packed,
                                "flops_per_sample": flops_per_sample, "mfu": mfu,
                                "packed_mfu": packed_mfu}
        result.add(Row(f"{arch} {preset}, 1 trial", "MFU: achieved / datasheet peak FLOP/s",
                       mfu, f"{flops_per_sample * single:.3g} vs {peak:.3g} FLOP/s; "
                       f"{single:,.0f} samples/s"))
        result.add(Row(f"{arch} {preset}, {args.packed} trials packed",
                       f"summed samples/s, {args.packed} trials / 1 trial", packed / single,
                       f"{packed:,.0f} vs {single:,.0f} samples/s (MFU "
                       + ("-" if packed_mfu is None else f"{packed_mfu:.3f}") + ")"))


if __name__ == "__main__":
    run_benchmark("gpu_efficiency", __doc__.splitlines()[0], add_arguments, measure)
