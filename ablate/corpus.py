"""What masked-LM pretraining reads: windows sampled from FASTA files, or GUE train splits.

Never a dev or test split, and, given a :class:`~ablate.leakage.HeldOut` of the study's tasks,
none of their dev or test sequences either: GUE's tasks overlap (most ``prom_core_tata`` dev rows
are ``prom_core_all`` train rows), and genomes hold GUE's human sequences, so every corpus row or
window that equals, contains or lies inside a held-out sequence (either strand) is dropped, and
the :class:`~ablate.leakage.LeakReport` says how many and which tasks were exposed. A corpus is
tokenized once into shards keyed by its pretraining's key (``ablate.pretrain.PretrainJob.key``,
which hashes every file the corpus reads) and by the held-out set.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ablate.errors import AblateError
from ablate.spec import CorpusSpec

if TYPE_CHECKING:
    from ablate.leakage import HeldOut, LeakReport


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sample_fasta_windows(
    paths: list[Path], *, window_bp: int, windows: int, seed: int, max_tries: int = 50
) -> list[str]:
    """Sample ``windows`` windows of ``window_bp`` bases from FASTA files, skipping N runs.

    Records are chosen in proportion to their length; a window holding any N is redrawn (up to
    ``max_tries`` times per window), so assembly gaps and masked runs never enter the corpus.
    """
    import pyfaidx

    records = []
    for path in paths:
        if not Path(path).is_file():
            raise AblateError(f"{path}: FASTA file not found (corpus.fasta)")
        try:
            fasta = pyfaidx.Fasta(str(path), as_raw=True, sequence_always_upper=True)
        except Exception as exc:  # pyfaidx raises several types for malformed input
            raise AblateError(f"{path}: not a readable FASTA file ({exc})") from None
        records += [(fasta, name, len(fasta[name])) for name in fasta.keys()]
    records = [r for r in records if r[2] >= window_bp]
    if not records:
        raise AblateError(
            f"no FASTA record in {[str(p) for p in paths]} is at least {window_bp} bp long "
            "(lower corpus.window_bp)"
        )
    weights = np.array([r[2] - window_bp + 1 for r in records], dtype=float)
    rng = np.random.default_rng(seed)
    out: list[str] = []
    for _ in range(windows):
        for _try in range(max_tries):
            fasta, name, length = records[rng.choice(len(records), p=weights / weights.sum())]
            start = int(rng.integers(0, length - window_bp + 1))
            window = str(fasta[name][start : start + window_bp])
            if "N" not in window:
                out.append(window)
                break
    if len(out) < windows // 2:
        raise AblateError(
            f"only {len(out)} of {windows} FASTA windows of {window_bp} bp are free of N"
        )
    return out


def source_hashes(corpus: CorpusSpec, gue_dir: str | None) -> list[str]:
    """sha256 of every file a corpus reads (its FASTA files, or its tasks' train splits)."""
    if corpus.fasta:
        return [file_sha256(Path(p)) for p in corpus.fasta]
    if corpus.gue_tasks:
        from ablate.data.gue import split_path

        return [file_sha256(split_path(gue_dir, t, "train")) for t in corpus.gue_tasks]
    return []


@dataclass(frozen=True)
class Corpus:
    """The sequences a pretraining reads.

    Attributes:
        sequences: The corpus rows, shuffled (GUE) or in sampling order (FASTA).
        source: What they came from, e.g. ``gue-train:tf/0,tf/1``.
        length_bp: Bases each row is cut to.
        leaks: What the held-out filter removed; None when no held-out set was given.
    """

    sequences: list[str]
    source: str
    length_bp: int
    leaks: LeakReport | None = None


def corpus_sequences(corpus: CorpusSpec, *, seed: int, gue_dir: str | None,
                     held_out: HeldOut | None = None) -> Corpus:
    """The rows of a corpus, without those that overlap ``held_out``. Never reads dev or test.

    ``corpus.gue_tasks`` may be any list of tasks (all of a study's tasks, or ``[task]`` for a
    task pretrained on its own train split); the filter runs on the rows as cut to their task's
    length, before shuffling.
    """
    if corpus.fasta:
        paths = [Path(p) for p in corpus.fasta]
        seqs = sample_fasta_windows(
            paths, window_bp=corpus.window_bp, windows=corpus.windows, seed=seed
        )
        source, length = "fasta:" + ",".join(str(p) for p in paths), corpus.window_bp
        leaks = None
        if held_out is not None:
            seqs, leaks = held_out.filter(seqs)
            source += f";held-out={held_out.digest[:16]}"
        return Corpus(seqs, source, length, leaks)
    from ablate.data.gue import get_dataset, read_split

    if not corpus.gue_tasks or gue_dir is None:
        raise AblateError("a pretraining corpus needs gue_tasks with a GUE folder, or fasta")
    seqs: list[str] = []
    length = 0
    for task in corpus.gue_tasks:
        bp = get_dataset(task).length_bp
        length = max(length, bp)
        seqs += [s[:bp] for s in read_split(gue_dir, task, "train").sequences]
    source = "gue-train:" + ",".join(corpus.gue_tasks)
    leaks = None
    if held_out is not None:
        seqs, leaks = held_out.filter(seqs)
        source += f";held-out={held_out.digest[:16]}"
    random.Random(seed).shuffle(seqs)
    return Corpus(seqs, source, length, leaks)


@dataclass(frozen=True)
class CorpusShards:
    """A tokenized corpus: its shard folder and what the held-out filter removed (None when no
    held-out set was given), to log on the pretraining run (``LeakReport.as_metrics``)."""

    path: Path
    leaks: LeakReport | None


def shards_key(key: str, held_out: HeldOut | None) -> str:
    """The shard cache key of a pretraining's corpus: its key, and the held-out set if any."""
    if held_out is None:
        return key
    return hashlib.sha256(f"{key}:held-out:{held_out.digest}".encode()).hexdigest()[:16]


def prepare_corpus(corpus: CorpusSpec, *, seed: int, gue_dir: str | None,
                   tokenizer_path: str, key: str, work_dir: Path,
                   held_out: HeldOut | None = None) -> CorpusShards:
    """Filter the corpus against ``held_out`` and tokenize it once into shards (labels unused),
    cached by the pretraining's key and the held-out set."""
    from tokenizers import Tokenizer

    from ablate.shards import write_shards
    from ablate.tokenization import tokenizer_hash

    tokenizer = Tokenizer.from_file(tokenizer_path)
    data = corpus_sequences(corpus, seed=seed, gue_dir=gue_dir, held_out=held_out)
    path = write_shards(
        data.sequences,
        np.zeros(len(data.sequences), dtype=np.int32),
        tokenizer,
        root=Path(work_dir) / "pretrain_shards",
        source=data.source,
        source_sha256=shards_key(key, held_out),
        tokenizer_hash=tokenizer_hash(tokenizer),
        length_bp=data.length_bp,
        rows_per_shard=20_000,
    )
    return CorpusShards(path, data.leaks)


def prepare_corpus_shards(corpus: CorpusSpec, *, seed: int, gue_dir: str | None,
                          tokenizer_path: str, key: str, work_dir: Path,
                          held_out: HeldOut | None = None) -> Path:
    """The shard folder of :func:`prepare_corpus` (without its leak report)."""
    return prepare_corpus(corpus, seed=seed, gue_dir=gue_dir, tokenizer_path=tokenizer_path,
                          key=key, work_dir=work_dir, held_out=held_out).path
