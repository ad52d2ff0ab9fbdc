"""The GUE benchmark: registry of its 28 datasets, a strict CSV loader and a folder scanner.

GUE (Genome Understanding Evaluation, from the DNABERT-2 paper) ships every dataset as
``<root>/<group>/<dataset>/{train,dev,test}.csv`` with the header ``sequence,label``. This module
knows the shape of each dataset (sequence length, number of classes, metric, published sizes),
reads one split with strict validation, reports which datasets and splits a folder holds, and
checks a folder for dev/test rows found in other datasets' train splits and for
composition-matched negatives (:func:`check_gue_dir`, behind ``ablate data check``).

Every problem a user can fix (missing file, bad header, bad character, bad label...) raises
:class:`~ablate.errors.AblateError` with the file, the line and the fix in its message.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ablate.errors import AblateError

if TYPE_CHECKING:
    from ablate.data.caveats import CompositionCaveat
    from ablate.leakage import CrossTaskOverlap

SPLITS = ("train", "dev", "test")
HEADER = ["sequence", "label"]
LAYOUT_HINT = "<root>/<group>/<dataset>/{train,dev,test}.csv"


@dataclass(frozen=True)
class GUEDataset:
    """One GUE dataset: where it lives in the release and what its rows look like.

    Attributes:
        group: Folder of the dataset group in the release, e.g. ``"prom"``.
        name: Folder of the dataset inside its group, e.g. ``"prom_core_tata"``.
        num_classes: Number of labels; labels are the integers ``0 .. num_classes - 1``.
        length_bp: Sequence length in base pairs (a few upstream sequences are shorter).
        metric: ``"mcc"`` (Matthews correlation) or ``"f1_macro"`` (virus/covid only).
        sizes: Row counts of the official release as ``(train, dev, test)``.
    """

    group: str
    name: str
    num_classes: int
    length_bp: int
    metric: str
    sizes: tuple[int, int, int]

    @property
    def key(self) -> str:
        """The registry key, ``"group/name"``."""
        return f"{self.group}/{self.name}"


def _dataset(
    group: str, name: str, num_classes: int, length_bp: int, sizes: tuple[int, int, int]
) -> GUEDataset:
    metric = "f1_macro" if (group, name) == ("virus", "covid") else "mcc"
    return GUEDataset(group, name, num_classes, length_bp, metric, sizes)


# Dev and test sizes are counted from the release. Train sizes of EMP/*, mouse/1,
# prom/prom_300_all, prom/prom_300_notata and splice/reconstructed, and all three sizes of
# virus/covid, are the published numbers from the DNABERT-2 paper (those files are often absent
# from partial downloads).
_DATASETS = [
    _dataset("EMP", "H3", 2, 500, (11971, 1497, 1497)),
    _dataset("EMP", "H3K14ac", 2, 500, (26438, 3305, 3305)),
    _dataset("EMP", "H3K36me3", 2, 500, (27904, 3488, 3488)),
    _dataset("EMP", "H3K4me1", 2, 500, (25341, 3168, 3168)),
    _dataset("EMP", "H3K4me2", 2, 500, (24545, 3069, 3069)),
    _dataset("EMP", "H3K4me3", 2, 500, (29439, 3680, 3680)),
    _dataset("EMP", "H3K79me3", 2, 500, (23069, 2884, 2884)),
    _dataset("EMP", "H3K9ac", 2, 500, (22224, 2779, 2779)),
    _dataset("EMP", "H4", 2, 500, (11679, 1461, 1461)),
    _dataset("EMP", "H4ac", 2, 500, (27275, 3410, 3410)),
    _dataset("mouse", "0", 2, 101, (6478, 810, 810)),
    _dataset("mouse", "1", 2, 101, (53952, 6745, 6745)),
    _dataset("mouse", "2", 2, 101, (2620, 328, 328)),
    _dataset("mouse", "3", 2, 101, (1904, 239, 239)),
    _dataset("mouse", "4", 2, 101, (15064, 1883, 1883)),
    _dataset("prom", "prom_300_all", 2, 300, (47356, 5920, 5920)),
    _dataset("prom", "prom_300_notata", 2, 300, (42452, 5307, 5307)),
    _dataset("prom", "prom_300_tata", 2, 300, (4904, 613, 613)),
    _dataset("prom", "prom_core_all", 2, 70, (47356, 5920, 5920)),
    _dataset("prom", "prom_core_notata", 2, 70, (42452, 5307, 5307)),
    _dataset("prom", "prom_core_tata", 2, 70, (4904, 613, 613)),
    _dataset("splice", "reconstructed", 3, 400, (36496, 4562, 4562)),
    _dataset("tf", "0", 2, 100, (32378, 1000, 1000)),
    _dataset("tf", "1", 2, 100, (30672, 1000, 1000)),
    _dataset("tf", "2", 2, 100, (19000, 1000, 1000)),
    _dataset("tf", "3", 2, 100, (27294, 1000, 1000)),
    _dataset("tf", "4", 2, 100, (19000, 1000, 1000)),
    _dataset("virus", "covid", 9, 1000, (73335, 9167, 9166)),
]

REGISTRY: dict[str, GUEDataset] = {d.key: d for d in _DATASETS}


def get_dataset(key: str) -> GUEDataset:
    """Return the registry entry for ``key`` (``"group/name"``, e.g. ``"tf/0"``).

    Raises:
        AblateError: if ``key`` is not one of the 28 GUE datasets.
    """
    try:
        return REGISTRY[key]
    except KeyError:
        known = ", ".join(REGISTRY)
        raise AblateError(
            f"unknown GUE dataset {key!r}. Use one of the keys 'group/name': {known}"
        ) from None


def split_path(root: str | Path, key: str, split: str) -> Path:
    """Path of one split file: ``root/group/name/split.csv``."""
    if split not in SPLITS:
        raise AblateError(f"unknown split {split!r}. Use one of: {', '.join(SPLITS)}")
    dataset = get_dataset(key)
    return Path(root) / dataset.group / dataset.name / f"{split}.csv"


@dataclass
class GUESplit:
    """The rows of one split file.

    Attributes:
        sequences: DNA sequences, upper case (letters ``ACGTN``).
        labels: Integer labels as an ``int64`` array, one per sequence.
        path: The file they were read from.
        sha256: Hex digest of the file's bytes, to identify the exact data used.
    """

    sequences: list[str]
    labels: np.ndarray
    path: Path
    sha256: str

    def __len__(self) -> int:
        return len(self.sequences)


_VALID_SEQUENCE = re.compile(r"^[ACGTNacgtn]+$")
_INTEGER = re.compile(r"^[+-]?[0-9]+$")


def _fail(path: Path, line: int, problem: str, fix: str) -> AblateError:
    return AblateError(f"{path}, line {line}: {problem}. Fix: {fix}")


def _explain_bad_sequence(path: Path, line: int, sequence: str) -> AblateError:
    """Build the error for a sequence that failed the fast regex check."""
    if not sequence:
        return _fail(path, line, "empty sequence", "give every row a DNA sequence")
    for column, char in enumerate(sequence, start=1):
        if char not in "ACGTNacgtn":
            return _fail(
                path,
                line,
                f"character {char!r} at column {column} of the sequence is not one of ACGTN",
                "sequences may only contain A, C, G, T or N (any case); "
                "replace or remove that character",
            )
    # Not reachable: the regex only fails on empty input or a character outside ACGTN.
    return _fail(path, line, "invalid sequence", "use only the letters ACGTN")


def _explain_bad_label(path: Path, line: int, label: str, num_classes: int) -> AblateError:
    """Build the error for a label that is not one of the dataset's class indices."""
    allowed = f"an integer from 0 to {num_classes - 1}"
    if not _INTEGER.match(label):
        return _fail(path, line, f"label {label!r} is not an integer", f"use {allowed}")
    return _fail(
        path,
        line,
        f"label {int(label)} is outside [0, {num_classes}) for a {num_classes}-class dataset",
        f"use {allowed}",
    )


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise _fail(
            path, line, "the file is not valid UTF-8 text", "save it as plain UTF-8 (or ASCII)"
        ) from None


