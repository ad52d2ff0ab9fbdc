"""The GUE loader on the CSV files spreadsheet programs and Windows tools write.

Every variant is a real GUE split rewritten the way a tool writes it (Excel's "CSV UTF-8",
its semicolon and "Unicode Text" exports, pandas, old Mac line ends, ...). Each must load to the
same rows, and key the same shard sets, as the original; files that are truly malformed must
be refused with the file, the line and the fix.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from ablate.cli import app
from ablate.data.caveats import read_composition_caveat
from ablate.data.gue import (
    SPLITS,
    check_gue_dir,
    read_split,
    rows_sha256,
    scan_gue_dir,
    split_path,
)
from ablate.errors import AblateError
from ablate.shards import prepare_task_inputs, resolve_tokenizer, shard_key
from ablate.tokenization import char_tokenizer, parse_tokenizer_choice, tokenizer_hash

KEY = "prom/prom_core_tata"  # 70 bp, 2 classes, 4,904 / 613 / 613 rows


Rows = list[tuple[str, str]]


def _read_rows(path: Path) -> Rows:
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        assert next(reader) == ["sequence", "label"]
        return [(seq, label) for seq, label in reader]


def _csv_text(rows: Rows, header: tuple[str, str] = ("sequence", "label"), **fmt) -> str:
    out = io.StringIO(newline="")
    writer = csv.writer(out, **fmt)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def excel_csv_utf8(rows: Rows) -> bytes:
    """Excel's "CSV UTF-8 (Comma delimited)": byte-order mark, CRLF; here every field quoted."""
    return _csv_text(rows, quoting=csv.QUOTE_ALL).encode("utf-8-sig")


def excel_semicolon(rows: Rows) -> bytes:
    """Excel's CSV in a locale with a decimal comma: semicolons, CRLF, byte-order mark."""
    return _csv_text(rows, delimiter=";").encode("utf-8-sig")


def excel_semicolon_sep_line(rows: Rows) -> bytes:
    """The same with the ``sep=;`` first line Excel reads."""
    return b"sep=;\r\n" + _csv_text(rows, delimiter=";").encode()


def excel_unicode_text(rows: Rows) -> bytes:
    """Excel's "Unicode Text": UTF-16 little-endian with a byte-order mark, tabs, CRLF."""
    return _csv_text(rows, dialect="excel-tab").encode("utf-16")


def utf16_big_endian(rows: Rows) -> bytes:
    return codecs.BOM_UTF16_BE + _csv_text(rows).encode("utf-16-be")


def pandas_windows(rows: Rows) -> bytes:
    """pandas ``to_csv`` as a Windows user calls it: byte-order mark, CRLF, strings quoted."""
    frame = pd.DataFrame({"sequence": [s for s, _ in rows],
                          "label": [int(label) for _, label in rows]})
    out = io.BytesIO()
    frame.to_csv(out, index=False, encoding="utf-8-sig", lineterminator="\r\n",
                 quoting=csv.QUOTE_NONNUMERIC)
    return out.getvalue()


def old_mac_no_final_newline(rows: Rows) -> bytes:
    return _csv_text(rows, lineterminator="\r").rstrip("\r").encode()


def trailing_blank_lines(rows: Rows) -> bytes:
    """CRLF rows, then the empty rows a spreadsheet writes below the data."""
    return (_csv_text(rows) + "\r\n,\r\n,,\r\n\r\n  \r\n").encode()


def lowercase(rows: Rows) -> bytes:
    return _csv_text([(s.lower(), label) for s, label in rows], lineterminator="\n").encode()


def spaces_and_header_case(rows: Rows) -> bytes:
    text = _csv_text([(f"  {s} ", f" {label}  ") for s, label in rows],
                     header=(" Sequence ", "LABEL "), lineterminator="\n")
    return text.encode()


def label_column_first(rows: Rows) -> bytes:
    return _csv_text([(label, s) for s, label in rows], header=("label", "sequence")).encode()


VARIANTS: list[Callable[[Rows], bytes]] = [
    excel_csv_utf8,
    excel_semicolon,
    excel_semicolon_sep_line,
    excel_unicode_text,
    utf16_big_endian,
    pandas_windows,
    old_mac_no_final_newline,
    trailing_blank_lines,
    lowercase,
    spaces_and_header_case,
    label_column_first,
]


