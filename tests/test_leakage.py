"""Leakage: dev/test sequences found in train (within a task, across tasks, in pretraining
corpora and FASTA windows), and composition-matched negatives."""

import random
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ablate.cli import app
from ablate.corpus import corpus_sequences, prepare_corpus, prepare_corpus_shards
from ablate.data.caveats import (
    caveat_metrics,
    composition_caveat,
    dinucleotide_counts,
    read_composition_caveat,
)
from ablate.data.gue import GUESplit, check_gue_dir, read_split, scan_gue_dir
from ablate.errors import AblateError
from ablate.leakage import SEED_BP, HeldOut, cross_task_overlap, reverse_complement
from ablate.shards import ShardManifest, prepare_task_inputs, resolve_tokenizer
from ablate.spec import CorpusSpec
from ablate.tokenization import parse_tokenizer_choice
from ablate.tracking.schema import MetricName

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


# --- the held-out filter ----------------------------------------------------------------------

def random_dna(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("ACGT") for _ in range(n))


def mutate(seq: str, at: int) -> str:
    return seq[:at] + {"A": "C", "C": "G", "G": "T", "T": "A"}[seq[at]] + seq[at + 1 :]


def test_reverse_complement():
    assert reverse_complement("AACGTN") == "NACGTT"
    assert reverse_complement(reverse_complement("GATTACA")) == "GATTACA"


def test_filter_removes_equal_containing_and_contained_on_both_strands():
    rng = random.Random(0)
    dev, test = random_dna(rng, 60), random_dna(rng, 80)
    held_out = HeldOut({"t/a": {"dev": [dev], "test": [test]}})
    inner = test[10:50]
    cases = {
        "equal": dev,
        "equal rc": reverse_complement(dev),
        "contains": random_dna(rng, 7) + dev + random_dna(rng, 5),
        "contains rc": random_dna(rng, 3) + reverse_complement(dev),
        "contained": inner,
        "contained rc": reverse_complement(inner),
        "one base off": mutate(dev, 45),  # shares the seed, differs after it
        "shorter off": mutate(inner, 3),
        "unrelated": random_dna(rng, 70),
    }
    kept, report = held_out.filter(cases.values())
    assert kept == [cases["one base off"], cases["shorter off"], cases["unrelated"]]
    assert (report.equal, report.contains, report.contained) == (2, 2, 2)
    assert (report.candidates, report.kept, report.removed) == (9, 3, 6)
    assert report.exposure == {"t/a": {"dev": 1, "test": 1}}
    assert report.held_out_rows == {"t/a": {"dev": 1, "test": 1}}
    assert len(mutate(dev, 45)) > SEED_BP > 3  # the near misses do reach the confirming step


def test_filter_keeps_order_counts_rows_and_ignores_case():
    rng = random.Random(1)
    seq = random_dna(rng, 50)
    other = [random_dna(rng, 50) for _ in range(4)]
    held_out = HeldOut({"t": [seq.lower()]})  # a plain list counts as one split
    candidates = [other[0], seq, other[1], seq.lower(), other[2], seq[5:20], other[3]]
    kept, report = held_out.filter(candidates)
    assert kept == other
    assert (report.equal, report.contained) == (2, 1)
    assert report.exposure == {"t": {"held_out": 1}}
    assert held_out.exposure(candidates) == {"t": {"held_out": 1}}
    assert held_out.filter([])[0] == []


def test_held_out_shorter_than_the_seed_and_no_overlap():
    held_out = HeldOut({"t": {"dev": ["GATTACA"]}})
    kept, report = held_out.filter(["CCGATTACACC", "TGTAATC", "CCCCCCCC", "ATTAC"])
    assert kept == ["CCCCCCCC"]
    assert (report.equal, report.contains, report.contained) == (1, 1, 1)
    rng = random.Random(2)
    far = HeldOut({"t": {"dev": [random_dna(rng, 100)]}})
    candidates = [random_dna(rng, 100) for _ in range(50)]
    kept, report = far.filter(candidates)
    assert kept == candidates and report.removed == 0
    assert report.exposure == {"t": {"dev": 0}}


