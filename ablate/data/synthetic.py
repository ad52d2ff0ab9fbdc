"""Synthetic GUE-shaped data with a planted, learnable signal, for demos and tests.

:func:`write_synthetic_gue` writes the official GUE layout
``<out_dir>/<group>/<dataset>/{train,dev,test}.csv`` for any of the 28 registry datasets, with
each dataset's sequence length and number of classes and a fraction (``scale``) of its published
row counts. The data is random DNA, except that every class above 0 has its own motif:

- each dataset draws one random motif of ``MOTIF_LENGTH`` bases per class ``c > 0``;
- a class-``c`` sequence carries ``MOTIF_COPIES`` copies of its motif with probability
  ``MOTIF_PRESENCE``, one copy per equal stretch of the sequence, each base of each copy
  replaced by a random base with probability ``MOTIF_MUTATION``;
- class-0 sequences are plain random DNA.

The motif length and mutation rate are options, and with ``shared_motifs`` every dataset of one
GUE group draws the same motifs (per number of classes), as related tasks share their signal:
masked-LM pretraining on a sibling's train split then meets the motifs a task is labelled by.
The demo study plants its effects that way (long, unmutated motifs, few labelled rows and a
sibling corpus: see ``search_spaces/studies/demo.yaml``).

A small CNN, transformer or even a logistic regression on k-mer counts learns that quickly, so a
pipeline run on this data should reach an MCC clearly above 0. Output is deterministic: the same
``(scale, seed, tasks)`` gives byte-identical files, and each dataset's content depends only on
``seed`` and the dataset's key.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ablate.data.gue import REGISTRY, SPLITS, GUEDataset
from ablate.errors import AblateError

MOTIF_LENGTH = 8
MOTIF_COPIES = 2
MOTIF_PRESENCE = 0.9
MOTIF_MUTATION = 0.05
MIN_ROWS_PER_CLASS = 8
MAX_SCALE = 10.0

_BASES = np.frombuffer(b"ACGT", dtype=np.uint8)


def _rng_for(seed: int, key: str) -> np.random.Generator:
    """A generator seeded by ``seed`` and ``key`` alone (stable across runs and machines)."""
    key_entropy = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng([seed, key_entropy])


def _rows(published: int, scale: float, num_classes: int) -> int:
    return max(round(published * scale), MIN_ROWS_PER_CLASS * num_classes)


def _draw_motifs(rng: np.random.Generator, num_classes: int,
                 length: int = MOTIF_LENGTH) -> np.ndarray:
    """One distinct random motif per class, as base indices (row 0, for class 0, is unused)."""
    while True:
        motifs = rng.integers(0, 4, size=(num_classes, length), dtype=np.uint8)
        if len({m.tobytes() for m in motifs[1:]}) == num_classes - 1:
            return motifs


def _make_split(rng: np.random.Generator, dataset: GUEDataset, motifs: np.ndarray, n: int,
                mutation: float = MOTIF_MUTATION) -> bytes:
    """The CSV bytes (header included) of one split with ``n`` rows."""
    length = dataset.length_bp
    # Classes as even as possible, in random order.
    labels = rng.permutation(np.arange(n) % dataset.num_classes).astype(np.uint8)
    seqs = rng.integers(0, 4, size=(n, length), dtype=np.uint8)

    carriers = np.flatnonzero((labels > 0) & (rng.random(n) < MOTIF_PRESENCE))
    stretch = length // MOTIF_COPIES
    motif_length = motifs.shape[1]
    offsets = np.arange(motif_length)
    for copy in range(MOTIF_COPIES):
        start = copy * stretch + rng.integers(0, stretch - motif_length + 1, size=len(carriers))
        copies = motifs[labels[carriers]]
        mutated = rng.random(copies.shape) < mutation
        copies[mutated] = rng.integers(0, 4, size=int(mutated.sum()), dtype=np.uint8)
        seqs[carriers[:, None], start[:, None] + offsets] = copies

    # Every line has the same width: sequence, comma, one-digit label, newline.
    lines = np.empty((n, length + 3), dtype=np.uint8)
    lines[:, :length] = _BASES[seqs]
    lines[:, length] = ord(",")
    lines[:, length + 1] = ord("0") + labels
    lines[:, length + 2] = ord("\n")
    return b"sequence,label\n" + lines.tobytes()


@dataclass(frozen=True)
class Signal:
    """What is planted: motif length, per-base mutation rate, motifs shared within a group."""

    motif_length: int = MOTIF_LENGTH
    mutation: float = MOTIF_MUTATION
    shared_motifs: bool = False

    def folder_suffix(self) -> str:
        """Empty for the default signal (its folders keep their names), else what differs."""
        parts = []
        if self.motif_length != MOTIF_LENGTH:
            parts.append(f"motif{self.motif_length}")
        if self.mutation != MOTIF_MUTATION:
            parts.append(f"mut{self.mutation:g}")
        if self.shared_motifs:
            parts.append("shared")
        return "".join(f"-{p}" for p in parts)


def _write_dataset(out_dir: Path, dataset: GUEDataset, scale: float, seed: int,
                   signal: Signal = Signal()) -> None:
    """Write one dataset's three splits to a temp folder, then move it into place."""
    rng = _rng_for(seed, dataset.key)
    if signal.shared_motifs:
        group_rng = _rng_for(seed, f"group:{dataset.group}:{dataset.num_classes}")
        motifs = _draw_motifs(group_rng, dataset.num_classes, signal.motif_length)
    else:
        motifs = _draw_motifs(rng, dataset.num_classes, signal.motif_length)
    final = out_dir / dataset.group / dataset.name
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dataset.name}.", dir=final.parent))
    try:
        for split, published in zip(SPLITS, dataset.sizes, strict=True):
            n = _rows(published, scale, dataset.num_classes)
            (staging / f"{split}.csv").write_bytes(
                _make_split(rng, dataset, motifs, n, signal.mutation)
            )
        if final.exists():
            # A folder cannot be renamed over a non-empty one: move the old one aside first.
            old = Path(tempfile.mkdtemp(prefix=f".{dataset.name}.old.", dir=final.parent))
            os.replace(final, old / dataset.name)
            os.replace(staging, final)
            shutil.rmtree(old)
        else:
            os.replace(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def _notes(scale: float, seed: int, keys: list[str], signal: Signal = Signal()) -> str:
    return (
        "# Synthetic GUE-shaped data\n\n"
        "This folder was generated by `ablate` (`ablate.data.synthetic.write_synthetic_gue`). "
        "It is **synthetic**, not the real GUE benchmark: numbers measured on it say nothing "
        "about DNA language models.\n\n"
        f"- seed: {seed}\n"
        f"- scale: {scale!r} (fraction of the published GUE row counts, "
        f"at least {MIN_ROWS_PER_CLASS} rows per class)\n"
        f"- datasets: {len(keys)} ({', '.join(keys)})\n\n"
        "Layout and shapes follow the official release: `<group>/<dataset>/{train,dev,test}.csv`, "
        "header `sequence,label`, each dataset's sequence length and number of classes.\n\n"
        "Planted signal: sequences are uniform random A/C/G/T. Every class above 0 has its own "
        f"random {signal.motif_length}-base motif; {MOTIF_PRESENCE:.0%} of its sequences carry "
        f"{MOTIF_COPIES} copies of it, each base mutated with probability {signal.mutation}. "
        "Class 0 has no motif."
        + (" Datasets of one group share their motifs." if signal.shared_motifs else "")
        + "\n"
    )


def write_synthetic_gue(
    out_dir: str | Path,
    scale: float = 0.05,
    seed: int = 0,
    tasks: list[str] | None = None,
    signal: Signal = Signal(),
) -> Path:
    """Write synthetic GUE-shaped datasets with a planted signal.

    Args:
        out_dir: Folder to write the GUE layout ``<group>/<dataset>/{train,dev,test}.csv``
            into (created if needed). Existing datasets of the same name are replaced.
        scale: Fraction of the published row counts to generate, in ``(0, 10]``. Each split
            gets at least ``MIN_ROWS_PER_CLASS`` rows per class.
        seed: Non-negative integer; the same ``(scale, seed, tasks)`` gives identical bytes.
        tasks: Registry keys (``"group/name"``) to write; ``None`` writes all 28.
        signal: The planted motifs' length and mutation rate, and whether a group's datasets
            share them.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`. It also holds ``SYNTHETIC.md`` describing
        the data, the seed and the scale.

    Raises:
        AblateError: for a scale outside ``(0, 10]``, a negative or non-integer seed, or a
            task that is not a GUE dataset key.
    """
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
        raise AblateError(f"scale must be a number in (0, {MAX_SCALE:g}], got {scale!r}")
    if not 0 < scale <= MAX_SCALE:
        raise AblateError(
            f"scale must be in (0, {MAX_SCALE:g}] (a fraction of the published GUE sizes), "
            f"got {scale!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise AblateError(f"seed must be a non-negative integer, got {seed!r}")
    if not 0 <= signal.mutation < 0.75:
        raise AblateError(f"motif mutation must be in [0, 0.75), got {signal.mutation!r}")
    if signal.motif_length < 1:
        raise AblateError(f"motif length must be at least 1, got {signal.motif_length!r}")
    if tasks is None:
        keys = list(REGISTRY)
    else:
        unknown = [t for t in tasks if t not in REGISTRY]
        if unknown:
            raise AblateError(
                f"unknown GUE dataset(s) {', '.join(map(repr, unknown))} in tasks. "
                f"Use keys 'group/name' from: {', '.join(REGISTRY)}"
            )
        if not tasks:
            raise AblateError("tasks is empty: give at least one GUE dataset key, or None for all")
        keys = list(dict.fromkeys(tasks))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for key in keys:
        dataset = REGISTRY[key]
        if signal.motif_length * MOTIF_COPIES > dataset.length_bp:
            raise AblateError(
                f"{key}: {MOTIF_COPIES} motifs of {signal.motif_length} bases do not fit its "
                f"{dataset.length_bp}-base sequences"
            )
        _write_dataset(out, dataset, float(scale), seed, signal)

    notes_tmp = out / ".SYNTHETIC.md.tmp"
    notes_tmp.write_text(_notes(float(scale), seed, keys, signal), encoding="utf-8",
                         newline="\n")
    os.replace(notes_tmp, out / "SYNTHETIC.md")
    return out
