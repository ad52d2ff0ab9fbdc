"""External checkpoints: a local transformers folder enters a study with its declared cost."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ablate.errors import AblateError
from ablate.models.external import ExternalEncoder, build_external_classifier
from ablate.tokenization import (
    DNABERT2_IDS,
    SpecialIds,
    build_tokenizer,
    load_tokenizer,
    parse_tokenizer_choice,
    special_ids,
)
from ablate.tracking.schema import MetricName, Tag, metric_column, tag_column
from tests.checkpoints import DNABERT2_FOLDER, make_dnabert2_checkpoint, make_nt_checkpoint


def make_checkpoint(folder: Path, tokenizer_json: Path | None = None) -> Path:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=4096, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=128, pad_token_id=3)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    if tokenizer_json is not None:
        shutil.copy(tokenizer_json, folder / "tokenizer.json")
    return folder


def test_external_encoder_loads_local_folder(tmp_path):
    folder = make_checkpoint(tmp_path / "ckpt")
    encoder = ExternalEncoder(folder)
    assert encoder.hidden_size == 32 and encoder.vocab_size == 4096
    ids = torch.tensor([[1, 10, 20, 2, 3, 3]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    assert encoder(ids, mask).shape == (1, 6, 32)
    classifier = build_external_classifier(folder, num_classes=3)
    assert classifier(ids, mask).shape == (1, 3)


def test_external_errors_name_the_folder(tmp_path):
    with pytest.raises(AblateError, match="config.json"):
        ExternalEncoder(tmp_path)


# --- DNABERT-2 (its real remote code) and an NT-style ESM checkpoint, tiny and random --------

SEQS = ("ACGTAGCATCGGATCTATCTATCGACACTCTACGAGGATTACA", "TTGACGTCAGGCATAC")
# Attribute names under which modules keep a dropout probability (nn.Dropout's p, DNABERT-2's
# p_dropout, ESM attention's dropout).
DROPOUT_ATTRS = ("p", "dropout", "p_dropout", "dropout_prob")


def _need_dnabert2() -> None:
    if not (DNABERT2_FOLDER / "config.json").is_file():
        pytest.skip(f"DNABERT-2 model folder not found at {DNABERT2_FOLDER}")


@pytest.fixture(scope="module")
def dnabert2(tmp_path_factory) -> dict[str, Path]:
    """DNABERT-2 folders with random release-style weights: bin, safetensors and none."""
    _need_dnabert2()
    root = tmp_path_factory.mktemp("dnabert2")
    return {kind: make_dnabert2_checkpoint(root / f"DNABERT-2-{kind}", weights=weights)
            for kind, weights in (("bin", "bin"), ("safetensors", "safetensors"),
                                  ("none", None))}


@pytest.fixture(scope="module")
def nt_folder(tmp_path_factory) -> Path:
    return make_nt_checkpoint(tmp_path_factory.mktemp("nt") / "nt-tiny")


def _saved(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(folder / "model.safetensors"))
    return torch.load(folder / "pytorch_model.bin", weights_only=True)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _padded_batch(tokenizer_json: Path) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    tokenizer = load_tokenizer(tokenizer_json)
    rows = [tokenizer.encode(seq).ids for seq in SEQS]
    width = max(map(len, rows))
    pad = special_ids(tokenizer).pad
    ids = torch.tensor([row + [pad] * (width - len(row)) for row in rows])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    return ids, mask, rows[1]


@pytest.mark.parametrize("kind", ["bin", "safetensors"])
def test_dnabert2_loads_release_weights(dnabert2, kind):
    folder = dnabert2[kind]
    encoder = ExternalEncoder(folder, trust_remote_code=True)
    assert encoder.weights_file.name == {"bin": "pytorch_model.bin",
                                         "safetensors": "model.safetensors"}[kind]
    assert encoder.hidden_size == 32 and encoder.vocab_size == 4096
    saved = _saved(folder)
    bert = {key[len("bert."):]: value for key, value in saved.items() if key.startswith("bert.")}
    assert any(key.startswith("cls.") for key in saved)  # a masked-LM checkpoint, as released
    own = encoder.backbone.state_dict()
    assert {name for name, _ in encoder.backbone.named_parameters()} == set(bert)
    for name, value in bert.items():
        assert torch.equal(own[name], value), name
    ids, mask, _ = _padded_batch(folder / "tokenizer.json")
    assert encoder(ids, mask).shape == (*ids.shape, 32)


def test_dnabert2_twin_has_same_size_and_fresh_weights(dnabert2):
    loaded = ExternalEncoder(dnabert2["bin"], trust_remote_code=True)
    twin = ExternalEncoder(dnabert2["bin"], random_init=True, trust_remote_code=True)
    assert twin.weights_file is None
    assert _count(twin) == _count(loaded)
    assert [(n, p.shape) for n, p in twin.named_parameters()] == \
        [(n, p.shape) for n, p in loaded.named_parameters()]
    # Fresh weights: every matrix differs (biases and layer norms start at 0 and 1 in both).
    pairs = [(n, a, b) for (n, a), b in zip(twin.named_parameters(), loaded.parameters(),
                                            strict=True) if a.dim() > 1]
    assert len(pairs) >= 6
    assert all(not torch.equal(a, b) for _, a, b in pairs), [n for n, a, b in pairs
                                                              if torch.equal(a, b)]
    # The twin needs only config + code: the folder without weights builds the same model.
    bare = ExternalEncoder(dnabert2["none"], random_init=True, trust_remote_code=True)
    assert _count(bare) == _count(loaded)


def test_random_init_is_deterministic_given_the_seed(dnabert2, nt_folder):
    for folder, remote in ((dnabert2["none"], True), (nt_folder, False)):
        states = []
        for _ in range(2):
            torch.manual_seed(7)
            model = build_external_classifier(folder, num_classes=2, random_init=True,
                                              trust_remote_code=remote)
            states.append(model.state_dict())
        assert states[0].keys() == states[1].keys()
        assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_folder_without_weights_is_refused_unless_random_init(dnabert2):
    with pytest.raises(AblateError, match="model.safetensors.*pytorch_model.bin") as error:
        ExternalEncoder(dnabert2["none"], trust_remote_code=True)
    assert str(dnabert2["none"]) in str(error.value) and "random_init" in str(error.value)


def test_remote_code_needs_trust(dnabert2):
    with pytest.raises(AblateError, match="trust_remote_code: true"):
        ExternalEncoder(dnabert2["bin"])


def test_missing_encoder_weights_are_named(dnabert2, tmp_path):
    folder = make_dnabert2_checkpoint(tmp_path / "partial", weights=None)
    saved = _saved(dnabert2["bin"])
    del saved["bert.encoder.layer.1.mlp.wo.weight"]
    torch.save(saved, folder / "pytorch_model.bin")
    with pytest.raises(AblateError, match=r"lacks encoder weights encoder\.layer\.1\.mlp\.wo"):
        ExternalEncoder(folder, trust_remote_code=True)
    (folder / "pytorch_model.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(AblateError, match="pytorch_model.bin"):
        ExternalEncoder(folder, trust_remote_code=True)


def test_shape_mismatch_with_config_is_refused(nt_folder, tmp_path):
    folder = tmp_path / "nt-wider-vocab"
    shutil.copytree(nt_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config["vocab_size"] += 8
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(AblateError, match="word_embeddings.weight"):
        ExternalEncoder(folder)


@pytest.mark.parametrize("which", ["dnabert2", "nt"])
def test_searched_dropout_reaches_the_backbone(dnabert2, nt_folder, which):
    folder, remote = (dnabert2["bin"], True) if which == "dnabert2" else (nt_folder, False)
    default = ExternalEncoder(folder, trust_remote_code=remote)
    assert default.dropout_fields == ()
    if which == "dnabert2":  # the release's own values stand when no dropout is given
        assert default.config.hidden_dropout_prob == 0.1
        assert default.config.attention_probs_dropout_prob == 0.0
    model = build_external_classifier(folder, num_classes=2, dropout=0.25,
                                      trust_remote_code=remote)
    encoder = model.encoder
    assert set(encoder.dropout_fields) == {"hidden_dropout_prob", "attention_probs_dropout_prob"}
    for field in encoder.dropout_fields:
        assert getattr(encoder.config, field) == 0.25
    seen = []
    for name, module in encoder.backbone.named_modules():
        for attr in DROPOUT_ATTRS:
            value = getattr(module, attr, None)
            if isinstance(value, float):
                seen.append(name)
                assert value == 0.25, f"{name}.{attr} = {value}"
    assert len(seen) >= 5  # embeddings and every layer's attention and feed-forward
    assert model.head.dropout.p == 0.25
    with pytest.raises(AblateError, match="dropout"):
        ExternalEncoder(folder, dropout=1.5, trust_remote_code=remote)


def test_nt_checkpoint_loads_with_its_own_tokenizer(nt_folder):
    from transformers import EsmModel

    encoder = ExternalEncoder(nt_folder)
    assert encoder.weights_file.name == "model.safetensors"
    # transformers' own loader agrees on every encoder weight.
    reference = EsmModel.from_pretrained(nt_folder, local_files_only=True).state_dict()
    own = encoder.backbone.state_dict()
    names = [name for name, _ in encoder.backbone.named_parameters()]
    assert names and all(torch.equal(own[name], reference[name]) for name in names)
    tokenizer = load_tokenizer(nt_folder / "tokenizer.json")
    ids = special_ids(tokenizer)
    assert ids == SpecialIds(pad=1, cls=3, sep=4, mask=2, unk=0) != DNABERT2_IDS
    assert encoder.vocab_size == tokenizer.get_vocab_size()


@pytest.mark.parametrize("which", ["dnabert2", "nt"])
def test_padded_batch_runs_through_the_classifier(dnabert2, nt_folder, which):
    folder, remote = (dnabert2["safetensors"], True) if which == "dnabert2" else (nt_folder, False)
    torch.manual_seed(0)
    model = build_external_classifier(folder, num_classes=3, trust_remote_code=remote).eval()
    ids, mask, short = _padded_batch(folder / "tokenizer.json")
    assert (mask == 0).any()  # the second row is padded
    with torch.no_grad():
        logits = model(ids, mask)
        alone = model(torch.tensor([short]), torch.ones(1, len(short), dtype=torch.long))
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    torch.testing.assert_close(logits[1:], alone, atol=1e-5, rtol=1e-4)  # padding is ignored
    # Every parameter trains (none left without a gradient, which DDP would refuse).
    model.train()
    model(ids, mask).sum().backward()
    assert [name for name, p in model.named_parameters() if p.grad is None] == []


def test_tokenizer_axis_finds_each_checkpoint_tokenizer(dnabert2, nt_folder):
    for folder, vocab, ids in ((DNABERT2_FOLDER, 4096, DNABERT2_IDS),
                               (dnabert2["bin"], 4096, DNABERT2_IDS),
                               (nt_folder, 4096 + 5 + 5, SpecialIds(1, 3, 4, 2, 0))):
        choice = parse_tokenizer_choice(f"bpe:{folder}")
        assert choice.path == (folder / "tokenizer.json").resolve()
        tokenizer = build_tokenizer(choice)
        assert tokenizer.get_vocab_size() == vocab and special_ids(tokenizer) == ids


def test_full_size_dnabert2_from_its_config():
    _need_dnabert2()
    encoder = ExternalEncoder(DNABERT2_FOLDER, random_init=True, trust_remote_code=True)
    assert (encoder.hidden_size, encoder.vocab_size) == (768, 4096)
    pooler = 768 * 768 + 768  # BERT's pooler, which the encoder leaves out: nothing uses it
    assert _count(encoder) + pooler == 117_068_544


@pytest.mark.integration
def test_study_dnabert2_against_its_random_init_twin(tmp_path):
    """The real DNABERT-2 remote code, shrunken with random weights as the "checkpoint": the
    checkpoint and its own config at random init fine-tune side by side, with equal parameter
    counts, and the report compares them."""
    from mlflow import MlflowClient

    from ablate.analysis import latest_sweep, replicates, trials
    from ablate.tracking.schema import PRETRAIN_EXPERIMENT, Family
    from tests.checkpoints import make_dnabert2_checkpoint
    from tests.test_e2e import ablate, write_spec

    folder = make_dnabert2_checkpoint(tmp_path / "DNABERT-2-117M", weights="bin")
    tokenizer = f"bpe:{folder}"
    spec = write_spec(
        tmp_path,
        name="external-e2e",
        data={"synthetic": {"scale": 0.05, "seed": 4}, "tasks": ["prom/prom_core_tata"]},
        axes={"architecture": ["convnova", "dnabert2"],
              "pretraining": ["none", "external:dnabert2"], "tokenizer": [tokenizer]},
        budget={"trials_per_cell": 1, "max_epochs": 1, "concurrent_trials": 2},
        replicates=[0],
        external_checkpoints={"dnabert2": {"path": str(folder), "tokenizer": tokenizer,
                                           "device_hours": 1.5, "trust_remote_code": True}},
    )
    run = ablate("run", str(spec), cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    sweep = latest_sweep(uri, "external-e2e")[1]
    frame = trials(uri, "external-e2e", sweep)
    # convnova x external is not a cell: the checkpoint is an architecture of its own.
    assert sorted(frame[tag_column(Tag.CELL)].str.split("|").str[:2].str.join("|")) == [
        "convnova|none", "dnabert2|external:dnabert2", "dnabert2|none"]
    assert set(frame[frame[tag_column(Tag.ARCHITECTURE)] == "dnabert2"][
        tag_column(Tag.FAMILY)]) == {Family.TRANSFORMER}
    client = MlflowClient(uri)
    (registered,) = client.search_runs(
        [client.get_experiment_by_name(PRETRAIN_EXPERIMENT).experiment_id]
    )
    assert registered.data.metrics[MetricName.DEVICE_HOURS] == 1.5
    dnabert = frame[frame[tag_column(Tag.ARCHITECTURE)] == "dnabert2"]
    pretrained = dnabert[dnabert[tag_column(Tag.PRETRAINING)] == "external:dnabert2"]
    twin = dnabert[dnabert[tag_column(Tag.PRETRAINING)] == "none"]
    assert (pretrained[tag_column(Tag.PRETRAIN_RUN_ID)] == registered.info.run_id).all()
    # Like for like: the same model, so the same parameter count in both arms.
    n_params = metric_column(MetricName.N_PARAMS)
    assert set(pretrained[n_params]) == set(twin[n_params]) and len(set(twin[n_params])) == 1
    assert set(dnabert[tag_column(Tag.EXTERNAL_CHECKPOINT)]) == {"dnabert2"}
    from ablate.tracking.reader import runs

    study_runs = runs(uri, "external-e2e")
    reps = replicates(study_runs[study_runs[tag_column(Tag.SWEEP)] == sweep])
    assert len(reps) == 3
    report = ablate("report", str(spec), "--out", str(tmp_path / "report"), cwd=tmp_path)
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "external:dnabert2" in text and "unknown" in text
