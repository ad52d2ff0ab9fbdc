"""External checkpoints: a local transformers folder enters a study with its declared cost."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from ablate.errors import AblateError
from ablate.models.external import ExternalEncoder, build_external_classifier
from ablate.tracking.schema import MetricName, Tag, tag_column


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


@pytest.mark.integration
def test_study_with_external_checkpoint(tmp_path, dnabert2_tokenizer_path):
    from mlflow import MlflowClient

    from ablate.analysis import latest_sweep, trials
    from ablate.tracking.schema import PRETRAIN_EXPERIMENT
    from tests.test_e2e import ablate, write_spec

    folder = make_checkpoint(tmp_path / "tiny-bert", dnabert2_tokenizer_path)
    tokenizer = f"bpe:{folder}"
    spec = write_spec(
        tmp_path,
        name="external-e2e",
        data={"synthetic": {"scale": 0.05, "seed": 4}, "tasks": ["prom/prom_core_tata"]},
        axes={"architecture": ["convnova", "transformer"],
              "pretraining": ["none", "external:tiny"], "tokenizer": [tokenizer]},
        budget={"trials_per_cell": 1, "max_epochs": 1, "concurrent_trials": 2},
        external_checkpoints={"tiny": {"path": str(folder), "tokenizer": tokenizer,
                                       "device_hours": 1.5}},
    )
    run = ablate("run", str(spec), cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    frame = trials(uri, "external-e2e", latest_sweep(uri, "external-e2e")[1])
    # convnova x external is not a cell: the checkpoint brings its own architecture.
    assert sorted(frame[tag_column(Tag.CELL)].str.split("|").str[:2].str.join("|")) == [
        "convnova|none", "transformer|external:tiny", "transformer|none"]
    client = MlflowClient(uri)
    (registered,) = client.search_runs(
        [client.get_experiment_by_name(PRETRAIN_EXPERIMENT).experiment_id]
    )
    assert registered.data.metrics[MetricName.DEVICE_HOURS] == 1.5
    external = frame[frame[tag_column(Tag.PRETRAINING)] == "external:tiny"]
    assert (external[tag_column(Tag.PRETRAIN_RUN_ID)] == registered.info.run_id).all()
