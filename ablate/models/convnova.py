"""ConvNova: a dilated, gated convolutional DNA encoder (Bo et al., ICLR 2025).

Layout, following the released model:

    x  = GELU(TokenConv(tokens))                 forward strand, width-9 conv over one-hot tokens
    rc = GELU(TokenConv'(complement(tokens)))    base complement of every token (not reversed)
    for each block i (dilation 1, 1, base, base^2, ... capped at dilation_max):
        g  = sigmoid(gate_i(LN(dropout(rc))))    the complement stream gates the main stream
        x  = GELU(conv_i(LN(dropout(x)))) * g + x
        rc = g + rc
        x  = FFN_i(x) + x                        optional: Linear, GELU, LayerNorm
    x = MLP(x) + x                               Linear/GELU/Linear/LN/Linear/GELU/Linear/LN,
                                                 width hidden_size * d_inner in the middle

The encoder returns per-token hidden states; classification mean-pools them over real tokens
(see `ablate.models.heads`).

Receptive field: embed_kernel_size + (kernel_size - 1) * sum(dilations) tokens
(`receptive_field`); the released schedule [1, 1, 1, 4, 16] with width-9 kernels sees 193.

Input layer (`input_layer`): "conv", the released model's, is a width-9 convolution over one-hot
tokens per stream, so it holds 2 x vocab_size x embed_kernel_size x hidden_size weights: small
for single nucleotides, most of the model for a BPE vocabulary (the `tiny` preset has 93k
parameters with the char tokenizer, 677k with a 1,024-token BPE). "embedding" replaces both by
one token embedding (vocab_size x hidden_size, zero at padding) shared by the streams:

    x  = GELU(E[tokens])
    rc = GELU(E[complement(tokens)])

so a larger vocabulary adds only vocab_size x hidden_size parameters and the blocks are
unchanged. The input then sees one token instead of embed_kernel_size, so the receptive field is
embed_kernel_size - 1 tokens smaller.

Padding: the released model sees fixed-length sequences and has no padding. Here every
convolution input (the token one-hots and the LayerNorm outputs inside each block) is zeroed at
padded positions, which is exactly what a convolution's own zero padding does past the end of a
sequence. Padded positions therefore contribute nothing to real positions, and a sequence gives
the same hidden states for its real tokens however much padding follows it. The residual
streams at padded positions hold values that are never read (pooling is masked).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ablate.errors import AblateError

INPUT_LAYERS = ("conv", "embedding")


@dataclass
class ConvNovaConfig:
    """Hyperparameters of a ConvNova encoder.

    vocab_size: number of token ids (one-hot width of the input convolutions).
    hidden_size: channels of both streams.
    kernel_size: width of the dilated convolutions in the blocks (odd).
    n_layers: number of gated convolution blocks.
    dilation_base: dilations are 1, 1, base, base**2, ... (capped at dilation_max).
    dilation_max: largest dilation used.
    d_inner: width multiplier of the final residual MLP.
    ffn: add a Linear/GELU/LayerNorm residual block after every gated convolution.
    embed_kernel_size: width of the input convolutions over one-hot tokens (odd; used by the
        "conv" input layer only).
    input_layer: "conv" (the released model: one width-embed_kernel_size convolution over one-hot
        tokens per stream) or "embedding" (one token embedding shared by both streams, so the
        model grows by only vocab_size x hidden_size with the vocabulary).
    dropout: dropout on each stream before every block.
    pad_id: id of the padding token.
    complement_ids: complement_ids[i] is the id of the base complement of token i (i itself
        when there is none); None means the identity, so both streams see the same tokens.
    """

    vocab_size: int
    hidden_size: int = 128
    kernel_size: int = 9
    n_layers: int = 5
    dilation_base: int = 4
    dilation_max: int = 1024
    d_inner: int = 2
    ffn: bool = False
    embed_kernel_size: int = 9
    input_layer: str = "conv"
    dropout: float = 0.1
    pad_id: int = 3
    complement_ids: list[int] | None = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "n_layers", "dilation_base", "dilation_max",
                     "d_inner"):
            if getattr(self, name) < 1:
                raise AblateError(
                    f"ConvNova config: {name} must be >= 1, got {getattr(self, name)}"
                )
        for name in ("kernel_size", "embed_kernel_size"):
            if getattr(self, name) % 2 == 0:
                raise AblateError(
                    f"ConvNova config: {name} must be odd so the output keeps the input length, "
                    f"got {getattr(self, name)}"
                )
        if not 0.0 <= self.dropout < 1.0:
            raise AblateError(f"ConvNova config: dropout must be in [0, 1), got {self.dropout}")
        if self.input_layer not in INPUT_LAYERS:
            raise AblateError(
                f"ConvNova config: input_layer must be one of {', '.join(INPUT_LAYERS)}, "
                f"got {self.input_layer!r}"
            )
        if self.input_layer == "embedding" and not 0 <= self.pad_id < self.vocab_size:
            raise AblateError(
                f"ConvNova config: pad_id must be a token id below vocab_size={self.vocab_size} "
                f"(the embedding's padding row), got {self.pad_id}"
            )
        if self.complement_ids is not None:
            ids = self.complement_ids
            if len(ids) != self.vocab_size or any(not 0 <= i < self.vocab_size for i in ids):
                raise AblateError(
                    f"ConvNova config: complement_ids must hold {self.vocab_size} ids "
                    f"in [0, {self.vocab_size}), one per token of the vocabulary"
                )


def dilation_schedule(n_layers: int, base: int, max_dilation: int) -> list[int]:
    """Dilations of the blocks: two undilated blocks, then powers of `base` (released schedule)."""
    return [1 if i < 2 else min(max_dilation, base ** (i - 2)) for i in range(n_layers)]


def receptive_field(config: ConvNovaConfig) -> int:
    """Tokens a hidden state depends on: the input layer's width, plus every block's reach."""
    dilations = dilation_schedule(config.n_layers, config.dilation_base, config.dilation_max)
    input_width = config.embed_kernel_size if config.input_layer == "conv" else 1
    return input_width + (config.kernel_size - 1) * sum(dilations)


class TokenConv(nn.Module):
    """A 1D convolution over one-hot tokens, computed as an embedding lookup per kernel tap.

    Equal to `nn.Conv1d(vocab_size, hidden_size, kernel_size, padding=kernel_size // 2)` applied
    to one-hot inputs (same parameters, same default initialisation), without materialising a
    B x vocab x L one-hot tensor, which matters for BPE vocabularies. Written by hand because
    torch has no such layer.
    """

    def __init__(self, vocab_size: int, hidden_size: int, kernel_size: int):
        super().__init__()
        self.kernel_size = kernel_size
        self.hidden_size = hidden_size
        # weight[v, j * hidden + h] is the conv weight from one-hot channel v, tap j, to channel h
        self.weight = nn.Parameter(torch.empty(vocab_size, kernel_size * hidden_size))
        self.bias = nn.Parameter(torch.empty(hidden_size))
        bound = 1.0 / math.sqrt(vocab_size * kernel_size)  # nn.Conv1d's default init
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """input_ids (B x L), mask (B x L x 1, 0 at padding) -> (B x L x hidden)."""
        B, L = input_ids.shape
        k = self.kernel_size
        taps = F.embedding(input_ids, self.weight).view(B, L, k, self.hidden_size)
        taps = taps * mask.unsqueeze(-1)  # a padded token is an all-zero one-hot
        half = k // 2
        taps = F.pad(taps, (0, 0, 0, 0, half, half))  # zero padding along the length
        # output position t sees token t + j - half through tap j
        out = sum(taps[:, j : j + L, j] for j in range(k))
        return out + self.bias


class GatedConvBlock(nn.Module):
    """One gated dilated convolution block ("GCB"): the complement stream gates the main one."""

    def __init__(self, config: ConvNovaConfig, dilation: int):
        super().__init__()
        H, k = config.hidden_size, config.kernel_size
        padding = (k - 1) // 2 * dilation
        self.norm = nn.LayerNorm(H)
        self.gate_norm = nn.LayerNorm(H)
        self.conv = nn.Conv1d(H, H, k, dilation=dilation, padding=padding)
        self.gate = nn.Conv1d(H, H, k, dilation=dilation, padding=padding)
        self.dropout = nn.Dropout(config.dropout)
        self.ffn = None
        if config.ffn:
            self.ffn = nn.Sequential(nn.Linear(H, H), nn.GELU(), nn.LayerNorm(H))

    def forward(
        self, x: torch.Tensor, rc: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x, rc (B x L x H), mask (B x L x 1) -> updated (x, rc)."""
        h = self.norm(self.dropout(x)) * mask
        g = self.gate_norm(self.dropout(rc)) * mask
        g = torch.sigmoid(_conv_channels_last(self.gate, g))
        h = F.gelu(_conv_channels_last(self.conv, h))
        x = h * g + x
        rc = g + rc
        if self.ffn is not None:
            x = self.ffn(x) + x
        return x, rc


