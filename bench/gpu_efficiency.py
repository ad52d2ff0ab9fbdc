"""GPU efficiency: MFU of a 117M-parameter trial, 4 packed trials against 1, checkpoint I/O.

Runs only where ``torch.cuda.is_available()``; elsewhere it records "skipped: no GPU".
``--device cpu`` runs the same code on the CPU: it proves the code path, its numbers are no
GPU figures. Every case trains with ablate's own training step (``ablate.training.train_step``:
bf16 autocast where the GPU has native bf16, else fp16 with a loss scaler, float32 on CPU;
AdamW, gradient clipping; the batch cut from a split resident on the device) on batches of
``--batch-size`` rows x ``--tokens`` tokens cut from the GUE ``--task`` train split (or, where
no GUE folder is found, random ACGT of that task's length): each tokenizer's ids of consecutive
sequences, run together and cut into rows of ``--tokens`` ids with [CLS] and [SEP], so no row
is padded. FLOPs are counted by ``torch.utils.flop_counter`` on one forward and backward
(``ablate.training.count_step_flops``); MFU is achieved FLOP/s over the device's peak
(``ablate.cost.current_device``: on GPUs ``ablate.cost.GPU_PEAK_FLOPS``, the dense bf16
datasheet peak, fp16 where the part has no bf16; on CPU a matmul timed on the threads used).
Each case runs ``--warmup`` untimed steps, then ``--steps`` timed ones between CUDA syncs.

1. ``dnabert2_mfu``: MFU of ablate's ``transformer`` ``dnabert2-base`` (``--mfu-preset``), one
   trial, on DNABERT-2's BPE tokens; ``--compile`` adds the same under ``torch.compile``.
2. ``packing``: ``--packed`` (4) ``convnova`` ``nt`` trials (``--packed-preset``, char tokens)
   at once on the GPU, each in its own process as Ray Tune packs trials that ask for
   ``resources: {gpu: 0.25}``, built and warmed up, then started together behind a barrier;
   against the same worker run alone. Throughput is all the rows trained over the span from
   the first start to the last finish (the ratio's target: >= 3).
3. ``dnabert2_remote_mfu``: the real DNABERT-2 model code from ``--dnabert2-dir``
   (``bert_layers.py``, random weights, through ``ablate.models.external``, which routes it
   off its bundled Triton flash-attention kernel onto its PyTorch attention path) in the same
   step on the same tokens; its MFU beside ablate's own ``dnabert2-base``.
4. ``checkpoint``: the per-epoch checkpoint of that 117M-parameter trial (the real DNABERT-2;
   ablate's ``dnabert2-base`` where no folder is found), written as ``train_trial`` writes it:
   model, AdamW state, schedule, progress and RNG states ``torch.save``-d into a temporary
   folder, then copied into the trial's storage folder (what Tune's report does with local
   storage) and the temporary folder removed; median of ``--checkpoint-repeats``. The epoch is
   ceil(train rows of ``--task`` / batch) steps (375 for EMP/H3 at 32) at the step time of case
   3 (dev evaluation left out, so the fraction errs high). Target: <= 0.05 of an epoch.

Needs only torch, transformers (with what it installs: tokenizers, numpy, ...) and ablate's
source on ``PYTHONPATH``: no Ray, MLflow, Optuna, pyarrow or einops. Where einops is missing,
DNABERT-2's code gets ``fallback_einops``, the few ``rearrange``/``repeat`` patterns it uses.

    PYTHONPATH=. python bench/gpu_efficiency.py [--compile] [--json out.json]
    PYTHONPATH=. python bench/gpu_efficiency.py --device cpu --batch-size 4 --tokens 64 \\
        --warmup 1 --steps 2 --packed-steps 4 --checkpoint-repeats 1
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

from benchlib import PROJECT, Result, Row, gue_dir, run_benchmark

DNABERT2_DIR = PROJECT.parent / "shared" / "data" / "DNABERT-2-117M"
PACKING_TARGET = 3.0
CHECKPOINT_TARGET = 0.05
# What a bare GPU machine lacks; the JSON says which of these (and of the packages below them)
# the run imported.
HEAVY = ("ray", "mlflow", "optuna", "pyarrow", "einops")
WATCHED = HEAVY + ("pandas", "scipy", "sklearn", "matplotlib", "pydantic", "yaml", "rich")
CASES = ("dnabert2_mfu", "packing", "dnabert2_remote_mfu", "checkpoint")
TINY_DNABERT2 = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                 "intermediate_size": 64}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="cuda (default; skipped where there is none) or cpu, which only "
                             "proves the code path")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=128, help="tokens per row")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before each case")
    parser.add_argument("--steps", type=int, default=30, help="timed steps of cases 1 and 3")
    parser.add_argument("--compile", action="store_true",
                        help="also time case 1 and 3 under torch.compile")
    parser.add_argument("--mfu-preset", default="dnabert2-base", help="transformer preset")
    parser.add_argument("--packed-preset", default="nt", help="convnova preset")
    parser.add_argument("--packed", type=int, default=4, help="trials sharing the device")
    parser.add_argument("--packed-steps", type=int, default=200,
                        help="timed steps of each packed trial (its steps take milliseconds)")
    parser.add_argument("--dnabert2-dir", type=Path, default=DNABERT2_DIR,
                        help="DNABERT-2 model folder (config.json, bert_layers.py, ...)")
    parser.add_argument("--task", default="EMP/H3",
                        help="GUE task whose train split gives the rows and the epoch's size")
    parser.add_argument("--checkpoint-repeats", type=int, default=3)
    parser.add_argument("--tiny", action="store_true",
                        help="smoke-test sizes: 'tiny' presets and a shrunken DNABERT-2 config")


# --- einops, where it is not installed -----------------------------------------------------


def _groups(side: str) -> list[list[str]]:
    """'b s (t h d)' -> [['b'], ['s'], ['t', 'h', 'd']]; '...' stands alone as ['...'], and
    inside a group as '(...)'."""
    groups: list[list[str]] = []
    current: list[str] | None = None
    for token in re.findall(r"\(|\)|\.\.\.|\w+", side):
        if token == "(":
            current = []
        elif token == ")":
            groups.append(current or [])
            current = None
        elif current is not None:
            current.append("(...)" if token == "..." else token)
        else:
            groups.append([token])
    return groups


def _einops(tensor, pattern: str, sizes: dict[str, int], repeat: bool):
    left, right = (_groups(side) for side in pattern.split("->"))
    if ["..."] in left:  # the dims it stands for, each named
        names = [f"...{i}" for i in range(tensor.ndim - (len(left) - 1))]

        def expand(groups: list[list[str]]) -> list[list[str]]:
            alone = [[[n] for n in names] if g == ["..."] else [g] for g in groups]
            return [[n for name in g for n in (names if name == "(...)" else [name])]
                    for gs in alone for g in gs]

        left, right = expand(left), expand(right)
    if len(left) != tensor.ndim:
        raise ValueError(f"pattern {pattern!r} does not fit a tensor of {tensor.ndim} dims")
    size = dict(sizes)
    for group, dim in zip(left, tensor.shape, strict=True):
        unknown = [name for name in group if name not in size]
        known = math.prod(size[name] for name in group if name in size)
        if len(unknown) > 1:
            raise ValueError(f"pattern {pattern!r}: cannot infer {unknown}")
        if unknown:
            size[unknown[0]] = dim // known
    atoms = [name for group in left for name in group]
    out = tensor.reshape([size[name] for name in atoms])
    wanted = [name for group in right for name in group]
    kept = [name for name in wanted if name in atoms]
    if not repeat and len(kept) != len(atoms):
        raise ValueError(f"pattern {pattern!r}: rearrange cannot add or drop axes")
    out = out.permute([atoms.index(name) for name in kept])
    if repeat:
        for position, name in enumerate(wanted):
            if name not in atoms:
                out = out.unsqueeze(position)
        out = out.expand([size[name] for name in wanted])
    return out.reshape([math.prod(size[name] for name in group) for group in right])


def fallback_einops() -> types.ModuleType:
    """An ``einops`` with ``rearrange`` and ``repeat`` for patterns of named axes, groups and
    ``...`` (reshape, permute, expand): what DNABERT-2's ``bert_layers.py`` and
    ``bert_padding.py`` use; nothing else of einops."""
    module = types.ModuleType("einops")
    module.__doc__ = fallback_einops.__doc__
    module.__version__ = "0+ablate-bench-fallback"
    module.rearrange = lambda tensor, pattern, **sizes: _einops(tensor, pattern, sizes, False)
    module.repeat = lambda tensor, pattern, **sizes: _einops(tensor, pattern, sizes, True)
    return module


def ensure_einops() -> str:
    """'installed' where einops imports, else 'fallback' once ``fallback_einops`` is in
    ``sys.modules`` (where transformers' check of remote code's imports finds it too)."""
    try:
        import einops
    except ImportError:
        einops = sys.modules["einops"] = fallback_einops()
    return "fallback" if "fallback" in einops.__version__ else "installed"


# --- data ----------------------------------------------------------------------------------


def source_rows(task: str) -> tuple[list[str], list[int], str]:
    """The task's sequences and labels (its train split, else dev or test where a copy lacks
    train), and where they come from; random ACGT of the task's length where there is none."""
    import numpy as np

    from ablate.data.gue import get_dataset, read_split
    from ablate.errors import AblateError

    try:
        folder = gue_dir()
    except FileNotFoundError:
        folder = None
    for name in ("train", "dev", "test") if folder is not None else ():
        try:
            split = read_split(folder, task, name)
        except AblateError:
            continue
        return list(split.sequences[:4000]), [int(x) for x in split.labels[:4000]], \
            f"GUE {task} {name} split"
    length = get_dataset(task).length_bp
    rng = np.random.default_rng(0)
    bases = np.array(list("ACGT"))
    sequences = ["".join(rng.choice(bases, length)) for _ in range(2000)]
    return sequences, [int(x) for x in rng.integers(0, 2, 2000)], \
        f"random ACGT of {task}'s {length} bp (no GUE folder found)"