def _write(root: Path, split: str, content: bytes) -> Path:
    path = split_path(root, KEY, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


@pytest.fixture(scope="module")
def originals(real_gue: Path) -> dict[str, Rows]:
    return {split: _read_rows(split_path(real_gue, KEY, split)) for split in SPLITS}


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.__name__)
def test_variant_loads_to_the_rows_and_shard_key_of_the_original(
    variant: Callable[[Rows], bytes], real_gue: Path, originals: dict[str, Rows],
    tmp_path: Path,
) -> None:
    content = variant(originals["train"])
    path = _write(tmp_path, "train", content)
    assert content != split_path(real_gue, KEY, "train").read_bytes()

    original = read_split(real_gue, KEY, "train")
    loaded = read_split(tmp_path, KEY, "train")
    assert len(loaded) == 4904
    assert loaded.sequences == original.sequences
    assert np.array_equal(loaded.labels, original.labels)
    assert loaded.labels.dtype == np.int64
    # The rows' digest keys shards; the file digest (provenance) is that of the bytes.
    assert loaded.sha256 == original.sha256 == rows_sha256(original.sequences, original.labels)
    assert loaded.file_sha256 != original.file_sha256
    tok_hash = tokenizer_hash(char_tokenizer())
    assert shard_key(loaded.sha256, tok_hash, 70) == shard_key(original.sha256, tok_hash, 70)
    assert loaded.path == path


def test_original_files_keep_their_shard_keys(real_gue: Path) -> None:
    """For a file in the release's own form the rows' digest is the file's sha256, so shard sets
    made before the digest was taken over rows are still found."""
    for split in SPLITS:
        loaded = read_split(real_gue, KEY, split)
        assert loaded.sha256 == loaded.file_sha256


def test_excel_copy_reuses_the_shard_sets_of_the_original(
    real_gue: Path, originals: dict[str, Rows], tmp_path: Path
) -> None:
    for split in SPLITS:
        _write(tmp_path / "excel", split, excel_csv_utf8(originals[split]))
    choice = parse_tokenizer_choice("char")
    work = tmp_path / "work"
    tok, tok_file = resolve_tokenizer(choice, gue_root=real_gue, tasks=[KEY], work_dir=work)
    first = prepare_task_inputs(real_gue, KEY, choice, tok, tok_file, work_dir=work)
    shard_dirs = sorted(p for p in (work / "shards").rglob("*") if p.is_dir())
    again = prepare_task_inputs(tmp_path / "excel", KEY, choice, tok, tok_file, work_dir=work)
    assert again.splits == first.splits
    assert sorted(p for p in (work / "shards").rglob("*") if p.is_dir()) == shard_dirs


# --- malformed files --------------------------------------------------------------------------