def test_report_metrics_and_summary():
    rng = random.Random(3)
    seq = random_dna(rng, 40)
    _, report = HeldOut({"tf/0": {"dev": [seq], "test": ["ACGT" * 10]}}).filter(
        [seq, random_dna(rng, 40)]
    )
    metrics = report.as_metrics()
    assert metrics[MetricName.LEAKED_REMOVED] == 1.0
    assert metrics[MetricName.CORPUS_SEQUENCES] == 1.0
    assert metrics["corpus_candidates"] == 2.0 and metrics["leaked_equal"] == 1.0
    assert metrics["exposure/tf/0/dev"] == 1.0 and metrics["exposure/tf/0/test"] == 0.0
    assert all(isinstance(v, float) for v in metrics.values())
    assert "removed 1 of 2" in report.summary() and "tf/0 dev 1/1" in report.summary()


def test_held_out_errors_and_digest(tmp_path):
    with pytest.raises(AblateError, match="t .dev., row 2: an empty"):
        HeldOut({"t": {"dev": ["ACGT", ""]}})
    with pytest.raises(AblateError, match="t .held_out., row 1: a line break"):
        HeldOut({"t": ["AC\nGT"]})
    assert HeldOut({"t": ["ACGTACGT"]}).filter(["", "TT"])[0] == ["", "TT"]
    with pytest.raises(AblateError, match="line break"):
        HeldOut({"t": ["ACGTACGT"]}).filter(["AC\nGT"])
    with pytest.raises(AblateError, match="none of the tasks"):
        HeldOut.from_tasks(tmp_path, ["tf/0"])
    a = HeldOut({"x": {"dev": ["ACGT", "TTTT"]}})
    assert a.digest == HeldOut({"y": ["tttt", "ACGT", "ACGT"]}).digest
    assert a.digest != HeldOut({"x": {"dev": ["ACGT"]}}).digest


def test_containment_counts_each_strand():
    rng = random.Random(4)
    a, b = random_dna(rng, 40), random_dna(rng, 40)
    held_out = HeldOut({"t": {"dev": [a, b], "test": [b]}})
    found = held_out.containment(["GG" + a + "GG", reverse_complement(b) + "T"])
    assert found == {"t": {"dev": (1, 1), "test": (0, 1)}}


def test_cross_task_overlap_on_hand_made_tasks():
    rng = random.Random(5)
    a_dev, b_train = random_dna(rng, 50), random_dna(rng, 50)
    overlap = cross_task_overlap(
        {"A": {"dev": [a_dev], "test": [random_dna(rng, 50)]}, "B": {"dev": [b_train[:30]]}},
        {"B": ["TT" + reverse_complement(a_dev) + "A", b_train], "A": [random_dna(rng, 60)]},
    )
    pairs = {(p.held_out, p.train): p.hits for p in overlap.pairs}
    assert pairs == {("A", "B"): {"dev": (0, 1), "test": (0, 0)}, ("B", "B"): {"dev": (1, 0)}}
    assert (overlap.held_out_rows, overlap.train_rows) == (3, 3)


# --- the pretraining corpus -------------------------------------------------------------------


def write_split(root: Path, key: str, split: str, rows: list[tuple[str, int]]) -> None:
    folder = root / key
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}.csv").write_text(
        "sequence,label\n" + "".join(f"{s},{y}\n" for s, y in rows)
    )


