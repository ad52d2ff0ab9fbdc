from pathlib import Path

import numpy as np
import pytest

from ablate.shards import (
    MANIFEST,
    ShardManifest,
    SplitArrays,
    pad_token_lists,
    prepare_task_inputs,
    read_shard_sets,
    resolve_tokenizer,
    shard_key,
    write_shards,
)
from ablate.tokenization import (
    PAD_ID,
    char_tokenizer,
    kmer_tokenizer,
    parse_tokenizer_choice,
    tokenizer_hash,
)

SEQS = ["ACGTACGTAC", "TTTTGGGGCCCCAAAA", "ACG", "NNNNACGT"]
LABELS = np.array([0, 1, 0, 1])


def _write(root, tokenizer, sha="abc", **kwargs):
    return write_shards(
        SEQS, LABELS, tokenizer, root=root, source="mem", source_sha256=sha,
        tokenizer_hash=tokenizer_hash(tokenizer), length_bp=12, **kwargs,
    )


def test_write_shards_records_manifest_and_cuts_in_bp(tmp_path):
    folder = _write(tmp_path, char_tokenizer(), rows_per_shard=3)
    manifest = ShardManifest.read(folder)
    assert manifest.num_rows == 4 and len(manifest.files) == 2
    assert manifest.source_sha256 == "abc"
    assert manifest.max_tokens == 12 + 2  # the 16 bp sequence was cut to 12 bp, plus CLS/SEP
    import pyarrow.parquet as pq

    table = pq.read_table(folder / manifest.files[0])
    assert table.column("input_ids")[1].as_py()[1:-1] == char_tokenizer().encode(
        SEQS[1][:12]).ids[1:-1]


def test_shards_split_across_files_and_encode_batches_keep_every_row(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    import ablate.shards

    # 7 rows, 3 per file, encoded 2 at a time: files of 3, 3, 1 rows, batches never crossing a
    # file boundary, every row in order with its label.
    monkeypatch.setattr(ablate.shards, "ENCODE_BATCH", 2)
    seqs = [("ACGT" * 4)[: 3 + i] for i in range(7)]
    labels = np.arange(7) % 2
    tok = char_tokenizer()
    folder = write_shards(seqs, labels, tok, root=tmp_path, source="mem", source_sha256="s",
                          tokenizer_hash=tokenizer_hash(tok), length_bp=8, rows_per_shard=3)
    manifest = ShardManifest.read(folder)
    tables = [pq.read_table(folder / name) for name in manifest.files]
    assert [t.num_rows for t in tables] == [3, 3, 1]
    assert [pq.ParquetFile(folder / name).num_row_groups for name in manifest.files] == [2, 2, 1]
    ids = [row for t in tables for row in t.column("input_ids").to_pylist()]
    assert ids == [tok.encode(s[:8]).ids for s in seqs]
    assert [v for t in tables for v in t.column("label").to_pylist()] == labels.tolist()
    assert manifest.max_tokens == 8 + 2


def test_empty_split_gets_one_empty_shard(tmp_path):
    tok = char_tokenizer()
    folder = write_shards([], np.array([], dtype=int), tok, root=tmp_path, source="mem",
                          source_sha256="e", tokenizer_hash=tokenizer_hash(tok), length_bp=8)
    manifest = ShardManifest.read(folder)
    assert manifest.num_rows == 0 and manifest.files == ("part-00000.parquet",)


def test_unchanged_input_is_not_tokenized_again(tmp_path):
    folder = _write(tmp_path, char_tokenizer())
    stamp = (folder / MANIFEST).stat().st_mtime_ns
    assert _write(tmp_path, char_tokenizer()) == folder
    assert (folder / MANIFEST).stat().st_mtime_ns == stamp
    # A different source or tokenizer gets a different shard set.
    assert _write(tmp_path, char_tokenizer(), sha="other") != folder
    assert _write(tmp_path, kmer_tokenizer(3)) != folder
    assert shard_key("a", "b", 10) != shard_key("a", "b", 11)


def test_failed_write_leaves_nothing_behind(tmp_path):
    bad = ["ACGT", None]  # the tokenizer refuses None half-way through
    with pytest.raises(TypeError):
        write_shards(bad, np.array([0, 1]), char_tokenizer(), root=tmp_path, source="mem",
                     source_sha256="x", tokenizer_hash="y", length_bp=4)
    assert list(tmp_path.iterdir()) == []


def test_pad_token_lists():
    offsets = np.array([0, 3, 4, 6])
    values = np.array([1, 5, 2, 1, 7, 2])
    ids, lengths = pad_token_lists(offsets, values, PAD_ID, width=4)
    assert ids.tolist() == [[1, 5, 2, 3], [1, 3, 3, 3], [7, 2, 3, 3]]
    assert lengths.tolist() == [3, 1, 2]
    arrays = SplitArrays(ids, lengths, np.array([0, 1, 0]))
    assert arrays.attention_mask().tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]]


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.mark.integration
def test_ray_data_reads_back_every_row_in_order(tmp_path, local_ray):
    tok = char_tokenizer()
    one = _write(tmp_path / "a", tok, rows_per_shard=2)
    two = _write(tmp_path / "b", kmer_tokenizer(2), sha="zzz")
    arrays = read_shard_sets([str(one), str(two)], PAD_ID)
    first = arrays[str(one)]
    assert len(first) == 4 and first.labels.tolist() == LABELS.tolist()
    for row, seq in enumerate(SEQS):
        expected = tok.encode(seq[:12]).ids
        assert first.input_ids[row, : first.lengths[row]].tolist() == expected
        assert (first.input_ids[row, first.lengths[row]:] == PAD_ID).all()
    assert len(arrays[str(two)]) == 4