def _conv_channels_last(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    return conv(x.transpose(1, 2)).transpose(1, 2)


class ConvNova(nn.Module):
    """ConvNova encoder: token ids in, per-token hidden states (B x L x hidden_size) out."""

    def __init__(self, config: ConvNovaConfig):
        super().__init__()
        self.config = config
        self.hidden_size = config.hidden_size
        H, inner = config.hidden_size, config.hidden_size * config.d_inner

        if config.complement_ids is None:
            complement = torch.arange(config.vocab_size)
        else:
            complement = torch.tensor(config.complement_ids, dtype=torch.long)
        self.register_buffer("complement_ids", complement, persistent=True)

        if config.input_layer == "conv":
            self.embed = TokenConv(config.vocab_size, H, config.embed_kernel_size)
            self.embed_complement = TokenConv(config.vocab_size, H, config.embed_kernel_size)
        else:  # one table; the complement stream looks up each token's complement
            self.embed = nn.Embedding(config.vocab_size, H, padding_idx=config.pad_id)
            self.embed_complement = None
        dilations = dilation_schedule(config.n_layers, config.dilation_base, config.dilation_max)
        self.blocks = nn.ModuleList(GatedConvBlock(config, d) for d in dilations)
        self.mlp = nn.Sequential(
            nn.Linear(H, inner),
            nn.GELU(),
            nn.Linear(inner, inner),
            nn.LayerNorm(inner),
            nn.Linear(inner, inner),
            nn.GELU(),
            nn.Linear(inner, H),
            nn.LayerNorm(H),
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask (B x L) -> hidden states (B x L x hidden_size)."""
        mask = attention_mask.unsqueeze(-1).float()
        complement = self.complement_ids[input_ids]
        if self.embed_complement is None:
            # one token wide: padded positions reach no real one (the blocks mask their inputs)
            x = F.gelu(self.embed(input_ids))
            rc = F.gelu(self.embed(complement))
        else:
            x = F.gelu(self.embed(input_ids, mask))
            rc = F.gelu(self.embed_complement(complement, mask))
        for block in self.blocks:
            x, rc = block(x, rc, mask)
        return self.mlp(x) + x
