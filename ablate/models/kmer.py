"""Bag of k-mers: logistic regression on k-mer frequencies, the floor below every network.

    counts[b, m] = number of windows of k consecutive bases of sequence b that spell k-mer m
    x[b]         = counts[b] / sum_m counts[b, m]      frequencies over the counted k-mers

The encoder has no parameters. It returns x as a sequence of one position (B x 1 x 4**k) and
says so with `pooled_output = True`, so `SequenceClassifier` hands that vector straight to the
shared head (dropout, then a linear layer) instead of mean-pooling it. Trained with the
cross-entropy loss of the common training loop this is multinomial logistic regression on k-mer
frequencies, fitted by the same loop, optimiser and hyperparameter search as every other
architecture; AdamW's weight decay plays the part of the L2 penalty.

Normalisation: plain frequencies (each row sums to 1 over its counted k-mers; no log, no
standardisation). The logit is then a weighted average of per-k-mer weights, so it does not grow
with the sequence length, and the weights a task needs are of order one. One Adam step moves a
logit by at most the learning rate, hence the search range up to 1e-1 (`search_spaces/kmer.yaml`).

Tokens: k-mers are counted over single-nucleotide (`char`) tokens. `base_ids` maps every token
id to a base (A, C, G, T -> 0, 1, 2, 3) or to none (-1: N, the special tokens, padding). A window
holding a position with no base, or a padded position (attention_mask 0), is not counted: N
breaks k-mers and [CLS] / [SEP] never join one. A sequence without a complete window (shorter
than k, or all N) gives a row of zeros. Only the given strand is counted (a k-mer and its
reverse complement are different features).

Counting is one scatter-add of the window codes into a B x 4**k matrix, so memory is
B x (L + 4**k), never B x L x 4**k.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ablate.errors import AblateError
from ablate.tokenization import NUCLEOTIDES, SPECIAL_TOKENS

BASES = "ACGT"
NO_BASE = -1
MAX_K = 8  # 4**8 = 65,536 features


def char_base_ids() -> list[int]:
    """Token id -> base index of the `char` tokenizer: A, C, G, T -> 0..3, every other id -1.

    The char vocabulary is the special tokens, then A, C, G, T, N (`ablate.tokenization`).
    """
    table = [NO_BASE] * (len(SPECIAL_TOKENS) + len(NUCLEOTIDES))
    for index, base in enumerate(BASES):
        table[len(SPECIAL_TOKENS) + NUCLEOTIDES.index(base)] = index
    return table


@dataclass
class KmerConfig:
    """Hyperparameters of the bag-of-k-mers encoder.

    vocab_size: number of token ids; must be the char tokenizer's (len(base_ids)).
    k: k-mer length; the pooled vector has 4**k frequencies (1 <= k <= 8).
    dropout: kept for the common interface; the encoder itself has no dropout (the head's
        dropout acts on the frequency vector).
    pad_id: id of the padding token (it must map to no base).
    base_ids: base_ids[i] is the base index (0..3 for A, C, G, T) of token i, or -1 for a token
        that is no base; the default is the char tokenizer's table (`char_base_ids`).
    """

    vocab_size: int
    k: int = 5
    dropout: float = 0.1
    pad_id: int = 3
    base_ids: list[int] = field(default_factory=char_base_ids)

    def __post_init__(self) -> None:
        try:
            self.k = operator.index(self.k)  # numpy integers too; kept a plain int for JSON
        except TypeError:
            raise AblateError(f"kmer config: k must be an integer, got {self.k!r}") from None
        if not 1 <= self.k <= MAX_K:
            raise AblateError(f"kmer config: k must be between 1 and {MAX_K}, got {self.k}")
        if len(self.base_ids) != self.vocab_size:
            raise AblateError(
                f"kmer counts k-mers of single-nucleotide tokens and needs the char tokenizer's "
                f"vocabulary ({len(self.base_ids)} tokens: {' '.join(SPECIAL_TOKENS)} "
                f"{' '.join(NUCLEOTIDES)}); got a vocabulary of {self.vocab_size} tokens. "
                "Use the char tokenizer with architecture kmer."
            )
        if any(b not in (NO_BASE, 0, 1, 2, 3) for b in self.base_ids):
            raise AblateError("kmer config: base_ids must hold -1 or a base index 0..3 per token")
        if not 0 <= self.pad_id < self.vocab_size or self.base_ids[self.pad_id] != NO_BASE:
            raise AblateError(
                f"kmer config: pad_id {self.pad_id} must be a token id that is no base"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise AblateError(f"kmer config: dropout must be in [0, 1), got {self.dropout}")

    @property
    def n_kmers(self) -> int:
        return 4**self.k


def kmer_frequencies(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, base_ids: torch.Tensor, k: int
) -> torch.Tensor:
    """k-mer frequencies (B x 4**k, float32, rows summing to 1 or all zero) of token ids (B x L).

    k-mer m is the base-4 number of its bases, first base most significant (AAAA = 0,
    AAAC = 1, ..., TTTT = 4**k - 1). `base_ids` (a long tensor) maps token ids to bases or -1.
    """
    batch, length = input_ids.shape
    counts = torch.zeros(batch, 4**k, dtype=torch.float32, device=input_ids.device)
    windows = length - k + 1
    if windows > 0:
        bases = base_ids[input_ids]
        real = (bases != NO_BASE) & attention_mask.bool()
        bases = bases.clamp(min=0)
        code = torch.zeros(batch, windows, dtype=torch.long, device=input_ids.device)
        complete = torch.ones(batch, windows, dtype=torch.bool, device=input_ids.device)
        for offset in range(k):  # window t covers positions t .. t + k - 1
            code = code * 4 + bases[:, offset : offset + windows]
            complete &= real[:, offset : offset + windows]
        counts.scatter_add_(1, code, complete.float())  # incomplete windows add 0
    return counts / counts.sum(dim=1, keepdim=True).clamp(min=1.0)


class KmerEncoder(nn.Module):
    """Token ids in, k-mer frequencies out as one pooled position (B x 1 x 4**k)."""

    pooled_output = True  # `SequenceClassifier` takes position 0 instead of mean-pooling

    def __init__(self, config: KmerConfig):
        super().__init__()
        self.config = config
        self.hidden_size = config.n_kmers
        self.register_buffer(
            "base_ids", torch.tensor(config.base_ids, dtype=torch.long), persistent=True
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask (B x L) -> k-mer frequencies (B x 1 x 4**k)."""
        return kmer_frequencies(input_ids, attention_mask, self.base_ids, self.config.k)[:, None]