def token_split(tokenizer, sequences: list[str], labels: list[int], tokens: int, rows: int):
    """``rows`` rows of exactly ``tokens`` ids ([CLS], the ids of consecutive sequences run
    together, [SEP]) as ``SplitTensors``; a row's label is that of the sequence it starts in."""
    import numpy as np

    from ablate.shards import SplitArrays
    from ablate.tokenization import special_ids
    from ablate.training import SplitTensors

    specials = special_ids(tokenizer)
    body = tokens - 2
    need, chunks, owners, have, start = rows * body, [], [], 0, 0
    while have < need:  # round the sequences again if they run out
        picked = [(start + k) % len(sequences) for k in range(256)]
        encoded = tokenizer.encode_batch_fast([sequences[i] for i in picked],
                                              add_special_tokens=False)
        for index, encoding in zip(picked, encoded, strict=True):
            ids = np.asarray(encoding.ids, dtype=np.int32)
            chunks.append(ids)
            owners.append(np.full(len(ids), labels[index], np.int64))
            have += len(ids)
        start += len(picked)
    flat, owner = np.concatenate(chunks)[:need], np.concatenate(owners)[:need]
    ids = np.concatenate([np.full((rows, 1), specials.cls, np.int32), flat.reshape(rows, body),
                          np.full((rows, 1), specials.sep, np.int32)], axis=1)
    arrays = SplitArrays(ids, np.full(rows, tokens, np.int32), owner[::body][:rows].copy())
    return SplitTensors.from_arrays(arrays)


