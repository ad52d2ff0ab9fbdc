"""Names of the architectures and their presets, and the functions that build models.

Importing this module does not import torch or transformers (the architecture modules are
imported when a model is built), so specs and the CLI can check names cheaply.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ablate.errors import AblateError

if TYPE_CHECKING:
    import torch.nn as nn

    from ablate.models.heads import MaskedLanguageModel, SequenceClassifier



@dataclass(frozen=True)
class Architecture:
    """One architecture on the study's axis: where its code lives and what kind it is."""

    module: str
    config_class: str
    encoder_class: str
    convolutional: bool  # the convolutional side of question 1 (transformer vs convolution)
    baseline: bool = False  # a floor below every network, on neither side of question 1
    masked_lm: bool = True  # has per-token hidden states, so it can be pretrained as a masked LM
    tokenizers: tuple[str, ...] | None = None  # the tokenizer kinds it accepts; None: any


# The one list of architectures (the study spec and the analysis read it from here); the
# module is imported on first use.
_ARCHITECTURES: dict[str, Architecture] = {
    "convnova": Architecture("ablate.models.convnova", "ConvNovaConfig", "ConvNova", True),
    "transformer": Architecture("ablate.models.transformer", "TransformerConfig",
                                "TransformerEncoder", False),
    "unet": Architecture("ablate.models.unet", "UNetConfig", "UNet", True),
    "cnn": Architecture("ablate.models.cnn", "CNNConfig", "CNN", True),
    "kmer": Architecture("ablate.models.kmer", "KmerConfig", "KmerEncoder", False,
                         baseline=True, masked_lm=False, tokenizers=("char",)),
}
ARCHITECTURES: tuple[str, ...] = tuple(_ARCHITECTURES)
CONVOLUTIONAL: tuple[str, ...] = tuple(n for n, a in _ARCHITECTURES.items() if a.convolutional)
BASELINES: tuple[str, ...] = tuple(n for n, a in _ARCHITECTURES.items() if a.baseline)
# Architectures that can be pretrained (`build_mlm`); the others take pretraining "none" only.
PRETRAINABLE: tuple[str, ...] = tuple(n for n, a in _ARCHITECTURES.items() if a.masked_lm)
# Tokenizer kinds (`ablate.tokenization.KINDS`) of the architectures that accept only some.
TOKENIZER_KINDS: dict[str, tuple[str, ...]] = {
    n: a.tokenizers for n, a in _ARCHITECTURES.items() if a.tokenizers is not None
}