def require_splits(root: str | Path, key: str, splits: tuple[str, ...]) -> None:
    """Raise AblateError naming the first of ``splits`` that task ``key`` lacks under ``root``.

    A study needs train and dev for every task, and test when it has replicates.
    """
    for split in splits:
        path = split_path(root, key, split)
        if not path.is_file():
            raise AblateError(
                f"{path}: task {key} has no {split} split; a study needs train and dev, and "
                "test when it has replicates (see `ablate data check DIR`)"
            )


def read_split(root: str | Path, key: str, split: str) -> GUESplit:
    """Read and validate one split of a GUE dataset.

    Args:
        root: Folder holding the GUE layout ``<root>/<group>/<dataset>/{train,dev,test}.csv``.
        key: Registry key ``"group/name"``.
        split: ``"train"``, ``"dev"`` or ``"test"``.

    Returns:
        The sequences (upper-cased), their labels and the file's sha256.

    Raises:
        AblateError: if the file is missing or empty, the header is not exactly
            ``sequence,label``, a row does not have exactly two fields, a sequence has a
            character outside ``ACGTN``, or a label is not an integer in ``[0, num_classes)``.
            The message names the file and the line (the header is line 1).
    """
    dataset = get_dataset(key)
    path = split_path(root, key, split)
    if not path.is_file():
        raise AblateError(
            f"missing split file: expected {path} (the GUE layout is {LAYOUT_HINT}). "
            f"Fix: put the {split} split of {key} there, or point the data root at a folder "
            "that holds it"
        )
    data = path.read_bytes()
    if not data:
        raise _fail(path, 1, "the file is empty", "write the header 'sequence,label' and rows")
    reader = csv.reader(io.StringIO(_decode(path, data), newline=""))

    header = next(reader, None)
    if header != HEADER:
        raise _fail(
            path,
            1,
            f"header is {','.join(header or [])!r}, expected exactly 'sequence,label'",
            "make the first line 'sequence,label'",
        )

    # Labels are looked up as strings; only an unknown string needs a closer look.
    label_of = {str(c): c for c in range(dataset.num_classes)}
    sequences: list[str] = []
    labels: list[int] = []
    for row in reader:
        if len(row) != 2:
            raise _fail(
                path,
                reader.line_num,
                f"row has {len(row)} fields, expected 2 (sequence,label)",
                "write each row as '<sequence>,<label>' with no extra commas or blank lines",
            )
        sequence, label = row
        if not _VALID_SEQUENCE.match(sequence):
            raise _explain_bad_sequence(path, reader.line_num, sequence)
        value = label_of.get(label)
        if value is None:
            raise _explain_bad_label(path, reader.line_num, label, dataset.num_classes)
        sequences.append(sequence.upper())
        labels.append(value)

    if not sequences:
        raise _fail(path, 1, "the file has a header but no rows", "add '<sequence>,<label>' rows")
    return GUESplit(
        sequences=sequences,
        labels=np.asarray(labels, dtype=np.int64),
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
    )


