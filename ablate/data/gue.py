"""The GUE benchmark: registry of its 28 datasets, a strict CSV loader and a folder scanner.

GUE (Genome Understanding Evaluation, from the DNABERT-2 paper) ships every dataset as
``<root>/<group>/<dataset>/{train,dev,test}.csv`` with the header ``sequence,label``. This module
knows the shape of each dataset (sequence length, number of classes, metric, published sizes),
reads one split with strict validation, reports which datasets and splits a folder holds, and
checks a folder for dev/test rows found in other datasets' train splits and for
composition-matched negatives (:func:`check_gue_dir`, behind ``ablate data check``).

The loader (:func:`read_split`) takes a file as spreadsheet programs and Windows tools save it
as the same data: a byte-order mark, UTF-16, CRLF or CR line ends, quotes, spaces around values,
the header in any case, a semicolon or tab delimiter, lower-case bases. Every problem a user can
fix (missing file, bad header, bad character, bad label, ragged row...) raises
:class:`~ablate.errors.AblateError` with the file, the line and the fix in its message. A split
is identified by the sha256 of its rows as read (:func:`rows_sha256`), which keys its shard sets,
and by the sha256 of its bytes, which provenance records.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import re
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
        sha256: Hex digest of the rows as read (:func:`rows_sha256`), not of the file's bytes:
            the same rows saved with another encoding, line ending, quoting, delimiter or
            letter case have the same digest. Shard sets and trained tokenizers are keyed by it.
        file_sha256: Hex digest of the file's bytes, as provenance records it.
    """

    sequences: list[str]
    labels: np.ndarray
    path: Path
    sha256: str
    file_sha256: str = ""

    def __len__(self) -> int:
        return len(self.sequences)


def rows_sha256(sequences: list[str], labels: np.ndarray | list[int]) -> str:
    """sha256 of rows written as the canonical GUE file: header ``sequence,label``, one
    ``<SEQUENCE>,<label>`` line per row, LF line ends, no quotes, upper case.

    A file already in that form (every file of the official release) has this digest as its
    file sha256, so its shard sets keep the keys they had when the file's bytes were hashed.
    """
    labels = list(map(str, np.asarray(labels).tolist()))
    lines = [",".join(HEADER), *map(",".join, zip(sequences, labels, strict=True)), ""]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


_DNA = "ACGTNacgtn"
_VALID_SEQUENCE = re.compile(f"[{_DNA}]+")
_INTEGER = re.compile(r"^[+-]?[0-9]+$")
# Detected from the header line alone, in this order: a header holding a comma is read as
# comma-separated, else one holding a semicolon (Excel in locales with a decimal comma), else
# one holding a tab (Excel's "Unicode text" and "Text (tab delimited)").
_DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab"}
# Excel reads (and some tools write) a first line "sep=;" naming the delimiter.
_FIRST_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)?")
_SEP_LINE = re.compile(r"^sep=([^\r\n])\r?\n?$", re.IGNORECASE)
_SAVE_AS_UTF8 = (
    "save it as UTF-8 (Excel: 'CSV UTF-8 (Comma delimited)'; UTF-16 with a byte-order mark, "
    "Excel's 'Unicode Text', is read too)"
)


def _fail(path: Path, line: int, problem: str, fix: str) -> AblateError:
    return AblateError(f"{path}, line {line}: {problem}. Fix: {fix}")


def _explain_bad_sequence(path: Path, line: int, sequence: str) -> AblateError:
    """Build the error for a sequence that failed the fast check."""
    if not sequence:
        return _fail(path, line, "empty sequence", "give every row a DNA sequence")
    for column, char in enumerate(sequence, start=1):
        if char not in _DNA:
            return _fail(
                path,
                line,
                f"character {char!r} at column {column} of the sequence is not one of ACGTN",
                "sequences may only contain A, C, G, T or N (any case); "
                "replace or remove that character",
            )
    # Not reachable: the check only fails on empty input or a character outside ACGTN.
    return _fail(path, line, "invalid sequence", "use only the letters ACGTN")


def _label_value(label: str, num_classes: int) -> int | None:
    """The class index a label names ("1", "+1", "01"), or None when it names none."""
    if _INTEGER.match(label) and 0 <= int(label) < num_classes:
        return int(label)
    return None


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


def _line_at(text: str, position: int) -> int:
    """1-based line of ``text[position]``, with LF, CRLF and lone CR line ends."""
    head = text[:position]
    return head.count("\n") + head.count("\r") - head.count("\r\n") + 1