def two_task_gue(root: Path) -> tuple[Path, list[str], list[str]]:
    """tf/0 and tf/1; tf/1's train holds one of tf/0's dev rows and the reverse complement of
    one of its test rows."""
    rng = random.Random(6)
    dev0 = [random_dna(rng, 100) for _ in range(4)]
    test0 = [random_dna(rng, 100) for _ in range(4)]
    train0 = [random_dna(rng, 100) for _ in range(8)]
    train1 = [random_dna(rng, 100) for _ in range(6)] + [dev0[1], reverse_complement(test0[2])]
    write_split(root, "tf/0", "train", [(s, i % 2) for i, s in enumerate(train0)])
    write_split(root, "tf/0", "dev", [(s, i % 2) for i, s in enumerate(dev0)])
    write_split(root, "tf/0", "test", [(s, i % 2) for i, s in enumerate(test0)])
    write_split(root, "tf/1", "train", [(s, i % 2) for i, s in enumerate(train1)])
    write_split(root, "tf/1", "dev", [(random_dna(rng, 100), i % 2) for i in range(4)])
    return root, train0 + train1, [dev0[1], reverse_complement(test0[2])]


def test_corpus_of_a_study_drops_sibling_rows_and_self_corpus_works(tmp_path):
    root, _, leaked = two_task_gue(tmp_path / "gue")
    held_out = HeldOut.from_tasks(root, ["tf/0", "tf/1"])
    assert held_out.rows == {"tf/0": {"dev": 4, "test": 4}, "tf/1": {"dev": 4}}  # no tf/1 test
    both = CorpusSpec(gue_tasks=["tf/0", "tf/1"])
    plain = corpus_sequences(both, seed=0, gue_dir=str(root))
    data = corpus_sequences(both, seed=0, gue_dir=str(root), held_out=held_out)
    assert plain.leaks is None and len(plain.sequences) == 16
    assert len(data.sequences) == 14 and not set(leaked) & set(data.sequences)
    assert data.leaks.equal == 2
    assert data.leaks.exposure["tf/0"] == {"dev": 1, "test": 1}
    assert data.source.startswith("gue-train:tf/0,tf/1;held-out=")
    alone = corpus_sequences(CorpusSpec(gue_tasks=["tf/0"]), seed=0, gue_dir=str(root),
                             held_out=HeldOut.from_tasks(root, ["tf/0"]))
    assert len(alone.sequences) == 8 and alone.leaks.removed == 0


def test_corpus_shards_are_keyed_by_the_held_out_set(tmp_path):
    root, _, _ = two_task_gue(tmp_path / "gue")
    char = parse_tokenizer_choice("char")
    _, tok_file = resolve_tokenizer(char, gue_root=root, tasks=["tf/0"], work_dir=tmp_path / "w")
    corpus = CorpusSpec(gue_tasks=["tf/0", "tf/1"])
    kwargs = dict(seed=0, gue_dir=str(root), tokenizer_path=str(tok_file), key="k",
                  work_dir=tmp_path / "w")
    plain = prepare_corpus_shards(corpus, **kwargs)
    study = prepare_corpus(corpus, held_out=HeldOut.from_tasks(root, ["tf/0", "tf/1"]),
                           **kwargs)
    only_tf1 = prepare_corpus(corpus, held_out=HeldOut.from_tasks(root, ["tf/1"]), **kwargs)
    assert len({plain, study.path, only_tf1.path}) == 3
    assert ShardManifest.read(plain).num_rows == 16
    assert ShardManifest.read(study.path).num_rows == 14 and study.leaks.removed == 2
    assert ShardManifest.read(only_tf1.path).num_rows == 16 and only_tf1.leaks.removed == 0
    again = prepare_corpus(corpus, held_out=HeldOut.from_tasks(root, ["tf/0", "tf/1"]),
                           **kwargs)
    assert again.path == study.path and again.leaks.removed == 2


