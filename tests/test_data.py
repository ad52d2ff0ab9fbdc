"""Tests of the GUE registry, loader and scanner, and of the synthetic data generator."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ablate.data.gue import (
    REGISTRY,
    SPLITS,
    check_gue_dir,
    get_dataset,
    read_gue_dir,
    read_split,
    scan_gue_dir,
    split_path,
)
from ablate.data.synthetic import write_synthetic_gue
from ablate.errors import AblateError

GUE_DIR = os.environ.get("ABLATE_GUE_DIR")
needs_gue = pytest.mark.skipif(not GUE_DIR, reason="ABLATE_GUE_DIR is not set")

KEY = "prom/prom_core_tata"  # 70 bp, 2 classes: small and quick


# --- registry ---------------------------------------------------------------------------------


def test_registry_has_the_28_gue_datasets() -> None:
    assert len(REGISTRY) == 28
    groups = Counter(d.group for d in REGISTRY.values())
    assert groups == {"EMP": 10, "mouse": 5, "prom": 6, "splice": 1, "tf": 5, "virus": 1}
    assert all(key == d.key for key, d in REGISTRY.items())


def test_metrics_and_shapes() -> None:
    metrics = Counter(d.metric for d in REGISTRY.values())
    assert metrics == {"mcc": 27, "f1_macro": 1}
    covid = get_dataset("virus/covid")
    assert (covid.metric, covid.num_classes, covid.length_bp) == ("f1_macro", 9, 1000)
    assert covid.sizes == (73335, 9167, 9166)
    splice = get_dataset("splice/reconstructed")
    assert (splice.num_classes, splice.length_bp) == (3, 400)
    assert get_dataset("prom/prom_core_all").length_bp == 70
    assert get_dataset("prom/prom_300_all").length_bp == 300
    assert get_dataset("EMP/H3").sizes == (11971, 1497, 1497)
    assert get_dataset("tf/0").sizes == (32378, 1000, 1000)


def test_unknown_key_names_it_and_lists_known_keys() -> None:
    with pytest.raises(AblateError, match="prom/nope") as err:
        get_dataset("prom/nope")
    assert "prom/prom_core_tata" in str(err.value)


def test_split_path(tmp_path: Path) -> None:
    assert split_path(tmp_path, "tf/3", "dev") == tmp_path / "tf" / "3" / "dev.csv"
    with pytest.raises(AblateError, match="valid"):
        split_path(tmp_path, "tf/3", "valid")


# --- real GUE data ----------------------------------------------------------------------------


@needs_gue
def test_read_real_split() -> None:
    split = read_split(GUE_DIR, KEY, "train")
    assert len(split) == 4904
    assert split.labels.dtype == np.int64
    assert set(split.labels.tolist()) == {0, 1}
    assert {len(s) for s in split.sequences} == {70}
    assert len(split.sha256) == 64


@needs_gue
def test_read_real_split_with_n_and_short_sequences() -> None:
    prom = read_split(GUE_DIR, "prom/prom_300_all", "dev")
    assert any("N" in s for s in prom.sequences)
    emp = read_split(GUE_DIR, "EMP/H3K14ac", "dev")
    assert min(len(s) for s in emp.sequences) < 500


@needs_gue
def test_scan_real_gue() -> None:
    statuses = scan_gue_dir(GUE_DIR)
    assert len(statuses) == 27
    assert "virus/covid" not in {s.key for s in statuses}
    assert sum(s.complete for s in statuses) == 13
    assert sum(s.missing == ["train"] for s in statuses) == 14
    for status in statuses:
        sizes = dict(zip(SPLITS, REGISTRY[status.key].sizes, strict=True))
        for split, rows in status.rows.items():
            assert rows is None or rows == sizes[split], (status.key, split)
    fast = scan_gue_dir(GUE_DIR, validate=False)
    assert [s.rows for s in fast] == [s.rows for s in statuses]


@needs_gue
def test_missing_split_names_the_expected_file() -> None:
    with pytest.raises(AblateError, match="missing split file") as err:
        read_split(GUE_DIR, "EMP/H3", "train")
    assert str(Path(GUE_DIR) / "EMP" / "H3" / "train.csv") in str(err.value)


# --- validation of bad files ------------------------------------------------------------------


def _write(root: Path, content: bytes, split: str = "train") -> Path:
    path = split_path(root, KEY, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


GOOD_ROW = b"ACGTACGT,1\n"


@pytest.mark.parametrize(
    ("content", "line", "words"),
    [
        (b"", 1, "empty"),
        (b"sequence,label\n", 1, "no rows"),
        (b"seq,label\nACGT,0\n", 1, "header"),
        (b"sequence,label,extra\nACGT,0\n", 1, "header"),
        (b"sequence,label\n" + GOOD_ROW + b"ACGT,0,1\n", 3, "3 fields"),
        (b"sequence,label\n" + GOOD_ROW + b"ACGT\n", 3, "1 fields"),
        (b"sequence,label\n" + GOOD_ROW + b"\n" + GOOD_ROW, 3, "0 fields"),
        (b"sequence,label\n" + GOOD_ROW * 3 + b"ACGUACGT,0\n", 5, "'U' at column 4"),
        (b"sequence,label\nAC GT,0\n", 2, "' ' at column 3"),
        (b"sequence,label\n,0\n", 2, "empty sequence"),
        (b"sequence,label\n" + GOOD_ROW + b"ACGT,one\n", 3, "not an integer"),
        (b"sequence,label\nACGT,1.0\n", 2, "not an integer"),
        (b"sequence,label\nACGT,\n", 2, "not an integer"),
        (b"sequence,label\n" + GOOD_ROW + b"ACGT,2\n", 3, "outside [0, 2)"),
        (b"sequence,label\nACGT,-1\n", 2, "outside [0, 2)"),
        (b"sequence,label\nAC\xffGT,0\n", 2, "UTF-8"),
    ],
)
def test_bad_file_names_file_line_and_problem(
    tmp_path: Path, content: bytes, line: int, words: str
) -> None:
    path = _write(tmp_path, content)
    with pytest.raises(AblateError) as err:
        read_split(tmp_path, KEY, "train")
    message = str(err.value)
    assert str(path) in message
    assert f"line {line}:" in message
    assert words in message
    assert "Fix:" in message


def test_missing_split_file(tmp_path: Path) -> None:
    _write(tmp_path, b"sequence,label\n" + GOOD_ROW, split="dev")
    with pytest.raises(AblateError, match="missing split file") as err:
        read_split(tmp_path, KEY, "train")
    assert "train.csv" in str(err.value)


def test_good_file_is_read_and_upper_cased(tmp_path: Path) -> None:
    path = _write(tmp_path, b"sequence,label\nacgtn,0\r\nACGTN,1\n")
    split = read_split(tmp_path, KEY, "train")
    assert split.sequences == ["ACGTN", "ACGTN"]
    assert split.labels.tolist() == [0, 1]
    assert split.path == path


def test_scan_rejects_missing_or_unrelated_folders(tmp_path: Path) -> None:
    with pytest.raises(AblateError, match="does not exist"):
        scan_gue_dir(tmp_path / "absent")
    (tmp_path / "something").mkdir()
    with pytest.raises(AblateError, match="<group>/<dataset>"):
        scan_gue_dir(tmp_path)


def test_scan_validates_present_files(tmp_path: Path) -> None:
    _write(tmp_path, b"sequence,label\n" + GOOD_ROW)
    _write(tmp_path, b"sequence,label\nACGT,7\n", split="dev")
    with pytest.raises(AblateError, match="line 2"):
        scan_gue_dir(tmp_path)
    (status,) = scan_gue_dir(tmp_path, validate=False)
    assert status.rows == {"train": 1, "dev": 1, "test": None}
    assert status.missing == ["test"] and not status.complete


def test_read_gue_dir_returns_the_splits_it_read(tmp_path: Path) -> None:
    _write(tmp_path, b"sequence,label\n" + GOOD_ROW)
    _write(tmp_path, b"sequence,label\nacgtacgt,0\nTTTTGGGG,1\n", split="dev")
    statuses, splits = read_gue_dir(tmp_path)
    assert statuses == scan_gue_dir(tmp_path)
    assert list(splits) == [KEY] and list(splits[KEY]) == ["train", "dev"]
    assert splits[KEY]["dev"].sequences == ["ACGTACGT", "TTTTGGGG"]
    assert statuses[0].in_train == {"dev": 1}


def test_check_gue_dir_reports_overlap_and_caveats(tmp_path: Path) -> None:
    _write(tmp_path, b"sequence,label\n" + GOOD_ROW + b"GGGGCCCCAAAA,0\n")
    _write(tmp_path, b"sequence,label\nTTGGGGCCCCAAAATT,1\nCCCA,0\n", split="dev")
    check = check_gue_dir(tmp_path)
    (pair,) = check.overlap.pairs  # CCCA lies inside a train row (its reverse complement not)
    assert (pair.held_out, pair.train, pair.hits) == (KEY, KEY, {"dev": (1, 0)})
    (caveat,) = check.caveats
    assert caveat.task == KEY and set(caveat.negatives_matched) == {"train", "dev"}


# --- synthetic data ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_gue(tmp_path_factory.mktemp("synthetic"), scale=0.02, seed=3)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_synthetic_is_deterministic(synthetic_root: Path, tmp_path: Path) -> None:
    again = write_synthetic_gue(tmp_path / "again", scale=0.02, seed=3)
    assert _files(again) == _files(synthetic_root)
    other = write_synthetic_gue(tmp_path / "other", scale=0.02, seed=4, tasks=[KEY])
    assert _files(other)[f"{KEY}/train.csv"] != _files(synthetic_root)[f"{KEY}/train.csv"]


def test_synthetic_task_content_does_not_depend_on_other_tasks(
    synthetic_root: Path, tmp_path: Path
) -> None:
    only = write_synthetic_gue(tmp_path, scale=0.02, seed=3, tasks=["tf/2", KEY])
    assert sorted(p.parent.name for p in only.rglob("train.csv")) == ["2", "prom_core_tata"]
    for split in SPLITS:
        path = f"{KEY}/{split}.csv"
        assert (only / path).read_bytes() == (synthetic_root / path).read_bytes()


def test_synthetic_layout_sizes_and_classes(synthetic_root: Path) -> None:
    statuses = scan_gue_dir(synthetic_root)
    assert len(statuses) == 28 and all(s.complete for s in statuses)
    assert "synthetic" in (synthetic_root / "SYNTHETIC.md").read_text().lower()
    assert not [p for p in synthetic_root.rglob("*") if p.name.startswith(".")]
    for status in statuses:
        dataset = REGISTRY[status.key]
        for split, published in zip(SPLITS, dataset.sizes, strict=True):
            data = read_split(synthetic_root, status.key, split)
            expected = max(round(published * 0.02), 8 * dataset.num_classes)
            assert len(data) == expected, (status.key, split)
            assert {len(s) for s in data.sequences} == {dataset.length_bp}
            counts = np.bincount(data.labels, minlength=dataset.num_classes)
            assert len(counts) == dataset.num_classes
            assert counts.max() - counts.min() <= 1, (status.key, split)


def test_synthetic_overwrites_in_place(tmp_path: Path) -> None:
    write_synthetic_gue(tmp_path, scale=0.02, seed=1, tasks=[KEY])
    write_synthetic_gue(tmp_path, scale=0.03, seed=1, tasks=[KEY])
    assert len(read_split(tmp_path, KEY, "train")) == round(4904 * 0.03)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"scale": 0}, "scale"),
        ({"scale": -0.5}, "scale"),
        ({"scale": 11}, "scale"),
        ({"scale": float("nan")}, "scale"),
        ({"seed": -1}, "seed"),
        ({"tasks": ["prom/nope"]}, "prom/nope"),
        ({"tasks": []}, "tasks"),
    ],
)
def test_synthetic_rejects_bad_arguments(tmp_path: Path, kwargs: dict, words: str) -> None:
    with pytest.raises(AblateError, match=words):
        write_synthetic_gue(tmp_path, **kwargs)
    assert list(tmp_path.iterdir()) == []


def _kmer_counts(sequences: list[str], k: int = 4) -> np.ndarray:
    """Counts of every k-mer of ACGT in each sequence (sequences of equal length)."""
    codes = np.frombuffer("".join(sequences).encode(), dtype=np.uint8).reshape(len(sequences), -1)
    digits = np.searchsorted(np.frombuffer(b"ACGT", dtype=np.uint8), codes)
    index = np.zeros((codes.shape[0], codes.shape[1] - k + 1), dtype=np.int64)
    for i in range(k):
        index = index * 4 + digits[:, i : i + index.shape[1]]
    features = np.zeros((len(sequences), 4**k))
    np.add.at(features, (np.arange(len(sequences))[:, None], index), 1)
    return features


def test_synthetic_signal_is_learnable(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import matthews_corrcoef

    root = write_synthetic_gue(tmp_path, scale=0.1, seed=0, tasks=[KEY])
    train = read_split(root, KEY, "train")
    dev = read_split(root, KEY, "dev")
    model = LogisticRegression(max_iter=2000).fit(_kmer_counts(train.sequences), train.labels)
    mcc = matthews_corrcoef(dev.labels, model.predict(_kmer_counts(dev.sequences)))
    assert mcc > 0.3


def _motif_windows(sequences: list[str], labels: list[int], length: int) -> set[str]:
    """The windows of ``length`` bases found in at least 60% of the class-1 sequences."""
    counts: dict[str, int] = {}
    positives = [s for s, y in zip(sequences, labels, strict=True) if y == 1]
    for seq in positives:
        for window in {seq[i:i + length] for i in range(len(seq) - length + 1)}:
            counts[window] = counts.get(window, 0) + 1
    return {w for w, n in counts.items() if n >= 0.6 * len(positives)}


def test_synthetic_signal_options_plant_long_exact_motifs_shared_by_a_group(tmp_path: Path):
    from ablate.data.synthetic import Signal

    tasks = [KEY, "prom/prom_core_all", "tf/0"]
    shared = write_synthetic_gue(tmp_path / "shared", scale=0.05, seed=2, tasks=tasks,
                                 signal=Signal(motif_length=24, mutation=0.0, shared_motifs=True))
    motifs = {}
    for key in tasks:
        train = read_split(shared, key, "train")
        motifs[key] = _motif_windows(list(train.sequences), list(train.labels), 24)
        assert len(motifs[key]) == 1, key  # one exact 24-base motif for class 1
    assert motifs[KEY] == motifs["prom/prom_core_all"]  # one group: the same motif
    assert motifs[KEY] != motifs["tf/0"]  # another group: its own
    assert "share their motifs" in (shared / "SYNTHETIC.md").read_text()
    # Without sharing, each dataset draws its own.
    apart = write_synthetic_gue(tmp_path / "apart", scale=0.05, seed=2, tasks=tasks[:2],
                                signal=Signal(motif_length=24, mutation=0.0))
    found = [_motif_windows(list(t.sequences), list(t.labels), 24)
             for t in (read_split(apart, k, "train") for k in tasks[:2])]
    assert found[0] != found[1]


def test_synthetic_default_signal_keeps_its_files(synthetic_root: Path, tmp_path: Path) -> None:
    from ablate.data.synthetic import Signal

    again = write_synthetic_gue(tmp_path, scale=0.02, seed=3, tasks=[KEY], signal=Signal())
    for split in ("train", "dev", "test"):
        path = f"{KEY}/{split}.csv"
        assert (again / path).read_bytes() == (synthetic_root / path).read_bytes()
    assert Signal().folder_suffix() == ""
    assert Signal(24, 0.0, True).folder_suffix() == "-motif24-mut0-shared"


def test_synthetic_refuses_motifs_that_do_not_fit(tmp_path: Path) -> None:
    from ablate.data.synthetic import Signal

    with pytest.raises(AblateError, match="do not fit"):
        write_synthetic_gue(tmp_path, scale=0.02, tasks=[KEY], signal=Signal(motif_length=40))
