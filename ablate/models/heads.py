"""Pooling and the classification head shared by every architecture.

Every encoder exposes `hidden_size` and `forward(input_ids, attention_mask)` returning hidden
states (B x L x hidden_size); `SequenceClassifier` turns those into logits the same way for all
of them, so architectures differ only in their encoder.
"""

from __future__ import annotations

import torch
import torch.nn as nn


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
    """An encoder, masked mean pooling and a classification head."""

    def __init__(self, encoder: nn.Module, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.head = ClassificationHead(encoder.hidden_size, num_classes, dropout)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask (B x L) -> logits (B x num_classes)."""
        hidden = self.encoder(input_ids, attention_mask)
        return self.head(masked_mean_pool(hidden, attention_mask))