# Config values of each preset; build arguments and overrides are applied on top.
_PRESET_VALUES: dict[str, dict[str, dict[str, Any]]] = {
    "convnova": {
        # Dilations 1, 1, base, base**2, ... (`convnova.dilation_schedule`); receptive field
        # 9 + 8 * sum(dilations) tokens with the released input layer and 8 fewer with
        # input_layer "embedding" (`convnova.receptive_field`); parameter counts with the char
        # tokenizer (10 tokens) and the released input layer.
        # tiny: dilations [1, 1, 1, 2], receptive field 49 tokens (41 with "embedding"),
        # 93,024 parameters; small enough for CPU tests
        "tiny": {"hidden_size": 32, "kernel_size": 9, "n_layers": 4, "dilation_base": 2,
                 "d_inner": 2, "ffn": False},
        # small: the released model at half its width: dilations [1, 1, 1, 4, 16], receptive
        # field 193 tokens (185 with "embedding"), 432,192 parameters
        "small": {"hidden_size": 64, "kernel_size": 9, "n_layers": 5, "dilation_base": 4,
                  "d_inner": 2, "ffn": False},
        # nt: the released Nucleotide Transformer benchmark configuration: dilations
        # [1, 1, 1, 4, 16], receptive field 193 tokens (185 with "embedding"), 1,699,968
        # parameters (1,688,448, the released count, with its 5-symbol one-hot alphabet)
        "nt": {"hidden_size": 128, "kernel_size": 9, "n_layers": 5, "dilation_base": 4,
               "d_inner": 2, "ffn": False},
    },
    "transformer": {
        "tiny": {"hidden_size": 64, "n_layers": 2, "n_heads": 2, "intermediate_size": 128},
        "small": {"hidden_size": 256, "n_layers": 4, "n_heads": 4, "intermediate_size": 1024},
        # DNABERT-2's shape on ModernBERT layers (see transformer.py). With the 4,096-token BPE
        # vocabulary the encoder has 116,467,200 parameters; DNABERT-2 has 117,068,544
        # (its "117M"), of which 590,592 are the pooler we replace by mean pooling, 9,216 the
        # feed-forward output biases ModernBERT cannot have and 1,536 token-type embeddings.
        "dnabert2-base": {"hidden_size": 768, "n_layers": 12, "n_heads": 12,
                          "intermediate_size": 3072},
    },
    "unet": {
        # small enough for CPU tests
        "tiny": {"hidden_size": 16, "depth": 2, "growth": 2, "kernel_size": 5},
        # widths 64, 128, 256 and a 512-channel bottleneck at 1/8 of the length
        "base": {"hidden_size": 64, "depth": 3, "growth": 2, "kernel_size": 5},
    },
    "cnn": {
        # small enough for CPU tests
        "tiny": {"hidden_size": 32, "n_layers": 3, "first_kernel_size": 9, "kernel_size": 5},
        # Basset's depth and first-kernel width at full resolution (see cnn.py)
        "base": {"hidden_size": 256, "n_layers": 3, "first_kernel_size": 19, "kernel_size": 11},
    },
    "kmer": {
        # logistic regression on 5-mer frequencies: 1,024 features, no encoder parameters
        # (k is usually searched: `model_params` in search_spaces/kmer.yaml)
        "base": {"k": 5},
    },
}

PRESETS: dict[str, tuple[str, ...]] = {
    arch: tuple(presets) for arch, presets in _PRESET_VALUES.items()
}

# Set from build arguments (the data decides them), so not overridable.
_FROM_ARGUMENTS = ("vocab_size", "max_len", "pad_id", "complement_ids")


def _classes(architecture: str) -> tuple[type, type]:
    info = _ARCHITECTURES[architecture]
    module = importlib.import_module(info.module)
    return getattr(module, info.config_class), getattr(module, info.encoder_class)


def _check_names(architecture: str, preset: str) -> None:
    if architecture not in ARCHITECTURES:
        raise AblateError(
            f"unknown architecture {architecture!r}; choose one of: {', '.join(ARCHITECTURES)}"
        )
    if preset not in PRESETS[architecture]:
        raise AblateError(
            f"unknown preset {preset!r} for architecture {architecture!r}; "
            f"choose one of: {', '.join(PRESETS[architecture])}"
        )


def build_encoder(
    architecture: str,
    *,
    preset: str,
    vocab_size: int,
    max_len: int,
    pad_id: int = 3,
    dropout: float = 0.1,
    complement_ids: list[int] | None = None,
    overrides: dict[str, Any] | None = None,
) -> nn.Module:
    """Build an encoder (token ids -> B x L x hidden_size); see `build_classifier`."""
    _check_names(architecture, preset)
    config_class, encoder_class = _classes(architecture)
    fields = [f.name for f in dataclasses.fields(config_class)]
    allowed = [name for name in fields if name not in _FROM_ARGUMENTS]
    for name in overrides or {}:
        if name not in allowed:
            raise AblateError(
                f"unknown {architecture} config field {name!r} in overrides; "
                f"allowed fields: {', '.join(allowed)}"
            )

    values: dict[str, Any] = dict(_PRESET_VALUES[architecture][preset])
    values.update(vocab_size=vocab_size, pad_id=pad_id, dropout=dropout)
    if "max_len" in fields:
        values["max_len"] = max_len
    if "complement_ids" in fields:
        values["complement_ids"] = complement_ids
    values.update(overrides or {})
    try:
        config = config_class(**values)
    except TypeError as error:  # e.g. a string where a number belongs
        raise AblateError(f"bad {architecture} config value in overrides: {error}") from error
    return encoder_class(config)


