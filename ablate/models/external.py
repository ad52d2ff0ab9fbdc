"""A pretrained encoder from a local checkpoint folder, built with ``transformers``.

This is how a checkpoint pretrained elsewhere (a local copy of DNABERT-2 or of a Nucleotide
Transformer, say) enters a study. The folder is read, never written, and nothing is downloaded
(``local_files_only``); its remote code runs only when the study spec sets
``trust_remote_code``.

The encoder is built from the folder's ``config.json`` with ``AutoModel.from_config`` and its
weights are then copied in from ``model.safetensors`` or ``pytorch_model.bin``, rather than with
``from_pretrained``: transformers 5 builds models on the meta device inside ``from_pretrained``,
which code written for transformers 4 does not always survive (DNABERT-2's ALiBi tensor does
not), and a masked-LM checkpoint (``bert.*`` and ``cls.*`` keys, say) is mapped onto the bare
encoder here in one way for every model. ``random_init`` builds the same configuration with fresh
weights: the checkpoint's from-scratch twin.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from numbers import Real
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ablate.errors import AblateError

# Weight files looked for, in this order (the sharded forms through their index files).
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)

# Attributes transformers 4 gave every configuration and transformers 5 no longer does. Model
# code written for 4 (DNABERT-2's among it) reads some of them; they are set, with 4's defaults,
# only where the configuration lacks them.
LEGACY_CONFIG_DEFAULTS: Mapping[str, Any] = {
    "pad_token_id": None,
    "bos_token_id": None,
    "eos_token_id": None,
    "sep_token_id": None,
    "decoder_start_token_id": None,
    "is_decoder": False,
    "add_cross_attention": False,
    "cross_attention_hidden_size": None,
    "tie_encoder_decoder": False,
    "torchscript": False,
    "output_attentions": False,
    "output_hidden_states": False,
    "return_dict": True,
    "chunk_size_feed_forward": 0,
}

# Configuration fields that set a backbone's dropout probabilities, under the names common
# model families use. A searched dropout is written to each of these a configuration has.
DROPOUT_FIELDS = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "dropout",
    "dropout_rate",
    "hidden_dropout",
    "attention_dropout",
    "activation_dropout",
    "embedding_dropout",
    "embed_dropout",
    "emb_dropout",
    "mlp_dropout",
    "resid_dropout",
    "embd_pdrop",
    "resid_pdrop",
    "attn_pdrop",
)

# Submodules of a bare encoder that computing hidden states never needs (BERT's pooler, ESM's
# contact-prediction head). They are removed, so their parameters are neither counted nor left
# without gradients (which DistributedDataParallel refuses).
UNUSED_SUBMODULES = ("pooler", "contact_head")


class ExternalEncoder(nn.Module):
    """Wraps a ``transformers`` encoder: token ids + mask in, hidden states (B x L x H) out.

    ``dropout``, when given, becomes the backbone's own dropout: it is written to every dropout
    field of the configuration (``DROPOUT_FIELDS``) before the model is built. ``random_init``
    keeps the fresh weights of the built model (the folder then needs no weights file), which
    are deterministic given ``torch.manual_seed``.
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        random_init: bool = False,
        dropout: float | None = None,
        trust_remote_code: bool = False,
    ):
        super().__init__()
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise AblateError(f"{folder}: no config.json; not a transformers checkpoint folder")
        config = load_config(folder, trust_remote_code=trust_remote_code)
        try:
            self.hidden_size = int(config.hidden_size)
            self.vocab_size = int(config.vocab_size)
        except (AttributeError, TypeError):
            raise AblateError(
                f"{folder / 'config.json'}: needs integer hidden_size and vocab_size"
            ) from None
        self.dropout_fields = set_dropout(config, dropout) if dropout is not None else ()
        backbone = _build(folder, config, trust_remote_code)
        _avoid_bundled_triton_attention(backbone)
        for name in UNUSED_SUBMODULES:
            if isinstance(getattr(backbone, name, None), nn.Module):
                setattr(backbone, name, None)
        self.weights_file: Path | None = None
        if not random_init:
            self.weights_file = find_weights(folder)
            load_encoder_state(backbone, read_weights(self.weights_file), source=self.weights_file)
        self.config = config
        self.backbone = backbone

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        outputs = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        hidden = getattr(outputs, "last_hidden_state", None)
        # Remote-code models (DNABERT-2's among them) may return a plain tuple.
        return hidden if hidden is not None else outputs[0]


