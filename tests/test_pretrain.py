"""Masked-LM pretraining: corpus sampling, a real Ray Train run, reuse, resume after a kill."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ablate.corpus import sample_fasta_windows
from ablate.errors import AblateError
from ablate.tracking.schema import MODEL_ARTIFACT, MetricName, Stage, Tag
from tests.helpers import kill_session
from tests.test_shards import local_ray  # noqa: F401

pytestmark = pytest.mark.integration


def write_fasta(path: Path, records: dict[str, str]) -> Path:
    with open(path, "w") as handle:
        for name, seq in records.items():
            handle.write(f">{name}\n")
            for start in range(0, len(seq), 60):
                handle.write(seq[start : start + 60] + "\n")
    return path


def genome_like(seed: int = 0) -> dict[str, str]:
    rng = np.random.default_rng(seed)
    chr1 = "".join(rng.choice(list("ACGT"), 3000))
    chr1 = chr1[:1000] + "N" * 500 + chr1[1500:]  # an assembly gap
    return {"chr1": chr1, "chr2": "".join(rng.choice(list("acgt"), 800)), "tiny": "ACGT"}


def test_fasta_windows_skip_n_runs_and_are_seeded(tmp_path):
    fasta = write_fasta(tmp_path / "genome.fa", genome_like())
    windows = sample_fasta_windows([fasta], window_bp=200, windows=300, seed=1)
    assert len(windows) == 300
    assert all(len(w) == 200 and set(w) <= set("ACGT") for w in windows)  # upper-cased, no N
    assert windows == sample_fasta_windows([fasta], window_bp=200, windows=300, seed=1)
    assert windows != sample_fasta_windows([fasta], window_bp=200, windows=300, seed=2)


def test_fasta_errors(tmp_path):
    with pytest.raises(AblateError, match="not found"):
        sample_fasta_windows([tmp_path / "none.fa"], window_bp=10, windows=1, seed=0)
    fasta = write_fasta(tmp_path / "small.fa", {"a": "ACGT" * 5})
    with pytest.raises(AblateError, match="window_bp"):
        sample_fasta_windows([fasta], window_bp=100, windows=1, seed=0)


def masked_lm_loss(model, sequences: list[str], tokenizer_path: str, seed: int = 0) -> float:
    from ablate.models.mlm import mask_tokens
    from ablate.shards import pad_token_lists
    from ablate.tokenization import load_tokenizer

    tokenizer = load_tokenizer(Path(tokenizer_path))
    encoded = [e.ids for e in tokenizer.encode_batch(sequences)]
    offsets = np.cumsum([0] + [len(e) for e in encoded])
    ids, lengths = pad_token_lists(offsets, np.concatenate(encoded), 3)
    ids = torch.from_numpy(ids.astype(np.int64))
    mask = torch.from_numpy((np.arange(ids.shape[1])[None] < lengths[:, None]).astype(np.int64))
    generator = torch.Generator().manual_seed(seed)
    masked, labels = mask_tokens(ids, mask, vocab_size=tokenizer.get_vocab_size(),
                                 generator=generator)
    model.eval()
    with torch.no_grad():
        logits = model(masked, mask)
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100
    ).item()


def pretrain_spec(folder: Path, gue: Path, **overrides) -> Path:
    spec = {
        "name": "small",
        "architecture": "convnova",
        "preset": "tiny",
        "tokenizer": "char",
        "gue_dir": str(gue),
        "corpus": {"gue_tasks": ["prom/prom_core_tata"]},
        "max_steps": 60,
        "batch_size": 32,
        "learning_rate": 2e-3,
        "checkpoint_every": 20,
        "workers": 2,
        "tracking": {"uri": f"sqlite:///{folder / 'mlruns.db'}"},
        **overrides,
    }
    path = folder / "pretrain.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path




def run_cli(args: list[str], cwd: Path, timeout: int = 600,
            env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ablate.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_pretraining_lowers_masked_lm_loss_and_is_reused(tmp_path, real_gue):
    from mlflow import MlflowClient

    from ablate.data.gue import read_split
    from ablate.models.io import load_model
    from ablate.models.registry import build_mlm
    from ablate.tracking.schema import PRETRAIN_EXPERIMENT

    spec = pretrain_spec(tmp_path, real_gue)
    first = run_cli(["pretrain", str(spec)], cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "pretraining finished" in first.stdout

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    experiment = client.get_experiment_by_name(PRETRAIN_EXPERIMENT)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.tags[Tag.STAGE] == Stage.PRETRAIN
    for metric in (MetricName.WALL_SECONDS, MetricName.DEVICE_HOURS, MetricName.FLOPS,
                   MetricName.TOKENS_SEEN, MetricName.MLM_LOSS):
        assert run.data.metrics[metric] > 0, metric
    assert run.data.metrics["steps"] == 60
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, MODEL_ARTIFACT)}
    assert {f"{MODEL_ARTIFACT}/config.json", f"{MODEL_ARTIFACT}/model.safetensors"} <= artifacts

    # Held-out real sequences (dev; the corpus was train only): lower masked-token loss than
    # the same architecture freshly initialised.
    model_dir = next((tmp_path / ".ablate" / "pretrained").glob("*/model"))
    tokenizer_path = str(next((tmp_path / ".ablate" / "tokenizers").glob("*/tokenizer.json")))
    dev = read_split(real_gue, "prom/prom_core_tata", "dev").sequences[:256]
    pretrained = masked_lm_loss(load_model(model_dir), dev, tokenizer_path)
    torch.manual_seed(0)
    fresh_model = build_mlm("convnova", preset="tiny", vocab_size=10, max_len=72)
    fresh = masked_lm_loss(fresh_model, dev, tokenizer_path)
    assert pretrained < fresh - 0.2, (pretrained, fresh)

    again = run_cli(["pretrain", str(spec)], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "pretraining reused" in again.stdout
    assert len(client.search_runs([experiment.experiment_id])) == 1


def test_pretraining_resumes_after_the_driver_is_killed(tmp_path, real_gue):
    from mlflow import MlflowClient

    from ablate.tracking.schema import PRETRAIN_EXPERIMENT

    spec = pretrain_spec(tmp_path, real_gue, max_steps=400, checkpoint_every=10,
                         learning_rate=1e-3)
    # Streamed through Ray Data (the path of corpora too large to hand over whole); the test
    # above hands its corpus over whole.
    env = {**os.environ, "ABLATE_CORPUS_IN_MEMORY_MB": "0"}
    process = subprocess.Popen(
        [sys.executable, "-m", "ablate.cli", "pretrain", str(spec)], cwd=tmp_path, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    results = tmp_path / ".ablate" / "ray_results"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and not list(results.glob("pretrain-*/checkpoint_*")):
            time.sleep(1)
        assert list(results.glob("pretrain-*/checkpoint_*")), "no checkpoint within 300 s"
        time.sleep(3)
    finally:
        kill_session(process.pid)  # the driver and the local Ray it started, nothing else
        process.wait()

    # The killed pretraining's run exists, unfinished, with what it had charged so far.
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    experiment = client.get_experiment_by_name(PRETRAIN_EXPERIMENT)
    (killed,) = client.search_runs([experiment.experiment_id])
    assert killed.info.status == "RUNNING" and killed.data.tags[Tag.PRETRAIN_KEY]
    first_attempt = (killed.data.metrics[MetricName.WALL_SECONDS]
                     + killed.data.metrics[MetricName.CHECKPOINT_SECONDS])
    assert first_attempt > 0
    assert killed.data.metrics[MetricName.DEVICE_HOURS] > 0

    resumed = run_cli(["pretrain", str(spec)], cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    (run,) = client.search_runs([experiment.experiment_id])  # one run, resumed
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert metrics["resumed_from_step"] >= 10
    assert metrics["steps"] == 400
    # Both attempts' steps that the checkpoint kept, inside the workers' time.
    assert 0 < metrics["optimizer_seconds"] < metrics["step_seconds"]
    # Charged in full: the first attempt's time (what its checkpoint kept, and the lost rest)
    # and all the second attempt's.
    second_attempt = (metrics["step_seconds"] + metrics[MetricName.CHECKPOINT_SECONDS]
                      - metrics["resumed_wall_seconds"] - metrics["resumed_checkpoint_seconds"])
    # At least the last checkpoint's own save was recorded but not in the state it restored.
    assert second_attempt > 0 and metrics[MetricName.LOST_SECONDS] > 0
    billed = (metrics[MetricName.WALL_SECONDS] + metrics[MetricName.CHECKPOINT_SECONDS]
              + metrics[MetricName.LOST_SECONDS])
    assert metrics["billed_seconds"] == pytest.approx(billed)
    assert billed >= first_attempt + second_attempt
    assert metrics[MetricName.DEVICE_HOURS] == pytest.approx(
        billed / 3600 * metrics["device_count"])
    assert run.data.tags[Tag.PRICE_SOURCE] == "unpriced"
    assert MODEL_ARTIFACT in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_a_worker_replays_a_small_corpus_from_memory_and_streams_a_large_one():
    import torch

    from ablate.pretrain import _EpochCache

    passes = []

    def stream():
        passes.append(1)
        for i in range(3):
            yield torch.full((2, 4), i), torch.ones((2, 4), dtype=torch.long)

    small = _EpochCache(stream, limit=10_000)
    first = [ids[0, 0].item() for ids, _ in small]
    # A pass stopped part-way (max_steps reached) is not an epoch: nothing is kept from it.
    partial = _EpochCache(stream, limit=10_000)
    next(iter(partial))
    assert partial.batches is None
    passes.clear()
    assert [ids[0, 0].item() for ids, _ in small] == first == [0, 1, 2]
    assert [ids[0, 0].item() for ids, _ in small] == first
    assert passes == []  # replayed, never streamed again
    large = _EpochCache(stream, limit=100)  # 3 batches of 128 bytes do not fit
    for _ in range(2):
        assert [ids[0, 0].item() for ids, _ in large] == [0, 1, 2]
    assert len(passes) == 2 and large.batches is None


def test_a_worker_cuts_fetched_blocks_into_the_batches_ray_data_would_give(
        request, local_ray):  # noqa: F811
    """Fetching many step batches at once (``FETCH_STEPS``) changes no batch: the same rows in
    the same order as Ray Data's own batches of the step's size, the last partial one dropped."""
    import pyarrow as pa
    import ray

    from ablate.pretrain import FETCH_STEPS, _batches, _timed
    from ablate.shards import split_arrays

    options = ray.data.DataContext.get_current().execution_options
    kept, options.preserve_order = options.preserve_order, True
    request.addfinalizer(lambda: setattr(options, "preserve_order", kept))
    rng = np.random.default_rng(0)
    rows = [rng.integers(5, 9, size=int(n)).tolist() for n in rng.integers(3, 12, size=1000)]
    dataset = ray.data.from_arrow(pa.table({"input_ids": rows})).repartition(7)
    batch_size, width = 6, 12
    reference = []
    for table in dataset.iterator().iter_batches(
            batch_size=batch_size, batch_format="pyarrow", drop_last=True):
        arrays = split_arrays(table, 3, width)
        reference.append((arrays.input_ids.astype(np.int64), arrays.attention_mask()))
    state: dict = {}
    cut = list(_timed(_batches(dataset.iterator(), batch_size, 3, width), state))
    assert len(cut) == len(reference) == 1000 // batch_size > FETCH_STEPS
    for (ids, mask), (want_ids, want_mask) in zip(cut, reference, strict=True):
        assert ids.tolist() == want_ids.tolist() and mask.tolist() == want_mask.tolist()
    assert ids.dtype == torch.int64
    assert cut[0][0][0, :3].tolist() == rows[0][:3]  # the stream's own first row first
    assert state["data_wait_seconds"] > 0

    # A corpus handed over whole gives one worker the same batches as streaming it, and two
    # workers the alternate rows of it, each cut alone.
    from ablate.pretrain import _MemoryCorpus

    whole = split_arrays(pa.table({"input_ids": rows}), 3, width)
    alone = list(_MemoryCorpus(whole, 0, 1, batch_size))
    assert len(alone) == len(cut)
    for (ids, mask), (want_ids, want_mask) in zip(alone, cut, strict=True):
        assert torch.equal(ids, want_ids) and torch.equal(mask, want_mask)
    second = list(_MemoryCorpus(whole, 1, 2, batch_size))
    assert len(second) == 500 // batch_size
    assert second[0][0][0, :3].tolist() == rows[1][:3]
    assert second[1][0][0, :3].tolist() == rows[1 + 2 * batch_size][:3]


def test_a_small_corpus_goes_whole_and_a_large_one_streams(monkeypatch):
    from ablate.pretrain import CORPUS_IN_MEMORY_MB, corpus_in_memory
    from ablate.shards import ShardManifest

    rows = CORPUS_IN_MEMORY_MB * 2**20 // (8 * 128)  # exactly the limit at 128 tokens
    fields = {"source": "corpus", "source_sha256": "0" * 64, "tokenizer_hash": "0" * 16,
              "length_bp": 128, "max_tokens": 128, "files": ("part-00000.parquet",)}
    small = ShardManifest(num_rows=rows, **fields)
    large = ShardManifest(num_rows=rows + 1, **fields)
    assert corpus_in_memory(small) and not corpus_in_memory(large)
    monkeypatch.setenv("ABLATE_CORPUS_IN_MEMORY_MB", "0")
    assert not corpus_in_memory(small)
