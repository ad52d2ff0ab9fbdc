"""A plain convolutional baseline in the Basset / DeepSEA style: the floor of the comparison.

    x = Embedding(tokens)
    for each block i (kernel first_kernel_size for the first, kernel_size after):
        x = dropout(ReLU(LayerNorm(conv_i(x))))

Basset (Kelley et al., 2016) stacks three such blocks (300 filters of width 19, then 200 of
width 11, then 200 of width 7), each followed by max pooling, then fully connected layers.
Here every convolution has stride 1 and 'same' padding and there is no pooling inside the
encoder: the masked-LM head needs one hidden state per input token, and pooling would leave one
per several tokens. Basset's pooling down to a single vector is played by the shared masked mean
pooling of the classification head (`ablate.models.heads`).

Normalisation is a LayerNorm over channels at each position rather than Basset's batch norm: it
is computed per position, so padded positions cannot leak into real ones through batch
statistics in training, and the model behaves the same in training and evaluation whatever the
batch size (a tuned nuisance hyperparameter here).

Padding: every convolution input is zeroed at padded positions, which is what the convolution's
own zero padding does past the end of a sequence, so a sequence's hidden states do not depend on
how much padding follows it. Hidden states at padded positions are zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ablate.errors import AblateError


@dataclass
class CNNConfig:
    """Hyperparameters of the convolutional baseline.

    vocab_size: number of token ids.
    hidden_size: channels of every block (and width of the token embedding).
    n_layers: number of convolution blocks.
    first_kernel_size: width of the first convolution (odd; wide, as Basset's 19).
    kernel_size: width of the other convolutions (odd).
    dropout: dropout after every block.
    pad_id: id of the padding token.
    """

    vocab_size: int
    hidden_size: int = 256
    n_layers: int = 3
    first_kernel_size: int = 19
    kernel_size: int = 11
    dropout: float = 0.1
    pad_id: int = 3

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "n_layers"):
            if getattr(self, name) < 1:
                raise AblateError(f"cnn config: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("first_kernel_size", "kernel_size"):
            size = getattr(self, name)
            if size < 1 or size % 2 == 0:
                raise AblateError(
                    f"cnn config: {name} must be odd so the output keeps the input length, "
                    f"got {size}"
                )
        if not 0.0 <= self.dropout < 1.0:
            raise AblateError(f"cnn config: dropout must be in [0, 1), got {self.dropout}")


class ConvBlock(nn.Module):
    """Masked 'same' convolution, LayerNorm over channels, ReLU, dropout (channels last)."""

    def __init__(self, channels: int, kernel_size: int, dropout: float):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(channels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B x L x C), mask (B x L x 1, 0 at padding) -> (B x L x C)."""
        x = self.conv((x * mask).transpose(1, 2)).transpose(1, 2)
        return self.dropout(F.relu(self.norm(x)))


class CNN(nn.Module):
    """Convolutional baseline: token ids in, per-token hidden states (B x L x hidden_size) out."""

    def __init__(self, config: CNNConfig):
        super().__init__()
        self.config = config
        self.hidden_size = config.hidden_size
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        kernels = [config.first_kernel_size] + [config.kernel_size] * (config.n_layers - 1)
        self.blocks = nn.ModuleList(
            ConvBlock(config.hidden_size, k, config.dropout) for k in kernels
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask (B x L) -> hidden states (B x L x hidden_size)."""
        mask = attention_mask.unsqueeze(-1).to(self.embed.weight.dtype)
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x, mask)
        return x * mask