def _decode(path: Path, data: bytes, strict: bool = True) -> str:
    """The file's text: UTF-8 (a byte-order mark is dropped) or UTF-16 with a byte-order mark.

    With ``strict``, undecodable bytes and NUL characters (UTF-16 without a byte-order mark)
    raise AblateError naming the line; without it they are replaced.
    """
    encoding, start = "utf-8", 0
    if data.startswith(codecs.BOM_UTF8):
        start = len(codecs.BOM_UTF8)
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"  # reads the byte order from the mark and drops it
    if not strict:
        return data[start:].decode(encoding, errors="replace")
    try:
        text = data[start:].decode(encoding)
    except UnicodeDecodeError as err:
        before = data[start : start + err.start].decode(encoding, errors="replace")
        name = "UTF-8" if encoding == "utf-8" else "UTF-16"
        raise _fail(
            path, _line_at(before, len(before)), f"the file is not valid {name} text",
            _SAVE_AS_UTF8,
        ) from None
    nul = text.find("\0")
    if nul >= 0:
        raise _fail(
            path, _line_at(text, nul),
            "the file holds NUL characters (UTF-16 or UTF-32 text without a byte-order mark?)",
            _SAVE_AS_UTF8,
        )
    return text


def _looks_like_row(fields: list[str]) -> bool:
    return (len(fields) >= 2 and _VALID_SEQUENCE.fullmatch(fields[0]) is not None
            and _INTEGER.match(fields[1]) is not None)


