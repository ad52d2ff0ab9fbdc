"""Save and load models as a folder: `config.json` (what to build) + `model.safetensors` (weights).

config.json holds:

    format_version  FORMAT_VERSION
    kind            "classifier" (SequenceClassifier), "mlm" (MaskedLanguageModel) or "encoder"
    architecture    one of `ARCHITECTURES`
    config          every field of the encoder's config, presets and overrides resolved
    num_classes     (classifier) number of labels
    head_dropout    (classifier) dropout of the classification head
    tied            state-dict names stored once under another name (shared tensors)

`save_model` writes a temporary folder next to the target and renames it into place, so a failed
save never leaves a half-written model behind. `load_model` rebuilds exactly the saved module;
`load_encoder_weights` copies just the encoder of a saved model into another model, e.g. an
MLM-pretrained encoder into a classifier.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ablate.errors import AblateError
from ablate.models.heads import MaskedLanguageModel, SequenceClassifier
from ablate.models.registry import (
    ARCHITECTURES,
    architecture_of,
    encoder_config,
    encoder_from_config,
)

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
KINDS = ("classifier", "mlm", "encoder")

# Config fields that may differ between a saved encoder and the one receiving its weights:
# they change no weight (the transformer's rotary positions have no table).
_FREE_FIELDS = ("dropout", "max_len")


def save_model(model: nn.Module, folder: str | Path) -> Path:
    """Write `model` (a classifier, masked LM or bare encoder) to `folder`; return the folder.

    An existing folder is replaced, only once the new one is completely written.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise AblateError(f"cannot save a model to {folder}: it exists and is not a folder")
    encoder = _encoder_of(model)
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "kind": _kind_of(model),
        "architecture": architecture_of(encoder),
        "config": encoder_config(encoder),
    }
    if isinstance(model, SequenceClassifier):
        meta["num_classes"] = model.head.out.out_features
        meta["head_dropout"] = model.head.dropout.p
    tensors, meta["tied"] = _unique_tensors(model.state_dict())

    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex}"
    temporary.mkdir()
    try:
        save_file(tensors, str(temporary / WEIGHTS_FILE), metadata={"format": "pt"})
        (temporary / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if folder.exists():
            old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex}"
            os.replace(folder, old)
            os.replace(temporary, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temporary, folder)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)
    return folder


def load_model(folder: str | Path) -> nn.Module:
    """Rebuild the module saved in `folder` by `save_model`, with its weights, in eval mode.

    The global random state is left as it was. Raises AblateError naming the file when the
    folder, its config or its weights are missing or do not fit together.
    """
    folder = Path(folder)
    meta, tensors = _read(folder)
    with torch.random.fork_rng(devices=[]):  # building initialises weights randomly first
        encoder = encoder_from_config(meta["architecture"], meta["config"])
        if meta["kind"] == "classifier":
            model: nn.Module = SequenceClassifier(
                encoder, int(meta["num_classes"]), float(meta.get("head_dropout", 0.1))
            )
        elif meta["kind"] == "mlm":
            model = MaskedLanguageModel(encoder)
        else:
            model = encoder
    _load_state(model, tensors, folder / WEIGHTS_FILE)
    return model.eval()


def load_encoder_weights(model: nn.Module, folder: str | Path) -> None:
    """Copy the encoder weights saved in `folder` into `model`'s encoder (in place).

    `model` is a classifier, masked LM or bare encoder; the saved model may be any of those.
    Its encoder must have the same architecture and config (dropout and max_len aside), or
    AblateError names what differs. The heads of `model` are left untouched.
    """
    folder = Path(folder)
    meta, tensors = _read(folder)
    target = _encoder_of(model)
    architecture = architecture_of(target)
    config_path = folder / CONFIG_FILE
    if meta["architecture"] != architecture:
        raise AblateError(
            f"{config_path}: saved encoder is a {meta['architecture']!r}, "
            f"the model's is a {architecture!r}"
        )
    ours = encoder_config(target)
    saved = meta["config"]
    differences = [
        f"{name} (saved {saved.get(name)!r}, model {ours.get(name)!r})"
        for name in sorted(set(ours) | set(saved))
        if name not in _FREE_FIELDS and saved.get(name) != ours.get(name)
    ]
    if differences:
        raise AblateError(
            f"{config_path}: the saved {architecture} encoder does not match the model's: "
            f"{'; '.join(differences)}"
        )
    prefix = "" if meta["kind"] == "encoder" else "encoder."
    state = {name[len(prefix):]: t for name, t in tensors.items() if name.startswith(prefix)}
    _load_state(target, state, folder / WEIGHTS_FILE)


def _encoder_of(model: nn.Module) -> nn.Module:
    if isinstance(model, (SequenceClassifier, MaskedLanguageModel)):
        return model.encoder
    return model


def _kind_of(model: nn.Module) -> str:
    if isinstance(model, SequenceClassifier):
        return "classifier"
    if isinstance(model, MaskedLanguageModel):
        return "mlm"
    return "encoder"


def _unique_tensors(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Split a state dict into tensors stored once each and {alias: stored name} for the rest.

    safetensors refuses tensors that share memory (e.g. tied embedding and decoder weights);
    the rebuilt module ties them again, so one copy is enough.
    """
    tensors: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, tensor in state.items():
        key = (tensor.device, tensor.data_ptr(), tensor.shape, tensor.stride())
        if tensor.numel() > 0 and key in seen:
            tied[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = tensor.detach().to("cpu").contiguous()
    return tensors, tied


def _read(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The checked config.json and the tensors of a saved model (aliases filled in)."""
    if not folder.is_dir():
        raise AblateError(f"no saved model at {folder}: not a folder")
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    try:
        meta = json.loads(config_path.read_text())
    except FileNotFoundError as error:
        raise AblateError(f"{config_path} is missing; is {folder} a saved model?") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AblateError(f"{config_path} is not valid JSON: {error}") from error
    if not isinstance(meta, dict):
        raise AblateError(f"{config_path} must hold a JSON object")
    if meta.get("format_version") != FORMAT_VERSION:
        raise AblateError(
            f"{config_path}: format_version {meta.get('format_version')!r} is not supported "
            f"(this version of ablate reads {FORMAT_VERSION})"
        )
    if meta.get("kind") not in KINDS:
        raise AblateError(f"{config_path}: kind must be one of {', '.join(KINDS)}")
    if meta.get("architecture") not in ARCHITECTURES:
        raise AblateError(
            f"{config_path}: architecture must be one of {', '.join(ARCHITECTURES)}, "
            f"got {meta.get('architecture')!r}"
        )
    if not isinstance(meta.get("config"), dict):
        raise AblateError(f"{config_path}: 'config' must hold the encoder's config fields")
    if meta["kind"] == "classifier" and not isinstance(meta.get("num_classes"), int):
        raise AblateError(f"{config_path}: a classifier needs an integer 'num_classes'")
    if not weights_path.is_file():
        raise AblateError(f"{weights_path} is missing")
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError) as error:
        raise AblateError(f"{weights_path} is not a readable safetensors file: {error}") from error
    for alias, name in (meta.get("tied") or {}).items():
        if name not in tensors:
            raise AblateError(f"{config_path}: tied tensor {alias!r} refers to missing {name!r}")
        tensors[alias] = tensors[name]
    return meta, tensors


def _load_state(module: nn.Module, state: dict[str, torch.Tensor], weights_path: Path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:  # missing, unexpected or misshapen tensors
        raise AblateError(f"{weights_path} does not fit the model: {error}") from error
