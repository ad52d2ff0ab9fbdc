"""The heads shared by every architecture: classification and masked language modelling.

Every encoder exposes `hidden_size`, `config.vocab_size` and `forward(input_ids, attention_mask)`
returning hidden states (B x L x hidden_size). `SequenceClassifier` turns those into sequence
logits and `MaskedLanguageModel` into per-token vocabulary logits, the same way for all of them,
so architectures differ only in their encoder.

An encoder whose class sets `pooled_output = True` (the bag of k-mers) pools the sequence itself
and returns one position per sequence (B x 1 x hidden_size): the classifier takes that vector as
the pooled one, and no masked-LM head can sit on it.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ablate.errors import AblateError


def masked_mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of `hidden` (B x L x H) over positions where `attention_mask` (B x L) is 1.

    Computed in float32. A row with no real token pools to zeros.
    """
    mask = attention_mask.unsqueeze(-1).float()
    total = (hidden.float() * mask).sum(dim=1)
    return total / mask.sum(dim=1).clamp(min=1.0)


class ClassificationHead(nn.Module):
    """Dropout then a linear layer, from a pooled vector (B x H) to logits (B x num_classes)."""

    def __init__(self, hidden_size: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, num_classes)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(pooled))


class SequenceClassifier(nn.Module):
    """An encoder, masked mean pooling (unless the encoder pools itself) and a classification
    head."""

    def __init__(self, encoder: nn.Module, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.head = ClassificationHead(encoder.hidden_size, num_classes, dropout)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask (B x L) -> logits (B x num_classes)."""
        hidden = self.encoder(input_ids, attention_mask)
        if getattr(self.encoder, "pooled_output", False):
            return self.head(hidden[:, 0].float())  # already pooled: one position per row
        return self.head(masked_mean_pool(hidden, attention_mask))


class MaskedLMHead(nn.Module):
    """BERT's masked-LM head: Linear, GELU, LayerNorm, then a linear decoder to the vocabulary.

    The decoder is not tied to the input embeddings: ConvNova has no embedding matrix to tie it
    to, and one rule for every architecture keeps the comparison even.
    """

    def __init__(self, hidden_size: int, vocab_size: int):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size)
        self.decoder = nn.Linear(hidden_size, vocab_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (B x L x H) -> logits (B x L x vocab_size)."""
        return self.decoder(self.norm(F.gelu(self.dense(hidden))))


class MaskedLanguageModel(nn.Module):
    """An encoder and a masked-LM head: per-token logits over the encoder's vocabulary."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        if getattr(encoder, "pooled_output", False):
            raise AblateError(
                f"{type(encoder).__name__} returns one pooled vector per sequence, not a hidden "
                "state per token: it has no masked-LM head"
            )
        self.encoder = encoder
        self.head = MaskedLMHead(encoder.hidden_size, encoder.config.vocab_size)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids, attention_mask (B x L) -> logits (B x L x vocab_size); with ``labels``,
        the masked-LM loss instead (`loss`), so a wrapper such as DistributedDataParallel that
        only sees ``forward`` runs the same loss."""
        if labels is not None:
            return self.loss(input_ids, attention_mask, labels)
        return self.head(self.encoder(input_ids, attention_mask))

    def loss(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """Mean cross-entropy over positions whose label is not -100 (see `mask_tokens`).

        A batch with no labelled position gives a zero loss (still connected to the graph).
        """
        logits = self(input_ids, attention_mask)
        if not (labels != -100).any():
            return logits.sum() * 0.0
        return F.cross_entropy(
            logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100
        )