def test_fasta_windows_holding_a_dev_sequence_are_counted_and_dropped(tmp_path):
    rng = random.Random(7)
    root = tmp_path / "gue"
    dev = [random_dna(rng, 70) for _ in range(3)]
    write_split(root, "prom/prom_core_tata", "dev", [(s, i % 2) for i, s in enumerate(dev)])
    # every 120-bp window of chrA holds dev[0]; of chrB, the reverse complement of dev[2]
    chr_a = random_dna(rng, 30) + dev[0] + random_dna(rng, 30)
    chr_b = random_dna(rng, 25) + reverse_complement(dev[2]) + random_dna(rng, 35)
    chr_c = random_dna(rng, 130)
    fasta = tmp_path / "genome.fa"
    fasta.write_text("".join(f">{n}\n{s}\n" for n, s in
                             {"chrA": chr_a, "chrB": chr_b, "chrC": chr_c}.items()))
    corpus = CorpusSpec(fasta=[str(fasta)], window_bp=120, windows=60)
    plain = corpus_sequences(corpus, seed=3, gue_dir=None)
    held_out = HeldOut.from_tasks(root, ["prom/prom_core_tata"])
    data = corpus_sequences(corpus, seed=3, gue_dir=None, held_out=held_out)
    from_a_or_b = sum(dev[0] in w or reverse_complement(dev[2]) in w for w in plain.sequences)
    assert 0 < from_a_or_b < 60
    assert data.leaks.contains == from_a_or_b and data.leaks.candidates == 60
    assert data.leaks.exposure == {"prom/prom_core_tata": {"dev": 2}}
    assert data.sequences == [w for w in plain.sequences if chr_c.find(w) >= 0]


def test_data_check_prints_the_cross_task_table_on_hand_made_tasks(tmp_path):
    root, _, _ = two_task_gue(tmp_path / "gue")
    result = CliRunner().invoke(app, ["data", "check", str(root)])
    assert result.exit_code == 0, result.output
    assert "train rows of B" in result.output
    (row,) = [line for line in result.output.splitlines() if line.startswith("│ tf/0 ")
              and "tf/1" in line]
    assert [c.strip() for c in row.split("│")[1:-1]] == ["tf/0", "tf/1", "1/4", "0", "0", "1/4"]
    assert "1 pairs overlap" in result.output


# --- real GUE ---------------------------------------------------------------------------------

TATA, CORE_ALL, TATA_300 = "prom/prom_core_tata", "prom/prom_core_all", "prom/prom_300_tata"
NOTATA = "prom/prom_core_notata"


def test_sibling_train_splits_expose_prom_core_tata(real_gue):
    held_out = HeldOut.from_tasks(real_gue, [TATA])
    core_all = read_split(real_gue, CORE_ALL, "train").sequences
    kept, report = held_out.filter(core_all)
    assert report.exposure[TATA]["dev"] == 544  # of 613
    assert report.held_out_rows[TATA] == {"dev": 613, "test": 613}
    assert len(kept) == len(core_all) - report.removed and report.removed >= 544
    tata_300 = read_split(real_gue, TATA_300, "train").sequences
    inside = held_out.containment(tata_300)
    assert inside[TATA]["test"] == (492, 0)  # 492 of 613 test rows lie inside 300-bp rows
    _, report_300 = held_out.filter(tata_300)
    assert report_300.exposure[TATA]["test"] == 492
    assert report_300.equal == 0 and report_300.contains == report_300.removed > 0


def test_study_corpus_pairing_tata_with_its_siblings(real_gue):
    corpus = CorpusSpec(gue_tasks=[TATA, CORE_ALL, TATA_300])
    held_out = HeldOut.from_tasks(real_gue, [TATA, CORE_ALL, TATA_300])
    data = corpus_sequences(corpus, seed=0, gue_dir=str(real_gue), held_out=held_out)
    leaks = data.leaks
    assert leaks.candidates == 4904 + 47356 + 4904
    assert leaks.kept == len(data.sequences) == leaks.candidates - leaks.removed
    assert leaks.exposure[TATA]["dev"] >= 544 and leaks.exposure[TATA]["test"] >= 492
    assert leaks.exposure[CORE_ALL]["dev"] >= 538  # inside prom_300_tata train rows alone
    again = HeldOut.from_tasks(real_gue, [TATA, CORE_ALL, TATA_300]).filter(data.sequences)[1]
    assert again.removed == 0 and sum(v for s in again.exposure.values() for v in s.values()) == 0


