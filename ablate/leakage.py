"""Keep a study's dev and test sequences out of what pretraining and tokenizer training read.

GUE's tasks overlap: 544 of the 613 ``prom/prom_core_tata`` dev sequences are rows of
``prom/prom_core_all`` train, and 492 of its 613 test sequences lie inside ``prom/prom_300_tata``
train sequences. A masked-LM corpus made of the train splits of all a study's tasks therefore
shows pretrained cells (and only them) the very sequences they are later scored on.

:class:`HeldOut` indexes the dev and test sequences of a study's tasks, each with its reverse
complement. :meth:`HeldOut.filter` removes every candidate (corpus row, FASTA window, tokenizer
training sequence) that equals, contains or is contained in a held-out sequence or its reverse
complement, and returns the kept candidates in their order with a :class:`LeakReport`: rows
removed by kind, and per held-out task and split how many of its rows the candidates exposed.

Both directions run as Aho-Corasick scans (``pyahocorasick``), never over pairs: the first
``SEED_BP`` bases of each held-out sequence and of its reverse complement are the patterns of
one automaton that scans all candidates once ("equal" and "contains"), and the first
``SEED_BP`` bases of each candidate are the patterns of one that scans the held-out sequences
and their reverse complements once ("contained"). Every seed hit is confirmed by comparing the
whole pattern at its position, so the answer is exact.

Measured on a 2-core machine (the real GUE copy, wall time of one :meth:`HeldOut.filter` call,
single-threaded): all 254,026 GUE train rows (23.7 million bases) filtered against the dev and
test splits of the 13 datasets that have train (41,426 rows) take 7.6 s and 0.3 GB, and remove
16,945 rows (11,305 equal, 2,906 contain, 2,734 are contained); against the dev and test of all
27 datasets present (143,976 rows, 29 million bases) 29 s and 0.6 GB, removing 45,393 rows
(most of the extra ones lie inside 300-500 bp EMP, splice and prom_300 sequences).
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ablate.errors import AblateError
from ablate.tracking.schema import MetricName

SEED_BP = 16  # bases of each pattern the automata match; longer patterns are then confirmed
HELD_OUT_SPLITS = ("dev", "test")
_SEPARATOR = "\n"  # between the texts of one scan; no sequence holds it
_COMPLEMENT = str.maketrans("ACGTNacgtn", "TGCANtgcan")


def reverse_complement(sequence: str) -> str:
    """The reverse complement of a DNA sequence (``N`` stays ``N``)."""
    return sequence.translate(_COMPLEMENT)[::-1]


def _join(texts: Sequence[str], what: str) -> tuple[str, np.ndarray]:
    """The texts joined by the separator, and the offset of each text in the result."""
    joined = _SEPARATOR.join(texts)
    if joined.count(_SEPARATOR) != max(len(texts) - 1, 0):
        raise AblateError(
            f"a {what} sequence contains a line break; pass each sequence as one string of "
            "bases without line breaks"
        )
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    offsets = np.zeros(len(texts), dtype=np.int64)
    np.cumsum(lengths[:-1] + 1, out=offsets[1:])
    return joined, offsets


@dataclass(frozen=True)
class _Hits:
    """Occurrences of patterns inside texts: one entry per (text, pattern, strand) found."""

    text: np.ndarray  # index of the text holding the occurrence
    pattern: np.ndarray  # index of the pattern (in the automaton's pattern list)
    reverse: np.ndarray  # True when the pattern's reverse complement was found
    whole: np.ndarray  # True when the occurrence is the whole text (text equals the pattern)


class _SeedAutomaton:
    """Aho-Corasick over the first ``SEED_BP`` bases of each pattern (and, with ``reverse``,
    of its reverse complement); :meth:`find` confirms each seed hit against the full pattern."""

    def __init__(self, patterns: Sequence[str], *, reverse: bool) -> None:
        import ahocorasick

        self.count = len(patterns)
        self._strands = list(patterns)
        if reverse:
            self._strands += [reverse_complement(p) for p in patterns]
        self._groups: list[list[int]] = []  # strand indices sharing one seed
        self._seed_len: list[int] = []
        self._automaton = ahocorasick.Automaton(ahocorasick.STORE_INTS)
        group_of: dict[str, int] = {}
        for index, strand in enumerate(self._strands):
            seed = strand[:SEED_BP]
            group = group_of.get(seed)
            if group is None:
                group = group_of[seed] = len(self._groups)
                self._groups.append([])
                self._seed_len.append(len(seed))
                self._automaton.add_word(seed, group)
            self._groups[group].append(index)
        if self._groups:
            self._automaton.make_automaton()

    def find(self, texts: Sequence[str], what: str) -> _Hits:
        """Every pattern (either strand) that occurs inside a text, once per text and strand."""
        found_at: list[int] = []
        found: list[int] = []
        if self._groups and texts:
            joined, offsets = _join(texts, what)
            strands, groups, seed_len = self._strands, self._groups, self._seed_len
            for end, group in self._automaton.iter(joined):
                start = end - seed_len[group] + 1
                for index in groups[group]:
                    if joined.startswith(strands[index], start):
                        found_at.append(start)
                        found.append(index)
        if not found:
            empty = np.zeros(0, dtype=np.int64)
            return _Hits(empty, empty, empty.astype(bool), empty.astype(bool))
        starts = np.asarray(found_at, dtype=np.int64)
        strand = np.asarray(found, dtype=np.int64)
        text = np.searchsorted(offsets, starts, side="right") - 1
        text_len = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
        pattern_len = np.fromiter(map(len, self._strands), dtype=np.int64,
                                  count=len(self._strands))
        whole = (starts == offsets[text]) & (pattern_len[strand] == text_len[text])
        # one entry per (text, strand): a pattern found twice in one text counts once
        key = np.unique(text * len(self._strands) + strand, return_index=True)[1]
        text, strand, whole = text[key], strand[key], whole[key]
        return _Hits(text, strand % self.count, strand >= self.count, whole)


@dataclass(frozen=True)
class LeakReport:
    """What :meth:`HeldOut.filter` removed from a list of candidate sequences.

    Attributes:
        candidates: Candidate rows given.
        kept: Rows kept (``candidates`` minus the removed ones).
        equal: Rows removed because they equal a held-out sequence or its reverse complement.
        contains: Rows removed because they contain one (and equal none).
        contained: Rows removed because they lie inside one (and neither equal nor contain one).
        exposure: Per held-out task and split, its rows that a candidate equals, contains or lies
            inside (either strand): what a model trained on all the candidates would have seen.
        held_out_rows: Per held-out task and split, its rows.
        seconds: Wall time of the filter.
    """

    candidates: int
    kept: int
    equal: int
    contains: int
    contained: int
    exposure: dict[str, dict[str, int]] = field(default_factory=dict)
    held_out_rows: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def removed(self) -> int:
        """Rows removed, of any kind."""
        return self.equal + self.contains + self.contained

    def as_metrics(self) -> dict[str, float]:
        """Flat metric names and values, to log on the run that used the filtered sequences.

        ``corpus_leaked_removed``, ``corpus_sequences`` (kept), ``corpus_candidates``,
        ``leaked_equal``, ``leaked_contains``, ``leaked_contained``, ``leak_filter_seconds``,
        and ``exposure/<task>/<split>`` (rows of that split the candidates exposed).
        """
        metrics = {
            MetricName.LEAKED_REMOVED: float(self.removed),
            MetricName.CORPUS_SEQUENCES: float(self.kept),
            "corpus_candidates": float(self.candidates),
            "leaked_equal": float(self.equal),
            "leaked_contains": float(self.contains),
            "leaked_contained": float(self.contained),
            "leak_filter_seconds": float(self.seconds),
        }
        for task, splits in self.exposure.items():
            for split, rows in splits.items():
                metrics[f"exposure/{task}/{split}"] = float(rows)
        return metrics

    def summary(self) -> str:
        """One line: what was removed, and the tasks whose held-out rows were exposed."""
        exposed = [
            f"{task} {split} {rows}/{self.held_out_rows[task][split]}"
            for task, splits in self.exposure.items()
            for split, rows in splits.items()
            if rows
        ]
        line = (
            f"removed {self.removed:,} of {self.candidates:,} sequences that overlap held-out "
            f"dev/test sequences ({self.equal:,} equal, {self.contains:,} contain one, "
            f"{self.contained:,} lie inside one) in {self.seconds:.1f} s"
        )
        return line + (f"; exposed rows: {', '.join(exposed)}" if exposed else "")


class HeldOut:
    """The dev and test sequences of a study's tasks, indexed with their reverse complements.

    Args:
        sequences_by_task: ``{task: {split: sequences}}``, or ``{task: sequences}`` (counted as
            split ``"held_out"``). Sequences are compared upper-cased.

    Raises:
        AblateError: if a held-out sequence is empty (it would lie inside everything) or holds
            a line break.
    """

    def __init__(
        self, sequences_by_task: Mapping[str, Mapping[str, Sequence[str]] | Sequence[str]]
    ) -> None:
        index: dict[str, int] = {}
        self._rows: dict[str, dict[str, np.ndarray]] = {}
        for task, value in sequences_by_task.items():
            splits = value if isinstance(value, Mapping) else {"held_out": value}
            self._rows[task] = {}
            for split, sequences in splits.items():
                ids = []
                for row, sequence in enumerate(sequences, start=1):
                    if not sequence or _SEPARATOR in sequence:
                        problem = "a line break in the" if sequence else "an empty"
                        raise AblateError(
                            f"held-out sequences of {task} ({split}), row {row}: {problem} "
                            "sequence; give each row its bases as one string"
                        )
                    ids.append(index.setdefault(sequence.upper(), len(index)))
                self._rows[task][split] = np.asarray(ids, dtype=np.int64)
        self.sequences: list[str] = list(index)  # unique, in first-seen order
        self._max_len = max(map(len, self.sequences), default=0)
        self._automaton: _SeedAutomaton | None = None

    @classmethod
    def from_tasks(
        cls, gue_root: str | Path, tasks: Iterable[str],
        splits: Sequence[str] = HELD_OUT_SPLITS,
    ) -> HeldOut:
        """The held-out sequences of GUE tasks: their ``splits`` that exist under ``gue_root``.

        Raises:
            AblateError: if a task is unknown, a split file is invalid, or none of the tasks
                has any of ``splits`` under ``gue_root``.
        """
        from ablate.data.gue import read_split, split_path

        tasks = list(tasks)
        by_task: dict[str, dict[str, list[str]]] = {}
        for task in tasks:
            present = [s for s in splits if split_path(gue_root, task, s).is_file()]
            by_task[task] = {s: read_split(gue_root, task, s).sequences for s in present}
        if not any(by_task.values()):
            raise AblateError(
                f"{gue_root}: none of the tasks {', '.join(tasks)} has a "
                f"{' or '.join(splits)} split there; pass the GUE folder the study reads"
            )
        return cls(by_task)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_automaton"] = None  # rebuilt where it is used
        return state

    @property
    def tasks(self) -> list[str]:
        return list(self._rows)

    @property
    def rows(self) -> dict[str, dict[str, int]]:
        """Rows per task and split."""
        return {t: {s: len(ids) for s, ids in splits.items()} for t, splits in self._rows.items()}

    @property
    def digest(self) -> str:
        """sha256 of the set of held-out sequences: what the filter's result depends on."""
        digest = hashlib.sha256()
        for sequence in sorted(self.sequences):
            digest.update(sequence.encode())
            digest.update(b"\n")
        return digest.hexdigest()

    def _held_out_automaton(self) -> _SeedAutomaton:
        if self._automaton is None:
            self._automaton = _SeedAutomaton(self.sequences, reverse=True)
        return self._automaton

    def _per_split(self, exposed: np.ndarray) -> dict[str, dict[str, int]]:
        return {
            task: {split: int(exposed[ids].sum()) for split, ids in splits.items()}
            for task, splits in self._rows.items()
        }

    def filter(self, candidates: Iterable[str]) -> tuple[list[str], LeakReport]:
        """Drop every candidate that equals, contains or lies inside a held-out sequence or its
        reverse complement.

        Returns:
            The kept candidates (their order preserved, as given) and the report.
        """
        started = time.perf_counter()
        candidates = list(candidates)
        index: dict[str, int] = {}
        row_ids = np.fromiter(
            (index.setdefault(c.upper(), len(index)) for c in candidates),
            dtype=np.int64, count=len(candidates),
        )
        unique = list(index)
        del index
        exposed = np.zeros(len(self.sequences), dtype=bool)
        equal = np.zeros(len(unique), dtype=bool)
        contains = np.zeros(len(unique), dtype=bool)
        contained = np.zeros(len(unique), dtype=bool)

        # held-out sequences (either strand) inside candidates: "equal" or "contains"
        hits = self._held_out_automaton().find(unique, "candidate")
        equal[hits.text[hits.whole]] = True
        contains[hits.text[~hits.whole]] = True
        exposed[hits.pattern] = True

        # candidates inside held-out sequences (either strand): "contained". Only a candidate
        # shorter than the longest held-out sequence can be, and only inside a longer one.
        shorter = [i for i, c in enumerate(unique) if 0 < len(c) < self._max_len]
        if shorter:
            automaton = _SeedAutomaton([unique[i] for i in shorter], reverse=False)
            shortest = min(len(unique[i]) for i in shorter)
            longer = [i for i, h in enumerate(self.sequences) if len(h) > shortest]
            forward = [self.sequences[i] for i in longer]
            for texts in (forward, [reverse_complement(h) for h in forward]):
                inside = automaton.find(texts, "held-out")
                contained[np.asarray(shorter, dtype=np.int64)[inside.pattern]] = True
                exposed[np.asarray(longer, dtype=np.int64)[inside.text]] = True

        contains &= ~equal
        contained &= ~(equal | contains)
        removed = (equal | contains | contained)[row_ids]
        kept = [c for c, drop in zip(candidates, removed.tolist(), strict=True) if not drop]
        report = LeakReport(
            candidates=len(candidates),
            kept=len(kept),
            equal=int(equal[row_ids].sum()),
            contains=int(contains[row_ids].sum()),
            contained=int(contained[row_ids].sum()),
            exposure=self._per_split(exposed),
            held_out_rows=self.rows,
            seconds=time.perf_counter() - started,
        )
        return kept, report

    def exposure(self, candidates: Iterable[str]) -> dict[str, dict[str, int]]:
        """Per task and split, its held-out rows that some candidate equals, contains or lies
        inside (either strand)."""
        return self.filter(candidates)[1].exposure

    def containment(self, candidates: Iterable[str]) -> dict[str, dict[str, tuple[int, int]]]:
        """Per task and split, ``(forward, reverse)``: its rows that equal or lie inside some
        candidate, and its rows whose reverse complement does. One scan of the candidates."""
        unique = list({c.upper(): None for c in candidates})
        hits = self._held_out_automaton().find(unique, "candidate")
        forward = np.zeros(len(self.sequences), dtype=bool)
        reverse = np.zeros(len(self.sequences), dtype=bool)
        forward[hits.pattern[~hits.reverse]] = True
        reverse[hits.pattern[hits.reverse]] = True
        return {
            task: {
                split: (int(forward[ids].sum()), int(reverse[ids].sum()))
                for split, ids in splits.items()
            }
            for task, splits in self._rows.items()
        }