def test_prepare_task_inputs_on_synthetic_data(tmp_path):
    from ablate.data.synthetic import write_synthetic_gue

    tasks = ["mouse/0", "prom/prom_core_tata"]
    root = write_synthetic_gue(tmp_path / "gue", scale=0.02, seed=3, tasks=tasks)
    work = tmp_path / "work"
    bpe_choice = parse_tokenizer_choice("bpe")
    tok, tok_file = resolve_tokenizer(bpe_choice, gue_root=root, tasks=tasks, work_dir=work,
                                      bpe_vocab_size=64)
    assert tok.get_vocab_size() == 64 and tok_file.is_file()
    # One BPE per study, cached: the same train splits give the same file.
    again, again_file = resolve_tokenizer(bpe_choice, gue_root=root, tasks=list(reversed(tasks)),
                                          work_dir=work, bpe_vocab_size=64)
    assert again_file == tok_file and tokenizer_hash(again) == tokenizer_hash(tok)
    bpe = prepare_task_inputs(root, "mouse/0", bpe_choice, tok, tok_file, work_dir=work)
    assert bpe.vocab_size == 64 and bpe.length_bp == 101 and bpe.token_limit == 103
    assert set(bpe.splits) == {"train", "dev", "test"}
    assert prepare_task_inputs(root, "mouse/0", bpe_choice, tok, tok_file, work_dir=work) == bpe
    kmer_choice = parse_tokenizer_choice("kmer:3")
    kmer_tok, kmer_file = resolve_tokenizer(kmer_choice, gue_root=root, tasks=tasks,
                                            work_dir=work)
    kmer = prepare_task_inputs(root, "mouse/0", kmer_choice, kmer_tok, kmer_file, work_dir=work)
    assert kmer.token_limit == 34 + 2
    assert ShardManifest.read(Path(kmer.splits["train"])).max_tokens <= kmer.token_limit


def test_shards_are_read_from_remote_storage(tmp_path, local_ray, s3_server):
    """With S3 storage the shard sets are copied there once and Ray Data reads them from
    there, not from the driver's disk: the same rows come back, and a second read copies
    nothing new."""
    from ablate.storage import holds_shards

    tok = char_tokenizer()
    work = tmp_path / "work"
    one = _write(work / "shards" / "a", tok, rows_per_shard=2)
    local = read_shard_sets([str(one)], PAD_ID)[str(one)]
    storage = s3_server.bucket() + "/study"
    assert holds_shards(storage, work) and not holds_shards(str(work / "ray_results"), work)
    remote = read_shard_sets([str(one)], PAD_ID, storage=storage, work_dir=work)[str(one)]
    assert remote.input_ids.tolist() == local.input_ids.tolist()
    assert remote.labels.tolist() == local.labels.tolist()
    keys = sorted(s3_server.keys(storage))
    parquet = [k for k in keys if k.endswith(".parquet")]
    assert len(parquet) == 2 and all(k.startswith("study/shards/a/") for k in parquet), keys
    # What Ray Data was given to read is the copy on S3, through pyarrow's S3 file system.
    from ablate.storage import shard_source

    source = shard_source(one, ShardManifest.read(one).files, storage, work)
    assert not source.pinned and type(source.filesystem).__name__ == "S3FileSystem"
    assert all(path.startswith(storage.removeprefix("s3://")) for path in source.paths)


def test_reads_pinned_to_a_node_without_cpus_are_refused_not_left_waiting():
    """A head started with ``--num-cpus=0`` (as KubeRay advises) can run no read pinned to it:
    with the shards only on its disk the study says so at once, naming ``--storage``."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import ray
        from ablate.errors import AblateError
        from ablate.shards import read_placement
        from ablate.storage import ShardSource
        ray.init(address="local", num_cpus=0, include_dashboard=False, logging_level="ERROR")
        pinned = ShardSource(paths=["/only/here/part-0.parquet"], filesystem=None, pinned=True)
        try:
            read_placement([pinned], read_cpus=1)
        except AblateError as exc:
            print("REFUSED", exc)
        else:
            print("PLACED")
        remote = ShardSource(paths=["bucket/part-0.parquet"], filesystem=None, pinned=False)
        print("REMOTE", sorted(read_placement([remote], read_cpus=1)))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert "REFUSED" in out.stdout, out.stdout + out.stderr[-2000:]
    assert "--storage" in out.stdout and "no CPUs" in out.stdout
    assert "REMOTE ['filesystem', 'num_cpus']" in out.stdout  # read wherever a task lands