HEAD = "sequence,label\r\n"
GOOD = "ACGTACGTAC,1\r\n"


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        (HEAD + GOOD + "ACGTUCGTAC,0\r\n", 3, "character 'U' at column 5"),
        (HEAD + GOOD * 2 + '"acgt-acgt",0\r\n', 4, "character '-' at column 5"),
        (HEAD + "ACGT ACGT,1\r\n", 2, "character ' ' at column 5"),
        (HEAD + GOOD + "ACGTACGT,yes\r\n", 3, "label 'yes' is not an integer"),
        (HEAD + GOOD + "ACGTACGT,1.0\r\n", 3, "label '1.0' is not an integer"),
        (HEAD + GOOD + "ACGTACGT,2\r\n", 3, "label 2 is outside [0, 2)"),
        (HEAD + GOOD + "ACGTACGT,0,1\r\n", 3, "row has 3 fields, expected 2"),
        (HEAD + GOOD + "ACGTACGT\r\n", 3, "row has 1 fields, expected 2"),
        ("sequence;label\r\n" + "ACGT;1\r\n" + "ACGT;0;1\r\n", 3, "no extra semicolons"),
        (HEAD + GOOD + "\r\n" + GOOD, 3, "row has 0 fields"),
        (HEAD + GOOD + " ,1\r\n", 3, "empty sequence"),
        (HEAD + GOOD + '"ACGT,1\r\nACGT,0\r\n', 3, "a quote is not closed"),
        ("sequence,sequence\r\n" + GOOD, 1, "names the column 'sequence' twice"),
        ("Sequence,label,LABEL\r\n" + GOOD, 1, "names the column 'label' twice"),
        (HEAD + GOOD + HEAD + GOOD, 3, "the header is repeated"),
        ("sequence\r\nACGT\r\n", 1, "no 'label' column"),
        ("sequence,label,source\r\n" + GOOD, 1, "unknown column 'source'"),
        ("seq,label\r\n" + GOOD, 1, "no 'sequence' column"),
        (GOOD * 3, 1, "header missing: the line 'ACGTACGTAC,1' is a data row"),
        ("sep=;\r\nsequence;label\r\nACGT;7\r\n", 3, "label 7 is outside"),
        ("sequence,label\r" + "ACGT,1\r" * 4 + "ACGN,x\r", 6, "label 'x'"),
        (HEAD, 1, "no rows"),
    ],
)
def test_malformed_file_names_file_line_and_fix(
    tmp_path: Path, text: str, line: int, words: str
) -> None:
    path = _write(tmp_path, "dev", codecs.BOM_UTF8 + text.encode())
    with pytest.raises(AblateError) as err:
        read_split(tmp_path, KEY, "dev")
    message = str(err.value)
    assert message.startswith(f"{path}, line {line}: "), message
    assert words in message
    assert "Fix: " in message


def test_utf16_without_byte_order_mark_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "dev", (HEAD + GOOD).encode("utf-16-le"))
    with pytest.raises(AblateError, match="NUL characters") as err:
        read_split(tmp_path, KEY, "dev")
    assert f"{path}, line 1:" in str(err.value) and "save it as UTF-8" in str(err.value)


def test_broken_utf16_names_its_line(tmp_path: Path) -> None:
    data = (HEAD + GOOD * 2).encode("utf-16") + b"\x00\xd8" + "A,1\r\n".encode("utf-16-le")
    path = _write(tmp_path, "dev", data)
    with pytest.raises(AblateError, match="not valid UTF-16") as err:
        read_split(tmp_path, KEY, "dev")
    assert f"{path}, line 4:" in str(err.value)


def test_labels_written_with_a_sign_or_leading_zero(tmp_path: Path) -> None:
    _write(tmp_path, "dev", (HEAD + "ACGT,+1\r\nACGT,00\r\nACGT, 1\r\n").encode())
    assert read_split(tmp_path, KEY, "dev").labels.tolist() == [1, 0, 1]


# --- `ablate data check` ----------------------------------------------------------------------


def test_data_check_passes_on_an_excel_copy_and_fails_on_a_bad_one(
    originals: dict[str, Rows], tmp_path: Path
) -> None:
    good = tmp_path / "excel"
    for split in SPLITS:
        _write(good, split, excel_csv_utf8(originals[split]))
    result = CliRunner().invoke(app, ["data", "check", str(good)])
    assert result.exit_code == 0, result.output
    assert KEY in result.output and "1 datasets found: 1 complete" in result.output

    rows = list(originals["dev"])
    sequence, label = rows[41]
    rows[41] = (sequence[:9] + "R" + sequence[10:], label)  # file line 43, column 10
    bad_path = _write(good, "dev", excel_csv_utf8(rows))
    result = CliRunner().invoke(app, ["data", "check", str(good)])
    assert result.exit_code == 2
    assert (f"error: {bad_path}, line 43: character 'R' at column 10 of the sequence is not one "
            "of ACGTN. Fix: ") in result.output


def test_check_gue_dir_sees_the_same_data_in_an_excel_copy(
    real_gue: Path, originals: dict[str, Rows], tmp_path: Path
) -> None:
    for split in SPLITS:
        _write(tmp_path, split, excel_unicode_text(originals[split]))
    copy = check_gue_dir(tmp_path)
    (status,) = copy.statuses
    assert status.rows == {"train": 4904, "dev": 613, "test": 613}
    assert [s.rows for s in scan_gue_dir(tmp_path, validate=False)] == [status.rows]
    assert copy.caveats == [read_composition_caveat(real_gue, KEY)]