@dataclass
class DatasetStatus:
    """What a folder holds of one GUE dataset.

    Attributes:
        key: Registry key ``"group/name"``.
        path: The dataset's folder.
        rows: Rows per split (header excluded); ``None`` when the split file is missing.
    """

    key: str
    path: Path
    rows: dict[str, int | None] = field(default_factory=dict)
    # Rows of dev/test whose exact sequence also occurs in train (a leakage check); only
    # filled when the scan validates and train is present.
    in_train: dict[str, int] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """True when train, dev and test are all present."""
        return not self.missing

    @property
    def missing(self) -> list[str]:
        """The splits whose file is missing, in the order train, dev, test."""
        return [split for split in SPLITS if self.rows.get(split) is None]


def _count_rows(path: Path) -> int:
    """Count data rows without parsing: lines after the header."""
    data = path.read_bytes()
    lines = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
    return max(lines - 1, 0)


def drop_sequences(split: GUESplit, exclude: set[str]) -> GUESplit:
    """A copy of ``split`` without the rows whose sequence is in ``exclude``."""
    keep = [i for i, seq in enumerate(split.sequences) if seq not in exclude]
    return GUESplit(
        sequences=[split.sequences[i] for i in keep],
        labels=split.labels[keep],
        path=split.path,
        sha256=split.sha256,
    )


