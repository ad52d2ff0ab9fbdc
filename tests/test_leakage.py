"""The leakage check: dev/test sequences that also occur in train, and dropping them."""

from pathlib import Path

from ablate.data.gue import scan_gue_dir
from ablate.shards import ShardManifest, prepare_task_inputs, resolve_tokenizer
from ablate.tokenization import parse_tokenizer_choice

SEQ = ["ACGT" * 25, "TTGA" * 25, "CCGG" * 25, "GATC" * 25]


def write_task(root: Path) -> Path:
    folder = root / "tf" / "0"
    folder.mkdir(parents=True)
    (folder / "train.csv").write_text("sequence,label\n" + "".join(
        f"{s},{i % 2}\n" for i, s in enumerate(SEQ)))
    (folder / "dev.csv").write_text(f"sequence,label\n{SEQ[0]},0\n{'A' * 100},1\n")
    (folder / "test.csv").write_text(f"sequence,label\n{SEQ[1].lower()},1\n{SEQ[2]},0\n")
    return root


def test_scan_counts_rows_also_in_train(tmp_path):
    (status,) = scan_gue_dir(write_task(tmp_path))
    assert status.in_train == {"dev": 1, "test": 2}  # case-insensitive: sequences are upper-cased


def test_study_can_drop_duplicates_from_train(tmp_path):
    root = write_task(tmp_path / "gue")
    char = parse_tokenizer_choice("char")
    tok, tok_file = resolve_tokenizer(char, gue_root=root, tasks=["tf/0"],
                                      work_dir=tmp_path / "w")
    kept = prepare_task_inputs(root, "tf/0", char, tok, tok_file, work_dir=tmp_path / "w")
    dropped = prepare_task_inputs(root, "tf/0", char, tok, tok_file, work_dir=tmp_path / "w",
                                  drop_train_duplicates=True)
    assert ShardManifest.read(Path(kept.splits["train"])).num_rows == 4
    assert ShardManifest.read(Path(dropped.splits["train"])).num_rows == 1
    assert dropped.splits["dev"] == kept.splits["dev"]  # only train changes
