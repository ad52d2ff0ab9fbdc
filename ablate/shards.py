"""Tokenize a split once into Parquet shards, then stream it as many times as trials need.

A shard set is a folder holding ``part-00000.parquet``, ``part-00001.parquet``, ... and a
``manifest.json`` (``ShardManifest``). The folder's name is a content hash of everything that
determines its bytes: the sha256 of the source rows as read (so a spreadsheet's re-save of the
same rows reuses them), the tokenizer's hash and the base-pair cut. An unchanged input is
therefore never tokenized twice, and a changed one never reuses stale shards.

Writes are atomic: shards and manifest are written into a temporary sibling folder that is
renamed into place only when complete, so a crash leaves no half-written shard set behind.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ablate.errors import AblateError

if TYPE_CHECKING:
    import pyarrow as pa
    from tokenizers import Tokenizer

    from ablate.tokenization import TokenizerChoice

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ShardManifest:
    """What a shard set holds and where it came from."""

    source: str
    source_sha256: str
    tokenizer_hash: str
    length_bp: int
    num_rows: int
    max_tokens: int
    files: tuple[str, ...]
    format_version: int = FORMAT_VERSION

    @staticmethod
    def read(folder: Path) -> ShardManifest:
        path = Path(folder) / MANIFEST
        if not path.is_file():
            raise AblateError(f"{folder}: no {MANIFEST}; not a shard set (re-run the study)")
        data = json.loads(path.read_text())
        data["files"] = tuple(data["files"])
        return ShardManifest(**data)

    def paths(self, folder: Path) -> list[str]:
        return [str(Path(folder) / name) for name in self.files]


def shard_key(source_sha256: str, tokenizer_hash: str, length_bp: int) -> str:
    """The cache key of a shard set: a hash of everything that determines its contents.

    ``source_sha256`` is the digest of the rows as read (``GUESplit.sha256``, see
    ``ablate.data.gue.rows_sha256``), not of the file's bytes: the same rows saved by a
    spreadsheet (byte-order mark, CRLF, quotes) key the same shard set.
    """
    text = f"v{FORMAT_VERSION}:{source_sha256}:{tokenizer_hash}:{length_bp}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


ENCODE_BATCH = 8192  # rows encoded per tokenizer call; the next call runs while one is written


def _encode_ahead(
    tokenizer: Tokenizer, sequences: list[str], ranges: list[tuple[int, int]], length_bp: int
) -> Iterator[tuple[int, int, list]]:
    """Encode ``sequences[a:b]`` for each range, one range ahead of the caller.

    ``tokenizers`` releases the GIL while it encodes, so the next range encodes on a background
    thread while the caller turns the current one into Arrow and writes it.
    """

    def encode(a: int, b: int) -> list:
        return tokenizer.encode_batch_fast([s[:length_bp] for s in sequences[a:b]])

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode") as pool:
        pending = pool.submit(encode, *ranges[0]) if ranges else None
        for number, (a, b) in enumerate(ranges):
            encodings = pending.result()
            if number + 1 < len(ranges):
                pending = pool.submit(encode, *ranges[number + 1])
            yield a, b, encodings


def token_table(encodings: list, labels: np.ndarray) -> tuple[pa.Table, int]:
    """Token ids as an Arrow list column (one flat buffer plus offsets) and the longest row."""
    import pyarrow as pa

    lists = [e.ids for e in encodings]
    lengths = np.fromiter(map(len, lists), dtype=np.int32, count=len(lists))
    offsets = np.zeros(len(lists) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int32, count=int(offsets[-1]))
    table = pa.table(
        {
            "input_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)),
            "label": pa.array(labels, type=pa.int32()),
        }
    )
    return table, int(lengths.max(initial=0))


def write_shards(
    sequences: list[str],
    labels: np.ndarray,
    tokenizer: Tokenizer,
    *,
    root: Path,
    source: str,
    source_sha256: str,
    tokenizer_hash: str,
    length_bp: int,
    rows_per_shard: int = 50_000,
) -> Path:
    """Tokenize ``sequences`` (cut to ``length_bp`` bases) into a shard set under ``root``.

    Returns the shard set's folder. If a shard set with the same key already exists it is
    returned as is, without tokenizing anything. Each shard file holds ``rows_per_shard`` rows,
    written as row groups of up to ``ENCODE_BATCH`` rows.
    """
    import pyarrow.parquet as pq

    folder = Path(root) / shard_key(source_sha256, tokenizer_hash, length_bp)
    if (folder / MANIFEST).is_file():
        return folder
    if len(sequences) != len(labels):
        raise ValueError("sequences and labels differ in length")
    labels = np.asarray(labels)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        total = len(sequences)
        ranges = [
            (a, min(a + ENCODE_BATCH, shard + rows_per_shard, total))
            for shard in range(0, total, rows_per_shard)
            for a in range(shard, min(shard + rows_per_shard, total), ENCODE_BATCH)
        ]
        files: list[str] = []
        writer = None
        max_tokens = 0
        try:
            for a, b, encodings in _encode_ahead(tokenizer, sequences, ranges, length_bp):
                table, longest = token_table(encodings, labels[a:b])
                max_tokens = max(max_tokens, longest)
                if a % rows_per_shard == 0:  # a range that starts a new shard file
                    if writer is not None:
                        writer.close()
                    files.append(f"part-{len(files):05d}.parquet")
                    writer = pq.ParquetWriter(staging / files[-1], table.schema)
                writer.write_table(table)
            if not files:  # an empty split still gets one (empty) shard file
                table, _ = token_table([], labels[:0])
                files.append("part-00000.parquet")
                pq.write_table(table, staging / files[-1])
        finally:
            if writer is not None:
                writer.close()
        manifest = ShardManifest(
            source=source,
            source_sha256=source_sha256,
            tokenizer_hash=tokenizer_hash,
            length_bp=length_bp,
            num_rows=total,
            max_tokens=max_tokens,
            files=tuple(files),
        )
        (staging / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2))
        try:
            os.rename(staging, folder)
        except OSError:
            # Another process finished the same shard set first; theirs is identical.
            if not (folder / MANIFEST).is_file():
                raise
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


@dataclass
class SplitArrays:
    """A whole tokenized split, padded to one width: what a trial trains or evaluates on."""

    input_ids: np.ndarray  # int32 [rows, width], padded with the pad id
    lengths: np.ndarray  # int32 [rows], real tokens per row
    labels: np.ndarray  # int64 [rows]

    def __len__(self) -> int:
        return len(self.labels)

    def attention_mask(self) -> np.ndarray:
        width = self.input_ids.shape[1]
        return (np.arange(width)[None, :] < self.lengths[:, None]).astype(np.int64)


def pad_token_lists(
    offsets: np.ndarray, values: np.ndarray, pad_id: int, width: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Turn a flattened list column (Arrow offsets + values) into padded ids and lengths."""
    lengths = np.diff(offsets).astype(np.int32)
    width = int(lengths.max(initial=1)) if width is None else width
    ids = np.full((len(lengths), width), pad_id, dtype=np.int32)
    mask = np.arange(width)[None, :] < lengths[:, None]
    ids[mask] = values[offsets[0] : offsets[-1]]
    return ids, lengths