def transformer_tokenizer(folder: Path):
    """DNABERT-2's BPE tokenizer: the model folder's, else the one beside the GUE folder."""
    from benchlib import dnabert2_tokenizer

    from ablate.tokenization import load_tokenizer

    candidates = [folder / "tokenizer.json"]
    try:
        candidates.append(dnabert2_tokenizer())
    except FileNotFoundError:
        pass
    for path in candidates:
        if path.is_file():
            return load_tokenizer(path), f"DNABERT-2 BPE ({path})"
    from ablate.tokenization import char_tokenizer

    return char_tokenizer(), "char (no DNABERT-2 tokenizer.json found)"


# --- models and steps ----------------------------------------------------------------------


def build(arch: str, preset: str, tokenizer, tokens: int):
    import torch

    from ablate.models.registry import build_classifier
    from ablate.tokenization import complement_ids, special_ids

    torch.manual_seed(0)
    return build_classifier(arch, preset=preset, vocab_size=tokenizer.get_vocab_size(),
                            num_classes=2, max_len=tokens, pad_id=special_ids(tokenizer).pad,
                            complement_ids=complement_ids(tokenizer))


def build_remote(folder: Path, tiny: bool, scratch: Path):
    """The real DNABERT-2 code's encoder at random init, with ablate's classification head."""
    import json

    import torch

    from ablate.models.external import build_external_classifier

    if tiny:  # a copy with a shrunken config.json: the same code, smoke-test sizes
        copy = scratch / "DNABERT-2-tiny"
        shutil.copytree(folder, copy, copy_function=shutil.copyfile, dirs_exist_ok=True)
        config = json.loads((copy / "config.json").read_text())
        config.update(TINY_DNABERT2)
        (copy / "config.json").write_text(json.dumps(config, indent=2))
        folder = copy
    torch.manual_seed(0)
    return build_external_classifier(folder, num_classes=2, dropout=0.1,
                                     trust_remote_code=True, random_init=True)


def parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_steps(model, optimizer, split, batch_size: int, device, steps: int, first: int = 0):
    """``steps`` training steps on consecutive batches; (start, end) perf_counter seconds."""
    from ablate.training import train_step

    rows = len(split)
    sync(device)
    start = time.perf_counter()
    for step in range(first, first + steps):
        row = (step * batch_size) % (rows - batch_size + 1)
        train_step(model, optimizer, split.batch(slice(row, row + batch_size), device), device)
    sync(device)
    return start, time.perf_counter()


def single_trial(model, split, args, device, label: str, peak: float, compiled: bool = False):
    """Count one step's FLOPs, warm up, time ``--steps`` steps: the case's figures."""
    import torch

    from ablate.training import count_step_flops

    model = model.to(device).train()
    split = split.resident(device)
    batch = split.batch(slice(0, args.batch_size), device)
    flops = count_step_flops(model, batch, backward=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    stepped = torch.compile(model) if compiled else model
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warm = time.perf_counter()
    run_steps(stepped, optimizer, split, args.batch_size, device, args.warmup)
    warm = time.perf_counter() - warm
    start, end = run_steps(stepped, optimizer, split, args.batch_size, device, args.steps,
                           first=args.warmup)
    step_s = (end - start) / args.steps
    figures = {
        "model": label, "parameters": parameters(model), "compiled": compiled,
        "batch": [args.batch_size, args.tokens], "flops_per_step": flops,
        "step_seconds": step_s, "samples_per_s": args.batch_size / step_s,
        "achieved_flops": flops / step_s, "peak_flops": peak,
        "mfu": flops / step_s / peak if peak == peak else None,
        "warmup_seconds": warm, "timed_steps": args.steps, "warmup_steps": args.warmup,
    }
    if device.type == "cuda":
        figures["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    return figures, optimizer


def mfu_row(case: str, figures: dict, peak_source: str, beside: str = "") -> Row:
    measured = (f"{figures['achieved_flops']:.3g} of {figures['peak_flops']:.3g} FLOP/s "
                f"({peak_source}); {figures['flops_per_step']:.3g} FLOP/step, "
                f"{figures['step_seconds'] * 1e3:.1f} ms/step, "
                f"{figures['samples_per_s']:,.1f} samples/s, "
                f"{figures['parameters'] / 1e6:.1f}M parameters{beside}")
    return Row(case, "MFU: achieved / peak FLOP/s", figures["mfu"], measured,
               target="reported (no pass mark)")


# --- packed trials -------------------------------------------------------------------------


def packed_worker(args: tuple, barrier, results) -> None:
    """One packed trial: build, warm up, wait for the others, then time its steps."""
    import torch

    from ablate.tokenization import char_tokenizer

    arch, preset, tokens, split, batch_size, device, steps, warmup = args
    torch.set_num_threads(1)  # a trial that reserved one CPU
    device = torch.device(device)
    model = build(arch, preset, char_tokenizer(), tokens).to(device).train()
    split = split.resident(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    run_steps(model, optimizer, split, batch_size, device, warmup)
    barrier.wait(timeout=600)
    start, end = run_steps(model, optimizer, split, batch_size, device, steps, first=warmup)
    results.put((os.getpid(), start, end, steps * batch_size))


def packed_run(args: tuple, count: int) -> dict:
    """``count`` trials training at once, each in its own process (spawned: CUDA cannot be
    used in forked children). Rows trained by all over the span from the first start to the
    last end (perf_counter is the system's monotonic clock, shared by the processes)."""
    import queue

    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    barrier, results = context.Barrier(count), context.Queue()
    workers = [context.Process(target=packed_worker, args=(args, barrier, results))
               for _ in range(count)]
    for worker in workers:
        worker.start()
    done: list[tuple] = []
    deadline = time.monotonic() + 900
    try:
        while len(done) < count:
            try:
                done.append(results.get(timeout=1))
            except queue.Empty:
                failed = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
                if failed or time.monotonic() > deadline:
                    raise RuntimeError(f"packed trials failed (exit codes {failed}) or ran past "
                                       "15 minutes") from None
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.terminate()
                worker.join()
    first, last = min(d[1] for d in done), max(d[2] for d in done)
    rows = sum(d[3] for d in done)
    return {"trials": count, "rows": rows, "span_seconds": last - first,
            "samples_per_s": rows / (last - first),
            "per_trial_samples_per_s": [d[3] / (d[2] - d[1]) for d in done],
            "start_skew_seconds": max(d[1] for d in done) - first}


# --- checkpoint I/O ------------------------------------------------------------------------


def checkpoint_seconds(model, optimizer, device, storage: Path, repeats: int) -> dict:
    """Wall seconds of one per-epoch checkpoint as ``train_trial`` writes it (see the module
    docstring), median of ``repeats``; its size."""
    import torch

    from ablate.training import rng_state

    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=0.0,
                                                  total_iters=1000)
    times, size = [], 0
    for number in range(repeats):
        sync(device)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "state": {"epoch": number + 1, "wall_seconds": 0.0},
                        "rng": rng_state(device)}, Path(folder) / "state.pt")
            size = (Path(folder) / "state.pt").stat().st_size
            shutil.copytree(folder, storage / f"checkpoint_{number:06d}")
        times.append(time.perf_counter() - start)
        shutil.rmtree(storage / f"checkpoint_{number:06d}")
    return {"seconds": statistics.median(times), "all_seconds": times, "bytes": size,
            "storage": str(storage)}