def build_external_classifier(
    folder: str | Path,
    *,
    num_classes: int,
    dropout: float = 0.1,
    trust_remote_code: bool = False,
    random_init: bool = False,
) -> nn.Module:
    """An external encoder with the shared mean-pooling classification head.

    ``dropout`` is both the backbone's dropout and the head's.
    """
    from ablate.models.heads import SequenceClassifier

    encoder = ExternalEncoder(
        folder, random_init=random_init, dropout=dropout, trust_remote_code=trust_remote_code
    )
    return SequenceClassifier(encoder, num_classes, dropout)


def load_config(folder: Path, *, trust_remote_code: bool = False) -> Any:
    """The folder's configuration, with the attributes transformers 5 no longer defaults."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(
            folder, trust_remote_code=trust_remote_code, local_files_only=True
        )
    except ImportError as exc:
        raise AblateError(
            f"{folder}: its model code needs a package that is not installed: {exc}"
        ) from exc
    except (ValueError, OSError, KeyError) as exc:
        hint = _remote_code_hint(folder, trust_remote_code)
        detail = f"; {hint}" if hint else f": {exc}"
        raise AblateError(
            f"{folder / 'config.json'}: cannot read the configuration{detail}"
        ) from exc
    for name, value in LEGACY_CONFIG_DEFAULTS.items():
        if not hasattr(config, name):
            setattr(config, name, value)
    return config


def set_dropout(config: Any, dropout: float) -> tuple[str, ...]:
    """Write ``dropout`` to every dropout field ``config`` has; the names of those fields."""
    if not 0.0 <= float(dropout) < 1.0:
        raise AblateError(f"dropout {dropout} is not a probability in [0, 1)")
    fields = []
    for name in DROPOUT_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, Real) and not isinstance(value, bool):
            setattr(config, name, float(dropout))
            fields.append(name)
    return tuple(fields)


def _avoid_bundled_triton_attention(backbone: nn.Module) -> None:
    """Route remote code that bundles its own Triton flash-attention kernel (DNABERT-2's
    ``flash_attn_triton.py``) to its PyTorch attention path instead.

    That kernel was written for Triton 2.0 and fails on current Triton (``dot()`` lost its
    ``trans_b`` argument), and DNABERT-2 takes it whenever attention dropout is 0 and Triton is
    installed, which a search over dropout from 0 reaches. Its PyTorch path computes the same
    ALiBi attention. The switch is the remote module's own ``flash_attn_qkvpacked_func = None``.
    """
    import sys

    for module in backbone.modules():
        code = sys.modules.get(type(module).__module__)
        if code is not None and getattr(code, "flash_attn_qkvpacked_func", None) is not None:
            code.flash_attn_qkvpacked_func = None


def _build(folder: Path, config: Any, trust_remote_code: bool) -> nn.Module:
    """The bare encoder for ``config`` with fresh weights, in float32."""
    import transformers
    from transformers import AutoModel

    # transformers 5 builds in the configuration's dtype; ablate keeps float32 weights and
    # leaves lower precision to autocast.
    config.dtype = torch.float32
    try:
        return AutoModel.from_config(config, trust_remote_code=trust_remote_code)
    except ImportError as exc:
        raise AblateError(
            f"{folder}: its model code needs a package that is not installed: {exc}"
        ) from exc
    except Exception as exc:  # remote code fails in its own ways
        hint = _remote_code_hint(folder, trust_remote_code)
        raise AblateError(
            f"{folder}: cannot build the model from config.json with transformers "
            f"{transformers.__version__}{f' ({hint})' if hint else ''}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _remote_code_hint(folder: Path, trust_remote_code: bool) -> str:
    if trust_remote_code:
        return ""
    try:
        has_code = "auto_map" in json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return ""
    if not has_code:
        return ""
    return (
        "its config.json names its own model code (auto_map); set trust_remote_code: true "
        "for this checkpoint in the study spec (external_checkpoints) if you trust that code"
    )


def find_weights(folder: Path) -> Path:
    """The folder's weights file (``WEIGHT_FILES``, first found)."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise AblateError(
        f"{folder}: no weights file; looked for {', '.join(WEIGHT_FILES)}. Put the "
        "checkpoint's weights there, or build its configuration with random weights "
        "(random_init)"
    )


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a weights file (a sharded checkpoint's shards through its index)."""
    if path.name.endswith(".index.json"):
        try:
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise AblateError(f"{path}: not a readable weights index ({exc})") from None
        tensors: dict[str, torch.Tensor] = {}
        for shard in shards:
            tensors.update(read_weights(path.parent / shard))
        return tensors
    if not path.is_file():
        raise AblateError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error type
            raise AblateError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle and zip errors of many types
        raise AblateError(
            f"{path}: cannot read it as plain tensors with torch.load(weights_only=True) "
            f"({exc}); re-save the checkpoint's state dict, or convert it to model.safetensors"
        ) from None
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise AblateError(f"{path}: expected a state dict (parameter name -> tensor)")
    return dict(state)


def encoder_keys(model: nn.Module, checkpoint: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Encoder key -> checkpoint key, for the checkpoint tensors that belong to the encoder.

    A task model's checkpoint nests the encoder under the base-model prefix (``bert.``,
    ``esm.``: the model's ``base_model_prefix``) beside its heads (``cls.*``, ``lm_head.*``);
    a bare encoder's checkpoint has its keys as they are; such a key under the prefix wins.
    Legacy layer-norm names (``LayerNorm.gamma`` and ``.beta``, which transformers 5 still
    writes for some models) are read as ``.weight`` and ``.bias``. Keys the encoder lacks
    (heads) are dropped.
    """
    own = model.state_dict()
    base = getattr(model, "base_model_prefix", "") or ""
    prefix = f"{base}." if base else ""
    mapping: dict[str, str] = {}
    nested = [key for key in checkpoint if prefix and key.startswith(prefix)]
    for key, name in [(key, key) for key in checkpoint] + [(k, k[len(prefix):]) for k in nested]:
        for candidate in (name, _legacy_name(name)):
            if candidate in own:
                mapping[candidate] = key
                break
    return mapping


_LEGACY_SUFFIXES = ((".gamma", ".weight"), (".beta", ".bias"))


def _legacy_name(name: str) -> str:
    for old, new in _LEGACY_SUFFIXES:
        if name.endswith(old):
            return name[: -len(old)] + new
    return name


def load_encoder_state(
    model: nn.Module, checkpoint: Mapping[str, torch.Tensor], *, source: Path
) -> None:
    """Copy a checkpoint's encoder tensors into ``model``; every parameter must be covered."""
    mapping = encoder_keys(model, checkpoint)
    own = model.state_dict()
    missing = [name for name, _ in model.named_parameters() if name not in mapping]
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8
                                          else "")
        raise AblateError(
            f"{source}: the checkpoint lacks encoder weights {shown}; it does not match "
            f"config.json (or is not a checkpoint of this model)"
        )
    mismatched = [
        f"{name} {tuple(checkpoint[key].shape)} vs {tuple(own[name].shape)}"
        for name, key in mapping.items() if checkpoint[key].shape != own[name].shape
    ]
    if mismatched:
        raise AblateError(
            f"{source}: tensor shapes differ from config.json's model (checkpoint vs "
            f"config): {'; '.join(mismatched[:8])}"
        )
    with torch.no_grad():
        model.load_state_dict({name: checkpoint[key] for name, key in mapping.items()},
                              strict=False)