def split_arrays(table: pa.Table, pad_id: int, width: int | None = None) -> SplitArrays:
    """A shard table (``input_ids`` list column, optional ``label``) as padded ``SplitArrays``:
    the one place a shard's rows become arrays (trials, pretraining and benchmarks use it)."""
    column = table.column("input_ids").combine_chunks()
    ids, lengths = pad_token_lists(
        column.offsets.to_numpy(), column.values.to_numpy(), pad_id, width
    )
    if "label" in table.column_names:
        labels = table.column("label").to_numpy().astype(np.int64)
    else:
        labels = np.zeros(len(lengths), dtype=np.int64)
    return SplitArrays(ids, lengths, labels)


def read_shard_sets(
    folders: list[str],
    pad_id: int,
    *,
    read_cpus: float = 1.0,
    storage: str | None = None,
    work_dir: Path | None = None,
) -> dict[str, SplitArrays]:
    """Stream shard sets through Ray Data in one pass and materialise each as ``SplitArrays``.

    GUE splits are small: reading every shard set of a study once (one Ray Data execution, not
    one per split or per trial) and sharing the arrays through Ray's object store is far cheaper
    than streaming Parquet in every trial (measured: 2-5 s per split per trial).

    With a ``storage`` apart from ``work_dir`` (S3, GCS, a shared path), the shard sets are
    copied there first and read from there, so Ray Data's tasks may run on any node
    (``ablate.storage``); otherwise they are read on the driver's node, where they were written.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import ray.data

    from ablate.storage import shard_source

    manifests = {folder: ShardManifest.read(Path(folder)) for folder in folders}
    sources = {
        folder: shard_source(Path(folder), manifest.files, storage, Path(work_dir or "."))
        for folder, manifest in manifests.items()
    }
    owner = {_path_key(path): folder for folder, source in sources.items() for path in source.paths}
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.execution_options.preserve_order = True  # same rows in the same order: reproducible
    paths = sorted(path for source in sources.values() for path in source.paths)
    dataset = ray.data.read_parquet(
        paths, include_paths=True, **read_placement(sources.values(), read_cpus)
    )
    pieces: dict[str, list] = {folder: [] for folder in folders}
    for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
        paths = batch.column("path").to_pylist()
        for path in sorted(set(paths)):
            rows = pc.equal(batch.column("path"), path)
            pieces[owner[_path_key(path)]].append(batch.filter(rows))
    result = {}
    for folder, manifest in manifests.items():
        table = pa.concat_tables(pieces[folder]) if pieces[folder] else None
        got = 0 if table is None else table.num_rows
        if got != manifest.num_rows:
            raise RuntimeError(f"{folder}: read {got} rows, manifest says {manifest.num_rows}")
        result[folder] = split_arrays(table, pad_id, manifest.max_tokens)
    return result


def read_placement(sources: Any, read_cpus: float) -> dict[str, Any]:
    """``read_parquet``'s placement arguments for shard sets read from ``sources``
    (``ablate.storage.ShardSource``): their file system, and the driver's node when the files
    are only on its disk."""
    import ray.util

    sources = list(sources)
    options: dict[str, Any] = {"num_cpus": read_cpus}
    if any(source.pinned for source in sources):
        ip = ray.util.get_node_ip_address()
        if read_cpus > 0 and _node_cpus(ip) == 0:
            # A read pinned there could never be scheduled, and no autoscaler adds a node
            # for it: refuse rather than wait forever.
            raise AblateError(
                f"the shards are only on this machine's disk, but its Ray node ({ip}) has no "
                "CPUs to read them with (a head started with --num-cpus=0). Give the study "
                "storage every node reads (--storage s3://..., gs://... or a shared folder)"
            )
        options["resources"] = {f"node:{ip}": 0.001}
    elif sources:
        options["filesystem"] = sources[0].filesystem
    return options


def _node_cpus(ip: str) -> float | None:
    """The CPUs Ray's node at ``ip`` has in all (None if no live node has that address)."""
    import ray

    for node in ray.nodes():
        if node.get("Alive") and node.get("NodeManagerAddress") == ip:
            return float(node.get("Resources", {}).get("CPU", 0.0))
    return None


