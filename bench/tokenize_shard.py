"""Tokenize and shard: sequences/s of ``ablate.shards.write_shards`` against raw ``tokenizers``.

For every GUE dataset with a train split in the folder, takes its train rows (all of them, or
the first ``--rows``), cut to the dataset's length in bp, and for each tokenizer (``char``,
``kmer:6`` and the DNABERT-2 BPE ``tokenizer.json`` loaded with
``ablate.tokenization.load_tokenizer``) times ``write_shards`` (tokenize, build Arrow columns,
write Parquet and the manifest, atomically) against one ``Tokenizer.encode_batch_fast`` call on
the same sequences. The two are timed in alternation, split by split, ``--repeats`` times; for
each split the fastest time of each is kept (the least disturbed by other work on the machine)
and the splits are summed. A further run times write_shards' own steps one by one, serially.
Target: write_shards at >= 0.8 of raw tokenizer speed.

    .venv/bin/python bench/tokenize_shard.py [--rows N] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from benchlib import Result, Row, dnabert2_tokenizer, gue_dir, run_benchmark

TARGET = 0.8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=None,
                        help="train rows per dataset (default: all)")
    parser.add_argument("--repeats", type=int, default=3)


def train_splits(rows: int | None) -> list[tuple[str, list[str], object, int, str]]:
    """(task, sequences cut to length, labels, length_bp, sha256) of every train split here."""
    from ablate.data.gue import REGISTRY, read_split, split_path

    found = []
    for key, dataset in REGISTRY.items():
        if not split_path(gue_dir(), key, "train").is_file():
            continue
        split = read_split(gue_dir(), key, "train")
        sequences = [s[: dataset.length_bp] for s in split.sequences[:rows]]
        found.append((key, sequences, split.labels[:rows], dataset.length_bp, split.sha256))
    if not found:
        raise FileNotFoundError(f"no train split under {gue_dir()}")
    return found


def tokenizers() -> dict:
    from ablate.tokenization import char_tokenizer, kmer_tokenizer, load_tokenizer

    chosen = {"char": char_tokenizer(), "kmer:6": kmer_tokenizer(6)}
    if dnabert2_tokenizer().is_file():
        chosen["bpe (DNABERT-2)"] = load_tokenizer(dnabert2_tokenizer())
    return chosen


def breakdown(tokenizer, splits) -> dict[str, float]:
    """Where write_shards' time goes: its steps, timed one by one, serially (once)."""
    import pyarrow.parquet as pq

    from ablate.shards import token_table

    parts = {"encode": 0.0, "ids_to_arrow": 0.0, "parquet": 0.0}
    folder = Path(tempfile.mkdtemp(prefix="parts-"))
    for n, (_, sequences, labels, _, _) in enumerate(splits):
        t0 = time.perf_counter()
        encodings = tokenizer.encode_batch_fast(sequences)
        t1 = time.perf_counter()
        table, _ = token_table(encodings, labels)
        t2 = time.perf_counter()
        pq.write_table(table, folder / f"part-{n}.parquet")
        t3 = time.perf_counter()
        parts["encode"] += t1 - t0
        parts["ids_to_arrow"] += t2 - t1
        parts["parquet"] += t3 - t2
    shutil.rmtree(folder, ignore_errors=True)
    return parts


def measure(args: argparse.Namespace, result: Result) -> None:
    from ablate.shards import write_shards
    from ablate.tokenization import tokenizer_hash

    splits = train_splits(args.rows)
    total = sum(len(s[1]) for s in splits)
    rows = "all rows" if args.rows is None else f"first {args.rows} rows"
    result.note(f"{len(splits)} GUE train splits, {rows} of each ({total} sequences); per "
                f"split, best of {args.repeats} alternating runs of each; the time breakdown "
                "is from one further, serial run")
    if not dnabert2_tokenizer().is_file():
        result.note(f"no DNABERT-2 tokenizer at {dnabert2_tokenizer()}: bpe not measured")
    for name, tokenizer in tokenizers().items():
        tok_hash = tokenizer_hash(tokenizer)
        tokenizer.encode_batch_fast(splits[0][1][:100])  # warm-up
        raw_times = {task: [] for task, *_ in splits}
        shard_times = {task: [] for task, *_ in splits}
        for repeat in range(args.repeats):
            root = Path(tempfile.mkdtemp(prefix="shards-"))
            for task, sequences, labels, length_bp, sha in splits:
                start = time.perf_counter()
                tokenizer.encode_batch_fast(sequences)
                raw_times[task].append(time.perf_counter() - start)
                start = time.perf_counter()
                write_shards(sequences, labels, tokenizer, root=root / task, source=task,
                             source_sha256=f"{sha}-{repeat}", tokenizer_hash=tok_hash,
                             length_bp=length_bp)
                shard_times[task].append(time.perf_counter() - start)
            shutil.rmtree(root, ignore_errors=True)
        raw = sum(min(times) for times in raw_times.values())
        shard = sum(min(times) for times in shard_times.values())
        parts = breakdown(tokenizer, splits)
        result.details[name] = {"raw_seconds": raw_times, "write_shards_seconds": shard_times,
                                "breakdown_seconds": parts, "sequences": total}
        ratio = raw / shard
        result.add(Row(
            name,
            "write_shards / raw encode_batch_fast seq/s",
            ratio,
            f"{total / shard:,.0f} vs {total / raw:,.0f} seq/s; serially: encode "
            f"{parts['encode']:.2f} s, ids to Arrow {parts['ids_to_arrow']:.2f} s, Parquet "
            f"{parts['parquet']:.2f} s",
            f">= {TARGET}",
            ratio >= TARGET,
        ))


if __name__ == "__main__":
    run_benchmark("tokenize_shard", __doc__.splitlines()[0], add_arguments, measure)
