"""What masked-LM pretraining reads: windows sampled from FASTA files, or GUE train splits.

Never a dev or test split. A corpus is tokenized once into shards keyed by its pretraining's
key (``ablate.pretrain.PretrainJob.key``), which hashes every file the corpus reads.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np

from ablate.errors import AblateError
from ablate.spec import CorpusSpec


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


def corpus_sequences(corpus: CorpusSpec, *, seed: int,
                     gue_dir: str | None) -> tuple[list[str], str, int]:
    """(sequences, source description, bp cut) of a corpus. Never reads dev or test."""
    if corpus.fasta:
        paths = [Path(p) for p in corpus.fasta]
        seqs = sample_fasta_windows(
            paths, window_bp=corpus.window_bp, windows=corpus.windows, seed=seed
        )
        return seqs, "fasta:" + ",".join(str(p) for p in paths), corpus.window_bp
    from ablate.data.gue import get_dataset, read_split

    if not corpus.gue_tasks or gue_dir is None:
        raise AblateError("a pretraining corpus needs gue_tasks with a GUE folder, or fasta")
    seqs: list[str] = []
    length = 0
    for task in corpus.gue_tasks:
        bp = get_dataset(task).length_bp
        length = max(length, bp)
        seqs += [s[:bp] for s in read_split(gue_dir, task, "train").sequences]
    random.Random(seed).shuffle(seqs)
    return seqs, "gue-train:" + ",".join(corpus.gue_tasks), length


def prepare_corpus_shards(corpus: CorpusSpec, *, seed: int, gue_dir: str | None,
                          tokenizer_path: str, key: str, work_dir: Path) -> Path:
    """Tokenize the corpus once into shards (labels unused), cached by the pretraining's key."""
    from tokenizers import Tokenizer

    from ablate.shards import write_shards
    from ablate.tokenization import tokenizer_hash

    tokenizer = Tokenizer.from_file(tokenizer_path)
    seqs, source, length_bp = corpus_sequences(corpus, seed=seed, gue_dir=gue_dir)
    return write_shards(
        seqs,
        np.zeros(len(seqs), dtype=np.int32),
        tokenizer,
        root=Path(work_dir) / "pretrain_shards",
        source=source,
        source_sha256=key,
        tokenizer_hash=tokenizer_hash(tokenizer),
        length_bp=length_bp,
        rows_per_shard=20_000,
    )