def _path_key(path: str) -> str:
    """A shard file's path as it was given and as Ray Data reports it (without the leading
    slash of a local path), made comparable."""
    return path.lstrip("/")


def read_shard_set(folder: str | Path, pad_id: int) -> SplitArrays:
    """One shard set read straight from its Parquet files in this process (no Ray): for tools
    and benchmarks. A study reads its shard sets through Ray Data (`read_shard_sets`)."""
    import pyarrow.parquet as pq

    manifest = ShardManifest.read(Path(folder))
    table = pq.read_table(manifest.paths(Path(folder)), columns=["input_ids", "label"])
    return split_arrays(table, pad_id, manifest.max_tokens)


@dataclass(frozen=True)
class TaskInputs:
    """Everything a trial needs to read one task tokenized one way (plain types, picklable)."""

    task: str
    tokenizer: str
    tokenizer_path: str
    vocab_size: int
    num_classes: int
    length_bp: int
    token_limit: int
    splits: dict[str, str]  # split name -> shard-set folder
    # token id -> id of its base complement (ConvNova's complement stream), so a trial never
    # needs the tokenizer file
    complement_ids: tuple[int, ...] = ()
    # the tokenizer's own special ids (a checkpoint's tokenizer brings its own)
    pad_id: int = 3
    mask_id: int | None = 4