# --- the benchmark -------------------------------------------------------------------------


def measure(args: argparse.Namespace, result: Result) -> None:
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        result.status = "skipped: no GPU"
        print("  skipped: torch.cuda.is_available() is False on this machine", flush=True)
        return
    from ablate.cost import current_device
    from ablate.data.gue import get_dataset
    from ablate.tokenization import char_tokenizer
    from ablate.training import precision

    device = torch.device(args.device)
    if args.tiny:
        args.mfu_preset = args.packed_preset = "tiny"
    where = current_device(device=device)
    peak, peak_source = where.peak_flops, where.peak_source
    scratch = Path(tempfile.mkdtemp(prefix="gpu-eff-"))
    einops = ensure_einops()
    sequences, labels, data_source = source_rows(args.task)
    rows = args.batch_size * 16
    bpe, bpe_name = transformer_tokenizer(args.dnabert2_dir)
    bpe_split = token_split(bpe, sequences, labels, args.tokens, rows)
    chars = char_tokenizer()
    char_split = token_split(chars, sequences, labels, args.tokens, rows)
    steps_per_epoch = math.ceil(get_dataset(args.task).sizes[0] / args.batch_size)
    result.details.update(device=where.name, precision=precision(device), peak_flops=peak,
                          peak_source=peak_source, data=data_source, tokenizer=bpe_name,
                          einops=einops, tiny=args.tiny, torch=torch.__version__,
                          cases={})
    result.note(f"{where.name}, {precision(device)}; batches of {args.batch_size} x "
                f"{args.tokens} tokens from {data_source}; {args.warmup} warm-up + "
                f"{args.steps} timed steps ({args.packed_steps} per packed trial); peak "
                f"{peak:.3g} FLOP/s ({peak_source})")
    if device.type == "cpu":
        result.note("CPU run: proves the code path; these are no GPU figures, and the targets "
                    "are not judged")
    if args.tiny:
        result.note("--tiny: 'tiny' presets and a shrunken DNABERT-2 config (smoke test)")
    if einops == "fallback":
        result.note("einops not installed: DNABERT-2's code ran on fallback_einops")
    cases = result.details["cases"]
    judged = device.type == "cuda"

    # 1. ablate's dnabert2-base
    model = build("transformer", args.mfu_preset, bpe, args.tokens)
    label = f"ablate transformer {args.mfu_preset}"
    ours, optimizer = single_trial(model, bpe_split, args, device, label, peak)
    cases["dnabert2_mfu"] = ours
    result.add(mfu_row(f"{label}, 1 trial", ours, peak_source))
    if args.compile:
        compiled, _ = single_trial(model, bpe_split, args, device, label, peak, compiled=True)
        cases["dnabert2_mfu_compiled"] = compiled
        result.add(mfu_row(f"{label}, 1 trial, torch.compile", compiled, peak_source))
    checkpoint_model = model
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # 2. packed ConvNova trials
    packed_args = ("convnova", args.packed_preset, args.tokens, char_split,
                   args.batch_size, args.device, args.packed_steps, args.warmup)
    alone = packed_run(packed_args, 1)
    packed = packed_run(packed_args, args.packed)
    ratio = packed["samples_per_s"] / alone["samples_per_s"]
    cases["packing"] = {"model": f"convnova {args.packed_preset}", "alone": alone,
                        "packed": packed, "ratio": ratio, "target": PACKING_TARGET}
    result.add(Row(f"convnova {args.packed_preset}, {args.packed} trials packed in "
                   f"{args.packed} processes", f"samples/s, {args.packed} trials / 1 trial",
                   ratio, f"{packed['samples_per_s']:,.0f} vs {alone['samples_per_s']:,.0f} "
                   f"samples/s ({packed['rows']:,} rows in {packed['span_seconds']:.2f} s vs "
                   f"{alone['rows']:,} in {alone['span_seconds']:.2f} s)",
                   target=f">= {PACKING_TARGET:g}" + ("" if judged else " (GPU; not judged)"),
                   met=ratio >= PACKING_TARGET if judged else None))

    # 3. the real DNABERT-2 code
    remote = None
    if (args.dnabert2_dir / "config.json").is_file():
        model = build_remote(args.dnabert2_dir, args.tiny, scratch)
        remote, optimizer = single_trial(model, bpe_split, args, device,
                                         f"DNABERT-2 code ({args.dnabert2_dir.name}), random "
                                         "init", peak)
        cases["dnabert2_remote_mfu"] = remote
        beside = ("" if ours["mfu"] is None else
                  f"; ablate's {args.mfu_preset}: MFU {ours['mfu']:.3f}, "
                  f"{ours['step_seconds'] * 1e3:.1f} ms/step")
        shrunk = ", tiny config" if args.tiny else ""
        result.add(mfu_row(f"DNABERT-2 remote code ({args.dnabert2_dir.name}{shrunk}), 1 trial",
                           remote, peak_source, beside))
        if args.compile:
            try:
                compiled, _ = single_trial(model, bpe_split, args, device, remote["model"],
                                           peak, compiled=True)
                cases["dnabert2_remote_mfu_compiled"] = compiled
                result.add(mfu_row("DNABERT-2 remote code, 1 trial, torch.compile",
                                   compiled, peak_source))
            except Exception as exc:  # remote code need not survive the compiler
                result.note(f"DNABERT-2 code under torch.compile failed: {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}")
        checkpoint_model, step_s = model, remote["step_seconds"]
    else:
        cases["dnabert2_remote_mfu"] = {"skipped": f"no config.json in {args.dnabert2_dir}"}
        result.add(Row("DNABERT-2 remote code, 1 trial", "MFU: achieved / peak FLOP/s", None,
                       f"skipped: no model folder at {args.dnabert2_dir} (--dnabert2-dir)",
                       target="reported (no pass mark)"))
        step_s = ours["step_seconds"]

    # 4. checkpoint I/O against an epoch
    storage = scratch / "storage"
    storage.mkdir()
    saved = checkpoint_seconds(checkpoint_model, optimizer, device, storage,
                               args.checkpoint_repeats)
    epoch_s = steps_per_epoch * step_s
    fraction = saved["seconds"] / epoch_s
    params = parameters(checkpoint_model)
    cases["checkpoint"] = {**saved, "parameters": params, "steps_per_epoch": steps_per_epoch,
                           "step_seconds": step_s, "epoch_seconds": epoch_s,
                           "fraction": fraction, "target": CHECKPOINT_TARGET,
                           "model": (remote or ours)["model"]}
    result.add(Row(f"checkpoint of a {params / 1e6:.3g}M-parameter trial, per epoch",
                   "checkpoint s / epoch s", fraction,
                   f"{saved['seconds']:.2f} s for {saved['bytes'] / 1e9:.2f} GB (model + AdamW "
                   f"state, saved and copied to storage) vs {epoch_s:.1f} s = "
                   f"{steps_per_epoch} steps ({args.task} train / {args.batch_size}) x "
                   f"{step_s * 1e3:.1f} ms",
                   target=f"<= {CHECKPOINT_TARGET:g}" + ("" if judged else " (GPU; not judged)"),
                   met=fraction <= CHECKPOINT_TARGET if judged else None))
    shutil.rmtree(scratch, ignore_errors=True)
    result.details["imported"] = sorted(
        name for name in WATCHED if sys.modules.get(name) is not None
        and not (name == "einops" and einops == "fallback"))


if __name__ == "__main__":
    run_benchmark("gpu_efficiency", __doc__.splitlines()[0], add_arguments, measure)