class _Table:
    """A split file's header and rows as Python's ``csv`` module parses them.

    The delimiter is taken from the header line (a ``sep=X`` line before it, as Excel reads,
    wins); fields may be double-quoted; LF, CRLF and lone CR line ends are all line ends.
    ``offset`` is the number of lines before the header (1 after a ``sep=`` line).
    """

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.text = text
        first = _FIRST_LINE.match(text)
        sep = _SEP_LINE.match(first.group())
        self.offset = 1 if sep else 0
        header_line = _FIRST_LINE.match(text, first.end()).group() if sep else first.group()
        if sep:
            self.delimiter = sep.group(1)
        else:
            found = [d for d in _DELIMITERS if d in header_line]
            self.delimiter = found[0] if found else ","
        self.header = next(csv.reader([header_line], delimiter=self.delimiter,
                                      skipinitialspace=True), [])
        self.names = [name.strip().lower() for name in self.header]

    @property
    def header_line(self) -> int:
        return self.offset + 1

    def reader(self) -> Any:
        """A reader positioned after the header; its ``line_num`` counts from the header."""
        lines = io.StringIO(self.text, newline="")
        for _ in range(self.offset):
            next(lines, None)
        reader = csv.reader(lines, delimiter=self.delimiter, skipinitialspace=True)
        next(reader, None)
        return reader

    def check_header(self) -> tuple[int, int]:
        """Column indices of sequence and label; AblateError when the header lacks one, names
        one twice or holds another column."""
        shown = self.delimiter.join(self.header)
        fix = ("make the first line 'sequence,label' (any case; quotes and spaces around the "
               "names are fine)")
        twice = [n for n in HEADER if self.names.count(n) > 1]
        if twice:
            raise _fail(self.path, self.header_line,
                        f"header {shown!r} names the column {twice[0]!r} twice", fix)
        missing = [n for n in HEADER if n not in self.names]
        unknown = [h.strip() for h, n in zip(self.header, self.names, strict=True)
                   if n not in HEADER]
        if missing and _looks_like_row([h.strip() for h in self.header]):
            raise _fail(self.path, self.header_line,
                        f"header missing: the line {shown!r} is a data row",
                        "insert the line 'sequence,label' above it")
        if missing or unknown:
            parts = [f"no {n!r} column" for n in missing]
            parts += [f"unknown column {n!r}" for n in unknown]
            raise _fail(self.path, self.header_line,
                        f"header is {shown!r}, expected 'sequence,label' ({', '.join(parts)})",
                        fix)
        return self.names.index("sequence"), self.names.index("label")

    def rows(self) -> list[list[str]]:
        """Every row after the header, trailing blank rows left out."""
        reader = self.reader()
        try:
            rows = list(reader)
        except csv.Error as err:
            raise _fail(self.path, reader.line_num + self.offset,
                        f"the line cannot be read as CSV ({err})",
                        "check its quotes and delimiters; a field may hold at most "
                        f"{csv.field_size_limit():,} characters") from None
        while rows and not "".join(rows[-1]).strip():
            rows.pop()
        return rows

    def raise_first_problem(self, columns: tuple[int, int], num_classes: int) -> None:
        """Walk the rows with their line numbers and raise AblateError at the first bad one."""
        reader = self.reader()
        numbered = []
        while True:
            start = reader.line_num + 1 + self.offset
            row = next(reader, None)
            if row is None:
                break
            numbered.append((start, row))
        while numbered and not "".join(numbered[-1][1]).strip():
            numbered.pop()
        name = _DELIMITERS.get(self.delimiter, repr(self.delimiter))
        d = "<tab>" if self.delimiter == "\t" else self.delimiter
        for line, row in numbered:
            if any("\n" in f or "\r" in f for f in row):
                raise _fail(self.path, line,
                            "a double-quoted field starts on this line and runs over "
                            "several lines (a quote is not closed, or holds a line break)",
                            'close each quote on the line it opens: a quoted row reads '
                            '"<sequence>","<label>"')
            if [f.strip().lower() for f in row] == self.names:
                raise _fail(self.path, line, "the header is repeated here",
                            "remove this line (were two files joined?)")
            if len(row) != len(HEADER):
                raise _fail(
                    self.path, line,
                    f"row has {len(row)} fields, expected 2 (sequence{d}label)",
                    f"write each row as '<sequence>{d}<label>' with no extra {name}s and no "
                    "blank lines between rows",
                )
            sequence, label = row[columns[0]].strip(), row[columns[1]].strip()
            if not _VALID_SEQUENCE.fullmatch(sequence):
                raise _explain_bad_sequence(self.path, line, sequence)
            if _label_value(label, num_classes) is None:
                raise _explain_bad_label(self.path, line, label, num_classes)
        # Not reachable: only called after the fast checks found a problem.
        raise AblateError(f"{self.path}: cannot be read. Fix: write it as 'sequence,label' rows")


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

    Reads what spreadsheet programs and Windows tools write as well as the original files: a
    UTF-8 byte-order mark, UTF-16 with a byte-order mark, CRLF or CR line ends, no final line
    end, trailing blank lines, double-quoted fields, spaces around values, a header in any case
    or with spaces (``Sequence, Label``, in either order), and a semicolon or tab delimiter
    (taken from the header line, or from a ``sep=`` line before it). Sequences are upper-cased.

    Args:
        root: Folder holding the GUE layout ``<root>/<group>/<dataset>/{train,dev,test}.csv``.
        key: Registry key ``"group/name"``.
        split: ``"train"``, ``"dev"`` or ``"test"``.

    Returns:
        The sequences (upper-cased), their labels, the rows' sha256 (:func:`rows_sha256`) and
        the file's sha256.

    Raises:
        AblateError: if the file is missing, empty or not UTF-8/UTF-16 text, the header lacks
            a ``sequence`` or ``label`` column, names one twice or holds another one, a row
            does not have exactly two fields, a sequence is empty or has a character outside
            ``ACGTN``, or a label is not an integer in ``[0, num_classes)``. The message names
            the file, the line (the header is line 1) and the fix.
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
    table = _Table(path, _decode(path, data))
    columns = table.check_header()
    rows = table.rows()
    if not rows:
        raise _fail(path, table.header_line, "the file has a header but no rows",
                    "add '<sequence>,<label>' rows")

    # Fast checks over whole columns; only a file that fails one is walked row by row, to
    # name the first bad line.
    sequences = labels = None
    if set(map(len, rows)) == {len(HEADER)}:
        sequences = list(map(itemgetter(columns[0]), rows))
        # What is left after removing upper-case bases, then after removing lower-case ones.
        upper_rest = "".join(sequences).encode("utf-8").translate(None, b"ACGTN")
        rest = upper_rest.translate(None, b"acgtn")
        if rest:  # spaces around the values, or a bad character
            sequences = list(map(str.strip, sequences))
            upper_rest = "".join(sequences).encode("utf-8").translate(None, b"ACGTN")
            rest = upper_rest.translate(None, b"acgtn")
        if rest or not all(sequences):
            sequences = None
        elif upper_rest:
            sequences = [seq.upper() for seq in sequences]
        label_of = {str(c): c for c in range(dataset.num_classes)}
        texts = list(map(itemgetter(columns[1]), rows))
        labels = list(map(label_of.get, texts))
        if None in labels:
            labels = [_label_value(t.strip(), dataset.num_classes) if v is None else v
                      for t, v in zip(texts, labels, strict=True)]
            if None in labels:
                labels = None
    if sequences is None or labels is None:
        table.raise_first_problem(columns, dataset.num_classes)
    return GUESplit(
        sequences=sequences,
        labels=np.asarray(labels, dtype=np.int64),
        path=path,
        sha256=rows_sha256(sequences, labels),
        file_sha256=hashlib.sha256(data).hexdigest(),
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
    """Count data rows without parsing: lines after the header (and after a ``sep=`` line),
    with any line ends, trailing blank lines left out."""
    text = _decode(path, path.read_bytes(), strict=False).rstrip(" \t\r\n,;")
    if not text:
        return 0
    lines = text.count("\n") + text.count("\r") - text.count("\r\n") + 1
    before_rows = 2 if _SEP_LINE.match(next(io.StringIO(text, newline=""))) else 1
    return max(lines - before_rows, 0)


def drop_sequences(split: GUESplit, exclude: set[str]) -> GUESplit:
    """A copy of ``split`` without the rows whose sequence is in ``exclude``."""
    keep = [i for i, seq in enumerate(split.sequences) if seq not in exclude]
    return GUESplit(
        sequences=[split.sequences[i] for i in keep],
        labels=split.labels[keep],
        path=split.path,
        sha256=split.sha256,
        file_sha256=split.file_sha256,
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