def encoder_from_config(architecture: str, values: dict[str, Any]) -> nn.Module:
    """Build an encoder from all of its config fields (as `encoder_config` returns them)."""
    if architecture not in ARCHITECTURES:
        raise AblateError(
            f"unknown architecture {architecture!r}; choose one of: {', '.join(ARCHITECTURES)}"
        )
    config_class, encoder_class = _classes(architecture)
    try:
        config = config_class(**values)
    except TypeError as error:  # a missing, unknown or badly typed field
        raise AblateError(f"bad {architecture} config: {error}") from error
    return encoder_class(config)


def architecture_of(encoder: nn.Module) -> str:
    """The architecture name of an encoder built by `build_encoder`."""
    for architecture, info in _ARCHITECTURES.items():
        module = sys.modules.get(info.module)  # an instance implies its module is imported
        if module is not None and isinstance(encoder, getattr(module, info.encoder_class)):
            return architecture
    raise AblateError(f"{type(encoder).__name__} is not an encoder of: {', '.join(ARCHITECTURES)}")


def encoder_config(encoder: nn.Module) -> dict[str, Any]:
    """All config fields of an encoder (enough for `encoder_from_config` to rebuild it)."""
    return dataclasses.asdict(encoder.config)


def build_classifier(
    architecture: str,
    *,
    preset: str,
    vocab_size: int,
    num_classes: int,
    max_len: int,
    pad_id: int = 3,
    dropout: float = 0.1,
    complement_ids: list[int] | None = None,
    overrides: dict[str, Any] | None = None,
) -> SequenceClassifier:
    """Build an encoder with masked mean pooling and a classification head.

    architecture: one of `ARCHITECTURES`.
    preset: one of `PRESETS[architecture]`.
    vocab_size: the tokenizer's vocabulary size.
    num_classes: number of labels.
    max_len: longest input in tokens (the transformer refuses longer inputs; the convolutional
        architectures have no length limit).
    pad_id: the tokenizer's padding id.
    dropout: dropout of the encoder and of the head (overrides may set the encoder's apart).
    complement_ids: ConvNova's token -> base-complement token table (ignored by others).
    overrides: config field values replacing the preset's, e.g. {"n_layers": 6}.

    Raises AblateError for an unknown architecture, preset or override field.
    """
    from ablate.models.heads import SequenceClassifier

    encoder = build_encoder(architecture, preset=preset, vocab_size=vocab_size, max_len=max_len,
                            pad_id=pad_id, dropout=dropout, complement_ids=complement_ids,
                            overrides=overrides)
    return SequenceClassifier(encoder, num_classes, dropout)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of `module` (shared parameters counted once)."""
    return sum(p.numel() for p in module.parameters())


def build_mlm(architecture: str, **encoder_args: Any) -> MaskedLanguageModel:
    """Build an encoder with a masked-LM head (logits over the vocabulary at every position).

    Arguments as for `build_encoder`. Pair it with `ablate.models.mlm.mask_tokens`. Raises
    AblateError for an architecture not in `PRETRAINABLE`.
    """
    from ablate.models.heads import MaskedLanguageModel

    if architecture in _ARCHITECTURES and not _ARCHITECTURES[architecture].masked_lm:
        raise AblateError(
            f"architecture {architecture!r} has no masked-LM pretraining (it pools the sequence "
            f"into one vector, with no hidden state per token); pretrainable architectures: "
            f"{', '.join(PRETRAINABLE)}"
        )

    return MaskedLanguageModel(build_encoder(architecture, **encoder_args))
