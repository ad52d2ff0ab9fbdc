"""What a GUE task's labels let a model exploit: composition-matched negatives.

Some GUE tasks build their negatives by shuffling positives while keeping their dinucleotide
counts. On ``mouse/0``, ``2``, ``3`` and ``4`` about 80% of the train negatives have exactly the
dinucleotide composition (the counts of the 16 overlapping dinucleotides) of some train positive,
where two unrelated positives almost never share one; and 72-82% of the test negatives are such
shuffles of train positives (9-15% find their positive inside the small test split itself). Such
a task cannot be solved by composition: it rewards detecting the order of the bases.

:func:`composition_caveat` measures this for one task from its splits, against the chance level
(positives whose composition equals that of another positive with a different sequence).
Tasks with more than two classes are not measured (there is no negative class to compare).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ablate.data.gue import SPLITS, GUESplit, get_dataset, read_split, split_path

DINUCLEOTIDES = tuple(a + b for a in "ACGT" for b in "ACGT")
# A task is flagged when some fraction of negatives matching positives reaches this, and is at
# least CHANCE_FACTOR times the positives' own matching rate there. Within a split that holds a
# tenth of the rows, only a tenth of the shuffled partners are there to be found.
SHUFFLE_THRESHOLD = 0.05
CHANCE_FACTOR = 10.0

_CODE = np.full(256, 4, dtype=np.int64)
for _i, _base in enumerate(b"ACGT"):
    _CODE[_base] = _i
_CODE[np.frombuffer(b"acgt", dtype=np.uint8)] = np.arange(4)


def dinucleotide_counts(sequences: list[str]) -> np.ndarray:
    """``(n, 16)`` counts of the overlapping dinucleotides of each sequence, in the order of
    ``DINUCLEOTIDES``; a pair holding any other letter (``N``) is not counted."""
    n = len(sequences)
    if n == 0:
        return np.zeros((0, 16), dtype=np.int32)
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=n)
    codes = _CODE[np.frombuffer("".join(sequences).encode("ascii"), dtype=np.uint8)]
    first, second = codes[:-1], codes[1:]
    row = np.repeat(np.arange(n), lengths)[:-1]
    valid = (first < 4) & (second < 4)
    valid[np.cumsum(lengths)[:-1] - 1] = False  # a pair across two sequences
    bins = row[valid] * 16 + first[valid] * 4 + second[valid]
    return np.bincount(bins, minlength=n * 16).reshape(n, 16).astype(np.int32)


def _composition_ids(*blocks: np.ndarray) -> list[np.ndarray]:
    """One integer per row naming its composition, shared across the blocks."""
    stacked = np.concatenate(blocks) if blocks else np.zeros((0, 16), dtype=np.int32)
    if len(stacked) == 0:
        return [np.zeros(0, dtype=np.int64) for _ in blocks]
    ids = np.unique(stacked, axis=0, return_inverse=True)[1].reshape(-1)
    cuts = np.cumsum([len(b) for b in blocks])[:-1]
    return np.split(ids, cuts)


@dataclass(frozen=True)
class CompositionCaveat:
    """How often a task's negatives carry exactly the dinucleotide composition of a positive.

    Attributes:
        task: The GUE dataset key.
        num_classes: Its number of classes (only binary tasks are measured).
        negatives_matched: Per split, the fraction of its negatives (label 0) whose composition
            equals that of some positive (label 1) of the same split.
        positives_matched: Per split, the chance level: the fraction of its positives whose
            composition equals that of another positive (with a different sequence).
        negatives_matched_train: Per dev/test split, the fraction of its negatives whose
            composition equals that of some train positive (requires train).
        positives_matched_train: Per dev/test split, the chance level of the former: the
            fraction of its positives whose composition equals that of a train positive with a
            different sequence.
        note: Why nothing was measured, when nothing was.
    """

    task: str
    num_classes: int
    negatives_matched: dict[str, float] = field(default_factory=dict)
    positives_matched: dict[str, float] = field(default_factory=dict)
    negatives_matched_train: dict[str, float] = field(default_factory=dict)
    positives_matched_train: dict[str, float] = field(default_factory=dict)
    note: str = ""

    def _strongest(self) -> tuple[str, str, float, float] | None:
        """(negatives, positives, fraction, chance) of the highest matching fraction."""
        options = [(s, s, f, self.positives_matched.get(s, 0.0))
                   for s, f in self.negatives_matched.items()]
        options += [(s, "train", f, self.positives_matched_train.get(s, 0.0))
                    for s, f in self.negatives_matched_train.items()]
        return max(options, key=lambda o: o[2], default=None)

    @property
    def shuffled(self) -> bool:
        """True when the negatives are, far above chance, composition matches of positives."""
        strongest = self._strongest()
        if strongest is None:
            return False
        fraction, chance = strongest[2:]
        return fraction >= SHUFFLE_THRESHOLD and fraction >= CHANCE_FACTOR * chance

    @property
    def statement(self) -> str | None:
        """One plain sentence on what the benchmark then measures; None when not flagged."""
        strongest = self._strongest()
        if not self.shuffled or strongest is None:
            return None
        negatives, positives, fraction, chance = strongest
        return (
            f"{self.task}: {fraction:.0%} of the {negatives} negatives have exactly the "
            f"dinucleotide composition of a {positives} positive (chance {chance:.1%}): the "
            "negatives are dinucleotide shuffles of the positives, so the task rewards "
            "detecting the order of the bases, not their composition."
        )


def composition_caveat(task: str, splits: Mapping[str, GUESplit]) -> CompositionCaveat:
    """Measure composition-matched negatives of ``task`` from its loaded ``splits``
    (``{"train": ..., "dev": ..., "test": ...}``, any of them may be absent)."""
    dataset = get_dataset(task)
    if dataset.num_classes != 2:
        return CompositionCaveat(
            task, dataset.num_classes,
            note=f"{dataset.num_classes} classes: composition matching is measured for binary "
                 "tasks only",
        )
    present = [s for s in SPLITS if s in splits]
    counts = [dinucleotide_counts(splits[s].sequences) for s in present]
    comp = dict(zip(present, _composition_ids(*counts), strict=True))
    caveat = CompositionCaveat(task, 2)
    for split in present:
        labels, ids = splits[split].labels, comp[split]
        neg = ids[labels == 0]
        positives = _Positives(splits[split], ids)
        if len(neg):
            caveat.negatives_matched[split] = float(np.isin(neg, positives.comps).mean())
        if positives.size:
            caveat.positives_matched[split] = positives.matched(positives)
    if "train" in present:
        train = _Positives(splits["train"], comp["train"])
        for split in present:
            if split == "train":
                continue
            labels, ids = splits[split].labels, comp[split]
            neg = ids[labels == 0]
            if len(neg) and train.size:
                caveat.negatives_matched_train[split] = float(np.isin(neg, train.comps).mean())
            positives = _Positives(splits[split], ids)
            if positives.size and train.size:
                caveat.positives_matched_train[split] = positives.matched(train)
    return caveat


class _Positives:
    """The positives of one split: their composition ids and sequences."""

    def __init__(self, split: GUESplit, ids: np.ndarray) -> None:
        rows = np.flatnonzero(split.labels == 1)
        self.size = len(rows)
        self.ids = ids[rows]
        self.sequences = [split.sequences[i] for i in rows]
        self.comps = np.unique(self.ids)
        # distinct sequences per composition
        by_comp: dict[int, set[str]] = {}
        for comp_id, sequence in zip(self.ids.tolist(), self.sequences, strict=True):
            by_comp.setdefault(comp_id, set()).add(sequence)
        self.by_comp = by_comp

    def matched(self, reference: _Positives) -> float:
        """Fraction of these positives whose composition equals that of a positive of
        ``reference`` with a different sequence."""
        hits = 0
        for comp_id, sequence in zip(self.ids.tolist(), self.sequences, strict=True):
            others = reference.by_comp.get(comp_id)
            if others and len(others) - (sequence in others) > 0:
                hits += 1
        return hits / self.size


def read_composition_caveat(gue_root: str | Path, task: str) -> CompositionCaveat:
    """:func:`composition_caveat` of ``task`` on the splits present under ``gue_root``."""
    splits = {s: read_split(gue_root, task, s) for s in SPLITS
              if split_path(gue_root, task, s).is_file()}
    return composition_caveat(task, splits)


def caveat_metrics(caveat: CompositionCaveat) -> dict[str, float]:
    """Flat metric names and values of a caveat, to log on a task's runs.

    ``caveat_dinuc_neg_matched/<split>``, ``caveat_dinuc_pos_matched/<split>`` (its chance
    level), ``caveat_dinuc_neg_matched_train/<split>``, ``caveat_dinuc_pos_matched_train/<split>``
    and ``caveat_dinuc_shuffled`` (1 or 0); empty for a task with more than two classes.
    """
    if caveat.num_classes != 2:
        return {}
    metrics = {f"caveat_dinuc_neg_matched/{s}": f for s, f in caveat.negatives_matched.items()}
    metrics |= {f"caveat_dinuc_pos_matched/{s}": f for s, f in caveat.positives_matched.items()}
    metrics |= {f"caveat_dinuc_neg_matched_train/{s}": f
                for s, f in caveat.negatives_matched_train.items()}
    metrics |= {f"caveat_dinuc_pos_matched_train/{s}": f
                for s, f in caveat.positives_matched_train.items()}
    metrics["caveat_dinuc_shuffled"] = float(caveat.shuffled)
    return metrics
