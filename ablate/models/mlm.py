"""BERT's masking of token ids for masked-language-model pretraining, for any tokenizer."""

from __future__ import annotations

from collections.abc import Sequence

import torch

IGNORE_INDEX = -100  # label of positions the loss skips (PyTorch's cross-entropy default)


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    vocab_size: int,
    mask_prob: float = 0.15,
    generator: torch.Generator | None = None,
    special_ids: Sequence[int] = (0, 1, 2, 3, 4),
    mask_id: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt a batch as BERT does and return (masked_ids, labels), both B x L.

    Each real position (attention_mask 1) whose token is not special is selected with
    probability `mask_prob`. A selected token becomes `mask_id` with probability 0.8, a token
    drawn uniformly from the non-special ids with probability 0.1, and stays as it is otherwise.
    `labels` holds the original id at selected positions and -100 everywhere else, so the loss
    counts selected positions only. Specials and padding are never selected. `input_ids` is
    not modified.

    input_ids, attention_mask: B x L token ids and 1/0 mask of real tokens.
    vocab_size: the tokenizer's vocabulary size (random replacements are drawn below it).
    mask_prob: probability that a real, non-special position is selected.
    generator: source of randomness (on the device of `input_ids`); pass a seeded one to make
        the masking reproducible.
    special_ids: ids never selected and never drawn as replacements ([UNK], [CLS], [SEP],
        [PAD], [MASK] by default).
    mask_id: id of the [MASK] token.
    """
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
    device = input_ids.device
    specials = torch.tensor(list(special_ids), dtype=input_ids.dtype, device=device)
    replacements = torch.arange(vocab_size, device=device)
    replacements = replacements[~torch.isin(replacements, specials)]
    if len(replacements) == 0:
        raise ValueError(f"vocab_size {vocab_size} leaves no non-special token to draw")

    candidates = attention_mask.bool() & ~torch.isin(input_ids, specials)
    selected = candidates & (torch.rand(input_ids.shape, generator=generator, device=device)
                             < mask_prob)
    labels = torch.where(selected, input_ids, IGNORE_INDEX)

    # one uniform draw per position splits the selected ones 80 / 10 / 10
    action = torch.rand(input_ids.shape, generator=generator, device=device)
    to_mask = selected & (action < 0.8)
    to_random = selected & (action >= 0.8) & (action < 0.9)
    picks = torch.randint(len(replacements), input_ids.shape, generator=generator, device=device)
    masked_ids = torch.where(to_mask, torch.full_like(input_ids, mask_id), input_ids)
    masked_ids = torch.where(to_random, replacements[picks].to(input_ids.dtype), masked_ids)
    return masked_ids, labels