@pytest.fixture(scope="module")
def prom_subset(real_gue, tmp_path_factory) -> Path:
    """A GUE folder holding four of the real prom datasets (linked, not copied)."""
    root = tmp_path_factory.mktemp("prom")
    (root / "prom").mkdir()
    for key in (TATA, CORE_ALL, TATA_300, NOTATA):
        (root / key).symlink_to(Path(real_gue) / key, target_is_directory=True)
    return root


def test_data_check_cross_task_table_on_real_prom(prom_subset):
    check = check_gue_dir(prom_subset)
    pairs = {(p.held_out, p.train): p.hits for p in check.overlap.pairs}
    assert pairs[(TATA, CORE_ALL)]["dev"] == (544, 0)
    assert pairs[(TATA, TATA_300)]["test"] == (492, 0)
    assert pairs[(CORE_ALL, NOTATA)]["dev"] == (4722, 0)  # of 5,920
    assert {c.task for c in check.caveats} == {TATA, CORE_ALL, TATA_300, NOTATA}
    assert not any(c.shuffled for c in check.caveats)
    result = CliRunner().invoke(app, ["data", "check", str(prom_subset)])
    assert result.exit_code == 0, result.output
    rows = {tuple(c.strip() for c in line.split("│")[1:3]): [c.strip() for c in
                                                           line.split("│")[3:-1]]
            for line in result.output.splitlines() if line.count("│") == 7}
    assert rows[(TATA, CORE_ALL)][0] == "544/613"
    assert rows[(TATA, TATA_300)][1] == "492/613"
    assert rows[(CORE_ALL, NOTATA)][0] == "4,722/5,920"
    assert "negatives with exactly the dinucleotide composition" in result.output


def test_mouse_negatives_are_dinucleotide_shuffles(real_gue):
    caveat = read_composition_caveat(real_gue, "mouse/2")
    assert 0.75 <= caveat.negatives_matched["train"] <= 0.85
    assert 0.72 <= caveat.negatives_matched_train["test"] <= 0.83
    assert 0.05 <= caveat.negatives_matched["test"] <= 0.16
    assert max(caveat.positives_matched.values()) < 0.01
    assert caveat.shuffled and "shuffles" in caveat.statement
    assert caveat_metrics(caveat)["caveat_dinuc_shuffled"] == 1.0
    tata = read_composition_caveat(real_gue, TATA)
    assert not tata.shuffled and tata.statement is None
    assert caveat_metrics(tata)["caveat_dinuc_neg_matched/train"] < 0.02


# --- composition caveats on hand-made splits --------------------------------------------------


def dinucleotide_preserving_swap(seq: str) -> str:
    """Swap the two segments between three occurrences of the same base: the dinucleotide
    counts stay exactly the same (an Euler-path shuffle)."""
    for base in "ACGT":
        at = [i for i, b in enumerate(seq) if b == base]
        for i, j, k in zip(at, at[1:], at[2:], strict=False):
            swapped = seq[: i + 1] + seq[j + 1 : k + 1] + seq[i + 1 : j + 1] + seq[k + 1 :]
            if swapped != seq:
                return swapped
    raise ValueError("no swap changes the sequence")


def split_of(rows: list[tuple[str, int]]) -> GUESplit:
    return GUESplit([s for s, _ in rows], np.array([y for _, y in rows]), Path("x"), "")


def test_dinucleotide_counts():
    counts = dinucleotide_counts(["AACGT", "ANNA", "a"])
    assert counts.shape == (3, 16)
    assert counts[0].sum() == 4 and counts[0][0] == 1  # AA, AC, CG, GT
    assert counts[1].sum() == 0 and counts[2].sum() == 0  # pairs with N are not counted