def resolve_tokenizer(
    choice: TokenizerChoice,
    *,
    gue_root: Path,
    tasks: list[str],
    work_dir: Path,
    bpe_vocab_size: int = 4096,
    progress: Callable[[str], None] | None = None,
) -> tuple[Tokenizer, Path]:
    """Build (or load from cache) the tokenizer an axis value names; returns it and its file.

    A trained ``bpe`` is fitted once per study on the train splits of all its tasks (never dev
    or test), cut to each task's bp length, so every cell and any pretraining that uses ``bpe``
    share one vocabulary. Train rows that equal, contain or lie inside a dev or test sequence
    of any of the tasks (or its reverse complement) are left out of its training (GUE's tasks
    overlap); what was removed is written beside it (``leakage.json``). It is cached under
    ``work_dir/tokenizers`` keyed by the train files' checksums, the held-out set and the
    vocabulary size.
    """
    from ablate.data.gue import get_dataset, read_split
    from ablate.leakage import held_out_of
    from ablate.tokenization import build_tokenizer, load_tokenizer, tokenizer_hash

    tok_root = Path(work_dir) / "tokenizers"
    if choice.kind == "bpe" and choice.path is None:
        trains = {task: read_split(gue_root, task, "train") for task in sorted(tasks)}
        held_out = held_out_of(gue_root, tasks)
        key = hashlib.sha256(
            (
                ":".join(f"{t}={split.sha256}" for t, split in trains.items())
                + f":held_out={held_out.digest}"
            ).encode()
        ).hexdigest()[:16]
        tok_file = tok_root / f"bpe{bpe_vocab_size}-{key}" / "tokenizer.json"
        if tok_file.is_file():
            return load_tokenizer(tok_file), tok_file
        sequences = [
            seq[: get_dataset(task).length_bp]
            for task, split in trains.items()
            for seq in split.sequences
        ]
        kept, leaks = held_out.filter(sequences)
        if progress is not None:
            progress(f"BPE training sequences: {leaks.summary()}")
        _atomic_write_text(
            tok_file.parent / "leakage.json",
            json.dumps(leaks.as_metrics(), indent=2, sort_keys=True),
        )
        tokenizer = build_tokenizer(choice, train_sequences=kept, bpe_vocab_size=bpe_vocab_size)
    else:
        tokenizer = build_tokenizer(choice)
        tok_file = tok_root / f"{choice.kind}-{tokenizer_hash(tokenizer)[:16]}" / "tokenizer.json"
        if tok_file.is_file():
            return tokenizer, tok_file
    _atomic_write_text(tok_file, tokenizer.to_str(pretty=True))
    return tokenizer, tok_file


def prepare_task_inputs(
    gue_root: Path,
    task: str,
    choice: TokenizerChoice,
    tokenizer: Tokenizer,
    tokenizer_path: Path,
    *,
    work_dir: Path,
    drop_train_duplicates: bool = False,
) -> TaskInputs:
    """Tokenize one task's splits with one tokenizer into cached shard sets.

    With ``drop_train_duplicates``, train rows whose exact sequence occurs in dev or test are
    left out (a leakage fix; the shard set's key records it).
    """
    from ablate.data.gue import SPLITS, get_dataset, read_split, require_splits, split_path
    from ablate.tokenization import complement_ids, special_ids, token_limit, tokenizer_hash

    dataset = get_dataset(task)
    require_splits(gue_root, task, ("train", "dev"))
    present = [s for s in SPLITS if split_path(gue_root, task, s).is_file()]
    tok_hash = tokenizer_hash(tokenizer)
    loaded = {split: read_split(gue_root, task, split) for split in present}
    if drop_train_duplicates:
        from ablate.data.gue import drop_sequences

        held_out = {seq for s in ("dev", "test") if s in loaded for seq in loaded[s].sequences}
        loaded["train"] = drop_sequences(loaded["train"], held_out)
    splits = {}
    for split, data in loaded.items():
        dedup = drop_train_duplicates and split == "train"
        folder = write_shards(
            data.sequences,
            data.labels,
            tokenizer,
            root=Path(work_dir) / "shards" / task / split,
            source=str(data.path) + (" (dev/test duplicates dropped)" if dedup else ""),
            source_sha256=data.sha256 + ("+dedup" if dedup else ""),
            tokenizer_hash=tok_hash,
            length_bp=dataset.length_bp,
        )
        splits[split] = str(folder)
    return TaskInputs(
        task=task,
        tokenizer=choice.value,
        tokenizer_path=str(tokenizer_path),
        vocab_size=tokenizer.get_vocab_size(),
        num_classes=dataset.num_classes,
        length_bp=dataset.length_bp,
        token_limit=token_limit(choice, dataset.length_bp),
        splits=splits,
        complement_ids=tuple(complement_ids(tokenizer)),
        pad_id=special_ids(tokenizer).pad,
        mask_id=special_ids(tokenizer).mask,
    )


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