def scan_gue_dir(root: str | Path, validate: bool = True) -> list[DatasetStatus]:
    """Report which GUE datasets and splits ``root`` holds, in registry order.

    Args:
        root: Folder holding the GUE layout ``<root>/<group>/<dataset>/{train,dev,test}.csv``.
        validate: Read every present split with :func:`read_split`, so a bad file raises.
            With ``False`` rows are only counted (faster, no checks).

    Returns:
        One status per registry dataset whose folder exists under ``root``.

    Raises:
        AblateError: if ``root`` is not a folder, holds none of the GUE datasets, or (with
            ``validate``) a split file is invalid.
    """
    return _scan(root, validate)[0]


def read_gue_dir(root: str | Path) -> tuple[list[DatasetStatus], dict[str, dict[str, GUESplit]]]:
    """:func:`scan_gue_dir` with validation, and every split it read: ``{key: {split: rows}}``.

    Raises:
        AblateError: as :func:`scan_gue_dir`.
    """
    return _scan(root, True)


def _scan(root: str | Path,
          validate: bool) -> tuple[list[DatasetStatus], dict[str, dict[str, GUESplit]]]:
    root = Path(root)
    if not root.is_dir():
        raise AblateError(
            f"GUE folder {root} does not exist. Fix: pass the folder that holds the layout "
            f"{LAYOUT_HINT}"
        )
    statuses = []
    splits: dict[str, dict[str, GUESplit]] = {}
    for key, dataset in REGISTRY.items():
        folder = root / dataset.group / dataset.name
        if not folder.is_dir():
            continue
        rows: dict[str, int | None] = {}
        loaded: dict[str, GUESplit] = {}
        for split in SPLITS:
            path = folder / f"{split}.csv"
            if not path.is_file():
                rows[split] = None
            elif validate:
                loaded[split] = read_split(root, key, split)
                rows[split] = len(loaded[split])
            else:
                rows[split] = _count_rows(path)
        in_train = {}
        if "train" in loaded:
            train = set(loaded["train"].sequences)
            in_train = {
                split: sum(seq in train for seq in loaded[split].sequences)
                for split in ("dev", "test")
                if split in loaded
            }
        statuses.append(DatasetStatus(key=key, path=folder, rows=rows, in_train=in_train))
        if loaded:
            splits[key] = loaded
    if not statuses:
        raise AblateError(
            f"{root} holds none of the GUE datasets. Fix: pass the folder that holds the layout "
            f"{LAYOUT_HINT}, e.g. <root>/prom/prom_core_tata/train.csv"
        )
    return statuses, splits


@dataclass
class GUECheck:
    """What ``ablate data check`` reports of a GUE folder.

    Attributes:
        statuses: One per dataset present (rows per split, exact dev/test duplicates of train).
        overlap: Cross-task overlap: for each ordered pair of datasets (A, B) with a non-zero
            count, A's dev/test rows that equal or lie inside a row of B's train split, and
            those whose reverse complement does.
        caveats: Composition-matched negatives, per dataset present.
    """

    statuses: list[DatasetStatus]
    overlap: CrossTaskOverlap
    caveats: list[CompositionCaveat]


def check_gue_dir(root: str | Path) -> GUECheck:
    """Validate every split under ``root`` and measure cross-task overlap and caveats.

    Each split file is read once; the overlap runs one Aho-Corasick automaton over all dev and
    test sequences and scans each train split once (about 10 s of CPU on the full GUE copy).

    Raises:
        AblateError: as :func:`scan_gue_dir`.
    """
    from ablate.data.caveats import composition_caveat
    from ablate.leakage import cross_task_overlap

    statuses, splits = read_gue_dir(root)
    held_out = {
        key: {s: loaded[s].sequences for s in ("dev", "test") if s in loaded}
        for key, loaded in splits.items()
    }
    trains = {key: loaded["train"].sequences for key, loaded in splits.items()
              if "train" in loaded}
    overlap = cross_task_overlap({k: v for k, v in held_out.items() if v}, trains)
    caveats = [composition_caveat(key, loaded) for key, loaded in splits.items()]
    return GUECheck(statuses, overlap, caveats)