@dataclass(frozen=True)
class PairOverlap:
    """Rows of one dataset's dev/test found in (equal to, or inside) another's train split.

    Attributes:
        held_out: The dataset whose dev/test rows were looked up.
        train: The dataset whose train split was scanned (may be ``held_out`` itself).
        hits: Per split of ``held_out``: ``(forward, reverse)`` rows found as they are, and rows
            whose reverse complement was found.
        rows: Per split of ``held_out``: its rows.
    """

    held_out: str
    train: str
    hits: dict[str, tuple[int, int]]
    rows: dict[str, int]


@dataclass(frozen=True)
class CrossTaskOverlap:
    """:func:`cross_task_overlap`'s answer: the non-zero pairs and how long it took."""

    pairs: list[PairOverlap]
    held_out_rows: int
    train_rows: int
    seconds: float


def cross_task_overlap(
    held_out: Mapping[str, Mapping[str, Sequence[str]]],
    trains: Mapping[str, Sequence[str]],
) -> CrossTaskOverlap:
    """For every ordered pair (A, B), A's dev/test rows that equal or lie inside a row of B's
    train split (and those whose reverse complement does); only non-zero pairs are returned.

    One automaton over all of ``held_out`` (``{dataset: {split: sequences}}``); each train split
    of ``trains`` (``{dataset: sequences}``) is scanned once.
    """
    started = time.perf_counter()
    index = HeldOut(held_out)
    rows = index.rows
    pairs = []
    for train, sequences in trains.items():
        found = index.containment(sequences)
        for task, splits in found.items():
            if any(f or r for f, r in splits.values()):
                pairs.append(PairOverlap(task, train, splits, rows[task]))
    return CrossTaskOverlap(
        pairs=pairs,
        held_out_rows=sum(n for splits in rows.values() for n in splits.values()),
        train_rows=sum(len(s) for s in trains.values()),
        seconds=time.perf_counter() - started,
    )


@functools.lru_cache(maxsize=8)
def _held_out_of(gue_root: str, tasks: tuple[str, ...]) -> HeldOut:
    return HeldOut.from_tasks(gue_root, tasks)


def held_out_of(gue_root: str | Path, tasks: Iterable[str]) -> HeldOut:
    """``HeldOut.from_tasks`` of a study's tasks, read once per process and shared by the
    tokenizer training and every pretraining of the study."""
    return _held_out_of(str(gue_root), tuple(sorted(set(tasks))))
