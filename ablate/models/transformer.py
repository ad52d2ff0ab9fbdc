"""A BERT-style transformer encoder, built from a `transformers` config (no remote code).

The encoder is `transformers.BertModel` without its pooler: learned absolute positions, post-norm
layers, GELU feed-forward, scaled-dot-product attention. Classification mean-pools its hidden
states over real tokens (see `ablate.models.heads`), the same head every architecture uses.
Checkpoints travel with `encoder.bert.save_pretrained(...)` / `BertModel.from_pretrained(...)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from transformers import BertConfig, BertModel

from ablate.errors import AblateError


@dataclass
class TransformerConfig:
    """Hyperparameters of a BERT-style encoder.

    vocab_size: number of token ids.
    max_len: longest input in tokens (size of the position embedding table).
    hidden_size: width of the residual stream.
    n_layers: number of transformer layers.
    n_heads: attention heads per layer (must divide hidden_size).
    intermediate_size: width of the feed-forward layers.
    dropout: dropout on hidden states and attention probabilities.
    pad_id: id of the padding token.
    """

    vocab_size: int
    max_len: int
    hidden_size: int = 256
    n_layers: int = 4
    n_heads: int = 4
    intermediate_size: int = 1024
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
        if not 0.0 <= self.dropout < 1.0:
            raise AblateError(f"transformer config: dropout must be in [0, 1), got {self.dropout}")

    def to_bert_config(self) -> BertConfig:
        return BertConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.n_layers,
            num_attention_heads=self.n_heads,
            intermediate_size=self.intermediate_size,
            hidden_act="gelu",
            hidden_dropout_prob=self.dropout,
            attention_probs_dropout_prob=self.dropout,
            max_position_embeddings=self.max_len,
            type_vocab_size=1,  # single-segment inputs
            pad_token_id=self.pad_id,
            attn_implementation="sdpa",
        )


class TransformerEncoder(nn.Module):
    """BERT encoder: token ids in, per-token hidden states (B x L x hidden_size) out."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.hidden_size = config.hidden_size
        self.bert = BertModel(config.to_bert_config(), add_pooling_layer=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask (B x L) -> hidden states (B x L x hidden_size)."""
        if input_ids.shape[1] > self.config.max_len:
            raise ValueError(
                f"input has {input_ids.shape[1]} tokens but the encoder was built for at most "
                f"max_len={self.config.max_len}"
            )
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
