"""GPU efficiency: a trial's training step on the GPU against the CPU, and its MFU.

Only where ``torch.cuda.is_available()``; elsewhere it records "skipped: no GPU". For each
architecture it runs the training step of ``train_trial`` (bf16 autocast where supported,
AdamW, gradient clipping) on batches of GUE tf/0 (char tokens) on the GPU and, in the same run,
on the CPU with all its threads, and reports the speed-up. It also reports model FLOPs
utilisation: FLOPs counted by ``torch.utils.flop_counter`` (``ablate.training.count_step_flops``)
per second, over the GPU's datasheet peak from ``ablate.cost.gpu_peak`` (a datasheet figure,
not measured here).

    .venv/bin/python bench/gpu_efficiency.py [--presets transformer:small convnova:nt]
"""

from __future__ import annotations

import argparse
import time

from benchlib import Result, Row, gue_dir, run_benchmark

TASK = "tf/0"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--presets", nargs="+", default=["transformer:small", "convnova:nt"],
                        help="architecture:preset pairs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)


def step_rate(model, batches, device, steps: int, warmup: int) -> float:
    """Training samples per second of ``steps`` steps after ``warmup`` untimed ones."""
    import torch

    from ablate.training import GRAD_CLIP_NORM, autocast_context

    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    seen, start = 0, 0.0
    for step in range(warmup + steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, seen = time.perf_counter(), 0
        ids, mask, labels = (t.to(device, non_blocking=True) for t in batches[step % len(batches)])
        with autocast_context(device):
            logits = model(ids, mask)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP_NORM)
        optimizer.step()
        seen += len(labels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def measure(args: argparse.Namespace, result: Result) -> None:
    import torch

    if not torch.cuda.is_available():
        result.status = "skipped: no GPU"
        print("  skipped: torch.cuda.is_available() is False on this machine", flush=True)
        return
    from ablate.cost import gpu_peak
    from ablate.data.gue import get_dataset, read_split
    from ablate.models.registry import build_classifier
    from ablate.tokenization import PAD_ID, char_tokenizer, complement_ids
    from ablate.training import count_step_flops

    tokenizer = char_tokenizer()
    split = read_split(gue_dir(), TASK, "train")
    bp = get_dataset(TASK).length_bp
    rows = args.batch_size * 8
    encoded = tokenizer.encode_batch_fast([s[:bp] for s in split.sequences[:rows]])
    width = max(len(e.ids) for e in encoded)
    ids = torch.full((rows, width), PAD_ID, dtype=torch.long)
    for i, e in enumerate(encoded):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
    mask = (ids != PAD_ID).long()
    labels = torch.tensor(split.labels[:rows], dtype=torch.long)
    batches = [(ids[i : i + args.batch_size], mask[i : i + args.batch_size],
                labels[i : i + args.batch_size]) for i in range(0, rows, args.batch_size)]
    gpu = torch.device("cuda")
    name = torch.cuda.get_device_name(0)
    peak, source = gpu_peak(name)
    result.note(f"{name}; {TASK} char batches of {args.batch_size}, {args.warmup} warm-up + "
                f"{args.steps} timed steps; CPU with {torch.get_num_threads()} threads; "
                f"peak FLOP/s from {source}")
    for pair in args.presets:
        arch, preset = pair.split(":")

        def build(arch=arch, preset=preset):
            torch.manual_seed(0)
            return build_classifier(arch, preset=preset, vocab_size=tokenizer.get_vocab_size(),
                                    num_classes=2, max_len=width, pad_id=PAD_ID,
                                    complement_ids=complement_ids(tokenizer))

        model = build().to(gpu)
        flops_per_sample = count_step_flops(
            model, tuple(t.to(gpu) for t in batches[0]), backward=True
        ) / args.batch_size
        gpu_rate = step_rate(model, batches, gpu, args.steps, args.warmup)
        cpu_rate = step_rate(build(), batches, torch.device("cpu"), max(3, args.steps // 10), 1)
        mfu = flops_per_sample * gpu_rate / peak if peak == peak else None
        result.details[pair] = {"gpu_samples_per_s": gpu_rate, "cpu_samples_per_s": cpu_rate,
                                "flops_per_sample": flops_per_sample, "mfu": mfu}
        result.add(Row(f"{arch} {preset}", "GPU / CPU samples/s", gpu_rate / cpu_rate,
                       f"{gpu_rate:,.0f} vs {cpu_rate:,.0f} samples/s"))
        result.add(Row(f"{arch} {preset}", "MFU: achieved / datasheet peak FLOP/s", mfu,
                       f"{flops_per_sample * gpu_rate:.3g} vs {peak:.3g} FLOP/s"))


if __name__ == "__main__":
    run_benchmark("gpu_efficiency", __doc__.splitlines()[0], add_arguments, measure)
