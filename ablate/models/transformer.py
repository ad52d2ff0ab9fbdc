"""A DNABERT-2-style transformer encoder, built from a stock `transformers` model (no remote code).

DNABERT-2 is a BERT encoder (MosaicBERT) with a gated GELU (GeGLU) feed-forward and ALiBi
attention biases instead of learned positions. No encoder in `transformers` has ALiBi, and
`BertModel` has a plain GELU feed-forward: with DNABERT-2's shape (12 x 768, feed-forward 3072)
it has ~89M parameters against DNABERT-2's 117M, because GeGLU's input projection is twice as
wide. `ModernBertModel` has the same GeGLU feed-forward (`Wi`: hidden -> 2 x intermediate, GELU
of one half times the other, `Wo` back), so it matches DNABERT-2 layer for layer in size. It
differs in ways that do not change the size: rotary position embeddings instead of ALiBi (both
are relative and have no position table, so neither limits the input length), pre-norm layers
with a final LayerNorm instead of post-norm, and no token-type embeddings or pooler (inputs are
single-segment and classification mean-pools, see `ablate.models.heads`).

Every layer attends globally (ModernBERT's sliding-window layers are switched off) through
PyTorch's scaled-dot-product attention; padded keys are masked out, and positions count from the
first token, so trailing padding never changes the hidden states of real tokens.

Weights are initialised as in BERT and DNABERT-2 (normal, std 0.02; biases 0; LayerNorm 1 and 0)
rather than with ModernBERT's truncated normal, whose rejection sampler in torch 2.13 takes
~20 s on CPU for 117M parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from transformers import ModernBertConfig, ModernBertModel

from ablate.errors import AblateError


@dataclass
class TransformerConfig:
    """Hyperparameters of the transformer encoder.

    vocab_size: number of token ids.
    max_len: longest input in tokens. Rotary positions have no table, so this only bounds the
        input (a longer one raises); it does not change the weights.
    hidden_size: width of the residual stream.
    n_layers: number of transformer layers.
    n_heads: attention heads per layer (must divide hidden_size).
    intermediate_size: width of the gated feed-forward (its input projection is twice as wide).
    rope_theta: base of the rotary position frequencies.
    dropout: dropout on the embeddings, attention probabilities and outputs, and feed-forward.
    pad_id: id of the padding token.
    """

    vocab_size: int
    max_len: int
    hidden_size: int = 256
    n_layers: int = 4
    n_heads: int = 4
    intermediate_size: int = 1024
    rope_theta: float = 10_000.0
    dropout: float = 0.1
    pad_id: int = 3

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_len", "hidden_size", "n_layers", "n_heads",
                     "intermediate_size"):
            if getattr(self, name) < 1:
                raise AblateError(
                    f"transformer config: {name} must be >= 1, got {getattr(self, name)}"
                )
        if self.hidden_size % self.n_heads != 0:
            raise AblateError(
                f"transformer config: hidden_size ({self.hidden_size}) must be divisible by "
                f"n_heads ({self.n_heads})"
            )
        if (self.hidden_size // self.n_heads) % 2 != 0:
            raise AblateError(
                f"transformer config: head size hidden_size / n_heads "
                f"({self.hidden_size // self.n_heads}) must be even for rotary positions"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise AblateError(f"transformer config: dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.pad_id < self.vocab_size:
            raise AblateError(
                f"transformer config: pad_id ({self.pad_id}) must be a token id below "
                f"vocab_size ({self.vocab_size})"
            )

    def to_modernbert_config(self) -> ModernBertConfig:
        return ModernBertConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.n_layers,
            num_attention_heads=self.n_heads,
            intermediate_size=self.intermediate_size,
            hidden_activation="gelu",  # exact GELU in the GeGLU, as DNABERT-2
            max_position_embeddings=self.max_len,
            layer_types=["full_attention"] * self.n_layers,  # global attention everywhere
            rope_parameters={"full_attention": {"rope_type": "default",
                                                "rope_theta": self.rope_theta}},
            # DNABERT-2's biases: attention projections and LayerNorms have them; its GeGLU
            # input projection has none (ModernBERT's one switch also drops the output bias).
            attention_bias=True,
            norm_bias=True,
            mlp_bias=False,
            embedding_dropout=self.dropout,
            attention_dropout=self.dropout,
            mlp_dropout=self.dropout,
            pad_token_id=self.pad_id,
            bos_token_id=1,  # [CLS]
            cls_token_id=1,
            eos_token_id=2,  # [SEP]
            sep_token_id=2,
            attn_implementation="sdpa",
        )


def _build_modernbert(config: ModernBertConfig) -> ModernBertModel:
    """A `ModernBertModel` with BERT's initialisation (see the module docstring)."""
    with torch.device("meta"):  # skips ModernBERT's own (slow) initialisation
        model = ModernBertModel(config)
    model.to_empty(device="cpu")
    model.rotary_emb = type(model.rotary_emb)(config)  # recomputes the frequency buffers
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


class TransformerEncoder(nn.Module):
    """Transformer encoder: token ids in, per-token hidden states (B x L x hidden_size) out."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.hidden_size = config.hidden_size
        self.backbone = _build_modernbert(config.to_modernbert_config())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask (B x L) -> hidden states (B x L x hidden_size)."""
        if input_ids.shape[1] > self.config.max_len:
            raise ValueError(
                f"input has {input_ids.shape[1]} tokens but the encoder was built for at most "
                f"max_len={self.config.max_len}"
            )
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state
