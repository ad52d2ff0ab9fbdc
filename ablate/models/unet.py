"""A 1D U-Net DNA encoder: per-position hidden states from a multi-resolution conv stack.

Layout (widths w_i = hidden_size * growth**i, level 0 at full resolution):

    x = Embedding(tokens)                                       length padded to a multiple of
                                                                2**depth (see below)
    for level i = 0 .. depth-1:                                 encoder
        x = ConvBlock_i(x);  skip_i = x
        x = Conv(w_i -> w_{i+1}, kernel 2, stride 2)(x)         halves the length
    x = ConvBlock(x)                                            bottleneck, length / 2**depth
    for level i = depth-1 .. 0:                                 decoder
        x = ConvTranspose(w_{i+1} -> w_i, kernel 2, stride 2)(x)   doubles the length
        x = ConvBlock(concat(x, skip_i))                         skip connection
    output = x cropped to the input length

    ConvBlock = (masked 'same' conv, LayerNorm over channels, ReLU) x 2, then dropout

as in Ronneberger et al. (2015), in one dimension. Down- and up-sampling use non-overlapping
windows of two, so every coarse position covers exactly two finer ones.

Lengths and padding: the input is padded internally to a multiple of 2**depth and cropped back.
Each level has its own mask: a coarse position is real when either of its two finer positions
is, and every convolution input is zeroed at positions the mask marks as padding, which is what
the convolution's own zero padding does past the end of a sequence. Real positions therefore see
the same values however much padding follows them, at every level, so a sequence's hidden
states do not depend on the padding. LayerNorm works per position (unlike batch norm, whose
batch statistics would mix padding into real positions in training). Hidden states at padded
positions are zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ablate.errors import AblateError


@dataclass
class UNetConfig:
    """Hyperparameters of a 1D U-Net encoder.

    vocab_size: number of token ids.
    hidden_size: channels at full resolution (the width of the output hidden states).
    depth: number of down-sampling steps (each halves the length).
    growth: channels multiply by this at each level down.
    kernel_size: width of the convolutions in every block (odd).
    dropout: dropout at the end of every block.
    pad_id: id of the padding token.
    """

    vocab_size: int
    hidden_size: int = 64
    depth: int = 3
    growth: int = 2
    kernel_size: int = 5
    dropout: float = 0.1
    pad_id: int = 3

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "depth", "growth"):
            if getattr(self, name) < 1:
                raise AblateError(f"unet config: {name} must be >= 1, got {getattr(self, name)}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise AblateError(
                f"unet config: kernel_size must be odd so blocks keep the length, "
                f"got {self.kernel_size}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise AblateError(f"unet config: dropout must be in [0, 1), got {self.dropout}")

    @property
    def widths(self) -> list[int]:
        """Channels at each level, from full resolution (0) to the bottleneck (depth)."""
        return [self.hidden_size * self.growth**i for i in range(self.depth + 1)]


def _channels_last(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a Conv1d-like layer (B x C x L) to x (B x L x C)."""
    return layer(x.transpose(1, 2)).transpose(1, 2)


class ConvBlock(nn.Module):
    """Two masked 'same' convolutions, each followed by LayerNorm and ReLU; then dropout."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dropout: float):
        super().__init__()
        padding = kernel_size // 2
        self.conv1 = nn.Conv1d(in_channels, out_channels, kernel_size, padding=padding)
        self.norm1 = nn.LayerNorm(out_channels)
        self.conv2 = nn.Conv1d(out_channels, out_channels, kernel_size, padding=padding)
        self.norm2 = nn.LayerNorm(out_channels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B x L x C_in), mask (B x L x 1, 0 at padding) -> (B x L x C_out)."""
        x = F.relu(self.norm1(_channels_last(self.conv1, x * mask)))
        x = F.relu(self.norm2(_channels_last(self.conv2, x * mask)))
        return self.dropout(x)


class UNet(nn.Module):
    """1D U-Net encoder: token ids in, per-token hidden states (B x L x hidden_size) out."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        self.hidden_size = config.hidden_size
        w, k, p = config.widths, config.kernel_size, config.dropout
        levels = range(config.depth)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.down_blocks = nn.ModuleList(ConvBlock(w[i], w[i], k, p) for i in levels)
        self.downsample = nn.ModuleList(nn.Conv1d(w[i], w[i + 1], 2, stride=2) for i in levels)
        self.bottleneck = ConvBlock(w[-1], w[-1], k, p)
        self.upsample = nn.ModuleList(
            nn.ConvTranspose1d(w[i + 1], w[i], 2, stride=2) for i in levels
        )
        self.up_blocks = nn.ModuleList(ConvBlock(2 * w[i], w[i], k, p) for i in levels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask (B x L) -> hidden states (B x L x hidden_size)."""
        length = input_ids.shape[1]
        multiple = 2**self.config.depth
        extra = -length % multiple  # pad up to a multiple of 2**depth, cropped off at the end
        input_ids = F.pad(input_ids, (0, extra), value=self.config.pad_id)
        mask = F.pad(attention_mask, (0, extra), value=0).unsqueeze(-1)
        masks = [mask.to(self.embed.weight.dtype)]  # B x L_i x 1 at each level
        for _ in range(self.config.depth):
            coarse = F.max_pool1d(masks[-1].transpose(1, 2), kernel_size=2, stride=2)
            masks.append(coarse.transpose(1, 2))

        x = self.embed(input_ids)
        skips = []
        for i, (block, down) in enumerate(zip(self.down_blocks, self.downsample, strict=True)):
            x = block(x, masks[i])
            skips.append(x)
            x = _channels_last(down, x * masks[i])
        x = self.bottleneck(x, masks[-1])
        for i in reversed(range(self.config.depth)):
            x = _channels_last(self.upsample[i], x * masks[i + 1])
            x = self.up_blocks[i](torch.cat([x, skips[i]], dim=-1), masks[i])
        return (x * masks[0])[:, :length]