def test_composition_caveat_on_hand_made_shuffles():
    rng = random.Random(8)
    positives = [random_dna(rng, 60) for _ in range(40)]
    shuffles = [dinucleotide_preserving_swap(p) for p in positives]
    assert all((dinucleotide_counts([p]) == dinucleotide_counts([s])).all()
               for p, s in zip(positives, shuffles, strict=True))
    train = split_of([(p, 1) for p in positives[:30]] + [(s, 0) for s in shuffles[:24]]
                     + [(random_dna(rng, 60), 0) for _ in range(6)])
    test = split_of([(p, 1) for p in positives[30:]] + [(s, 0) for s in shuffles[:10]])
    caveat = composition_caveat("mouse/0", {"train": train, "test": test})
    assert caveat.negatives_matched == {"train": 0.8, "test": 0.0}
    assert caveat.negatives_matched_train == {"test": 1.0}
    assert caveat.positives_matched == {"train": 0.0, "test": 0.0}
    assert caveat.shuffled and caveat.statement.startswith("mouse/0: 100% of the test")
    random_negatives = split_of([(p, 1) for p in positives]
                                + [(random_dna(rng, 60), 0) for _ in range(40)])
    assert not composition_caveat("mouse/0", {"train": random_negatives}).shuffled


def test_composition_caveat_skips_multi_class_tasks():
    caveat = composition_caveat("splice/reconstructed", {})
    assert caveat.note.startswith("3 classes") and not caveat.shuffled
    assert caveat_metrics(caveat) == {}


def test_filter_agrees_with_comparing_every_pair():
    rng = random.Random(9)
    held = {"a": {"dev": [random_dna(rng, rng.randint(20, 60)) for _ in range(30)]},
            "b": {"test": [random_dna(rng, rng.randint(20, 60)) for _ in range(30)]}}
    flat = [h for splits in held.values() for seqs in splits.values() for h in seqs]
    candidates = [random_dna(rng, rng.randint(10, 70)) for _ in range(100)]
    for h in rng.sample(flat, 20):  # plant every relation, on both strands
        start = rng.randint(0, 5)
        candidates += [h, random_dna(rng, 3) + h, h[start : start + 12]]
        candidates += [reverse_complement(c) for c in candidates[-3:]]
    rng.shuffle(candidates)
    strands = flat + [reverse_complement(h) for h in flat]

    def kind(c: str) -> str | None:
        if c in strands:
            return "equal"
        if any(h in c for h in strands):
            return "contains"
        if any(c in h for h in strands):
            return "contained"
        return None

    kinds = [kind(c) for c in candidates]
    kept, report = HeldOut(held).filter(candidates)
    assert kept == [c for c, k in zip(candidates, kinds, strict=True) if k is None]
    assert (report.equal, report.contains, report.contained) == tuple(
        kinds.count(k) for k in ("equal", "contains", "contained"))
    for task, splits in held.items():
        for split, seqs in splits.items():
            exposed = sum(any(h in c or c in h or reverse_complement(h) in c
                              or c in reverse_complement(h) for c in candidates) for h in seqs)
            assert report.exposure[task][split] == exposed


def test_pretraining_run_excludes_and_logs_sibling_leaks(tmp_path, real_gue):
    """A corpus of prom_core_tata and prom_300_tata train splits: the 300 bp rows holding
    prom_core_tata's test sequences are removed, and the counts are on the pretraining run."""
    from mlflow import MlflowClient

    from ablate.tracking.schema import PRETRAIN_EXPERIMENT, MetricName
    from tests.test_pretrain import pretrain_spec, run_cli

    spec = pretrain_spec(tmp_path, real_gue, max_steps=4, checkpoint_every=4, workers=1,
                         corpus={"gue_tasks": ["prom/prom_core_tata", "prom/prom_300_tata"]})
    result = run_cli(["pretrain", str(spec)], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "removed" in result.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    (run,) = client.search_runs(
        [client.get_experiment_by_name(PRETRAIN_EXPERIMENT).experiment_id])
    metrics = run.data.metrics
    exposed = metrics[f"{MetricName.EXPOSURE_PREFIX}prom/prom_core_tata/test"]
    assert exposed >= 492  # measured: 492 of 613 lie inside prom_300_tata train rows
    assert metrics[MetricName.LEAKED_REMOVED] >= 400
    assert metrics[MetricName.CORPUS_SEQUENCES] == 2 * 4904 - metrics[MetricName.LEAKED_REMOVED]
