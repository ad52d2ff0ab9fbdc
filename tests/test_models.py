"""Tests of the model architectures, heads, masking, saving and the registry (tiny models, CPU)."""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ablate.errors import AblateError
from ablate.models.convnova import ConvNovaConfig, TokenConv, dilation_schedule, receptive_field
from ablate.models.heads import MaskedLanguageModel, SequenceClassifier, masked_mean_pool
from ablate.models.io import load_encoder_weights, load_model, save_model
from ablate.models.kmer import KmerConfig, KmerEncoder, char_base_ids, kmer_frequencies
from ablate.models.mlm import mask_tokens
from ablate.models.registry import (
    ARCHITECTURES,
    BASELINES,
    CONVOLUTIONAL,
    PRESETS,
    PRETRAINABLE,
    TOKENIZER_KINDS,
    build_classifier,
    build_encoder,
    build_mlm,
    count_parameters,
)
from ablate.models.unet import UNetConfig
from ablate.tokenization import char_tokenizer

PAD, MASK = 3, 4
RELEASED_NT_PARAMETERS = 1_688_448
DNABERT2_PARAMETERS = 117_000_000  # "DNABERT-2-117M"


def _preset(arch: str) -> str:
    """The smallest preset: `tiny` where there is one (the k-mer floor has `base` only)."""
    return "tiny" if "tiny" in PRESETS[arch] else PRESETS[arch][0]


def _classifier(arch: str, vocab_size: int = 10, num_classes: int = 2, **kwargs):
    torch.manual_seed(0)
    return build_classifier(
        arch, preset=_preset(arch), vocab_size=vocab_size, num_classes=num_classes, max_len=64,
        **kwargs,
    )


def _mlm(arch: str, vocab_size: int = 10, **kwargs):
    torch.manual_seed(0)
    return build_mlm(arch, preset="tiny", vocab_size=vocab_size, max_len=64, **kwargs)


def _random_ids(batch: int, length: int, vocab_size: int) -> torch.Tensor:
    # ids from 5 up: no special tokens inside sequences
    return torch.randint(5, vocab_size, (batch, length))


def _padded_batch(vocab_size: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """4 x 37 ids with rows of 37, 25, 11 and 1 real tokens (lengths not divisible by 4)."""
    torch.manual_seed(2)
    ids = _random_ids(4, 37, vocab_size)
    mask = torch.ones_like(ids)
    for row, length in ((1, 25), (2, 11), (3, 1)):
        ids[row, length:], mask[row, length:] = PAD, 0
    return ids, mask


# --- architectures -----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", PRETRAINABLE)
@pytest.mark.parametrize("vocab_size", [10, 4096])
def test_outputs_have_right_shape_and_are_finite(arch, vocab_size):
    model = _mlm(arch, vocab_size=vocab_size)
    ids, mask = _padded_batch(vocab_size)
    hidden = model.encoder(ids, mask)
    assert hidden.shape == (4, 37, model.encoder.hidden_size)
    logits = model(ids, mask)
    assert logits.shape == (4, 37, vocab_size)
    assert torch.isfinite(hidden).all() and torch.isfinite(logits).all()
    classifier = SequenceClassifier(model.encoder, num_classes=3)
    assert classifier(ids, mask).shape == (4, 3)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_padding_is_ignored(arch):
    overrides = {"ffn": True} if arch == "convnova" else None
    encoder = _classifier(arch, overrides=overrides).encoder.eval()
    ids = _random_ids(3, 19, 10)
    mask = torch.ones_like(ids)
    padded_ids = torch.cat([ids, torch.full((3, 13), PAD)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(3, 13, dtype=torch.long)], dim=1)
    with torch.no_grad():
        plain = encoder(ids, mask)
        padded = encoder(padded_ids, padded_mask)[:, :19]
        # a short sequence alone vs the same sequence padded inside a batch of longer ones
        alone = encoder(ids[:1, :11], mask[:1, :11])
        batch_ids, batch_mask = ids.clone(), mask.clone()
        batch_ids[0, 11:], batch_mask[0, 11:] = PAD, 0
        in_batch = encoder(batch_ids, batch_mask)[:1, :11]
    torch.testing.assert_close(padded, plain, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(in_batch, alone, atol=1e-5, rtol=1e-4)


def test_unet_keeps_any_input_length():
    torch.manual_seed(0)
    encoder = build_encoder("unet", preset="tiny", vocab_size=10, max_len=64,
                            overrides={"depth": 3}).eval()
    for length in (1, 2, 7, 8, 9, 13):
        ids = _random_ids(2, length, 10)
        assert encoder(ids, torch.ones_like(ids)).shape == (2, length, 16)
    assert UNetConfig(vocab_size=10, hidden_size=8, depth=3, growth=2).widths == [8, 16, 32, 64]


def test_transformer_uses_sdpa_global_attention_and_a_gated_feed_forward():
    encoder = _classifier("transformer").encoder
    config = encoder.backbone.config
    assert config._attn_implementation == "sdpa"
    assert config.layer_types == ["full_attention"] * 2
    assert all(layer.attn.sliding_window is None for layer in encoder.backbone.layers)
    # GeGLU: the input projection is twice the intermediate width
    assert encoder.backbone.layers[0].mlp.Wi.out_features == 2 * 128


def _dnabert2_parameters(vocab_size: int = 4096, hidden: int = 768, layers: int = 12,
                         ffn: int = 3072) -> int:
    """DNABERT-2's size from its layer shapes (MosaicBERT: fused QKV, GeGLU, post-norm)."""
    norm = 2 * hidden
    attention = (hidden * 3 * hidden + 3 * hidden) + (hidden * hidden + hidden) + norm
    feed_forward = hidden * 2 * ffn + (ffn * hidden + hidden) + norm  # no bias on the gate
    embeddings = vocab_size * hidden + 2 * hidden + norm  # tokens, 2 token types, LayerNorm
    pooler = hidden * hidden + hidden
    return embeddings + layers * (attention + feed_forward) + pooler


def test_dnabert2_base_matches_dnabert2_parameter_count():
    # Tolerance 1%: DNABERT-2's pooler (0.5%, replaced here by mean pooling) and a few biases
    # differ; any change of shape (one layer is 8%, BERT's plain feed-forward -24%) fails.
    encoder = build_encoder("transformer", preset="dnabert2-base", vocab_size=4096, max_len=512)
    n = count_parameters(encoder)
    reference = _dnabert2_parameters()
    print(f"transformer dnabert2-base encoder, vocab 4096: {n:,} parameters "
          f"(DNABERT-2 by its layer shapes: {reference:,}; published: 117M)")
    assert reference == 117_068_544
    assert abs(n - DNABERT2_PARAMETERS) / DNABERT2_PARAMETERS < 0.01
    assert encoder.backbone.config._attn_implementation == "sdpa"
    assert set(encoder.backbone.config.layer_types) == {"full_attention"}


def test_convnova_nt_matches_released_parameter_count():
    # The released count is for a 5-symbol one-hot alphabet (A, C, G, T, N): vocab_size=5.
    released = build_encoder("convnova", preset="nt", vocab_size=5, max_len=1024)
    n = count_parameters(released)
    print(f"ConvNova nt encoder, vocab 5: {n:,} parameters (released: {RELEASED_NT_PARAMETERS:,})")
    assert abs(n - RELEASED_NT_PARAMETERS) / RELEASED_NT_PARAMETERS < 0.01
    # Our single-nucleotide tokenizer adds 5 special tokens: still within 1%.
    chars = build_encoder("convnova", preset="nt", vocab_size=10, max_len=1024)
    n = count_parameters(chars)
    print(f"ConvNova nt encoder, vocab 10: {n:,} parameters")
    assert abs(n - RELEASED_NT_PARAMETERS) / RELEASED_NT_PARAMETERS < 0.01


def test_dilation_schedule_of_released_model():
    assert dilation_schedule(5, 4, 1024) == [1, 1, 1, 4, 16]
    assert dilation_schedule(8, 2, 16) == [1, 1, 1, 2, 4, 8, 16, 16]


def test_token_conv_equals_conv1d_over_one_hot_tokens():
    torch.manual_seed(0)
    vocab, hidden, k = 10, 8, 9
    layer = TokenConv(vocab, hidden, k)
    ids = _random_ids(3, 20, vocab)
    mask = torch.ones(3, 20, 1)
    one_hot = F.one_hot(ids, vocab).float().transpose(1, 2)  # B x V x L
    weight = layer.weight.view(vocab, k, hidden).permute(2, 0, 1)  # H x V x k
    expected = F.conv1d(one_hot, weight, layer.bias, padding=k // 2).transpose(1, 2)
    torch.testing.assert_close(layer(ids, mask), expected)


def test_convnova_uses_the_complement_table():
    ids = _random_ids(2, 30, 10)
    mask = torch.ones_like(ids)
    # specials map to themselves; A, C, G, T, N = 5..9 complement to T, G, C, A, N
    complement = [0, 1, 2, 3, 4, 8, 7, 6, 5, 9]
    identity = _classifier("convnova").eval()
    swapped = _classifier("convnova", complement_ids=complement).eval()
    assert swapped.encoder.complement_ids.tolist() == complement
    assert identity.encoder.complement_ids.tolist() == list(range(10))
    with torch.no_grad():
        assert not torch.allclose(identity(ids, mask), swapped(ids, mask))


def test_masked_mean_pool_averages_real_positions_only():
    hidden = torch.tensor([[[1.0], [3.0], [100.0]], [[2.0], [4.0], [6.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    torch.testing.assert_close(masked_mean_pool(hidden, mask), torch.tensor([[2.0], [4.0]]))


def test_convnova_small_and_nt_keep_the_released_dilation_schedule():
    for preset in ("small", "nt"):
        encoder = build_encoder("convnova", preset=preset, vocab_size=10, max_len=512)
        assert [block.conv.dilation[0] for block in encoder.blocks] == [1, 1, 1, 4, 16]
        assert [block.gate.dilation[0] for block in encoder.blocks] == [1, 1, 1, 4, 16]
        assert receptive_field(encoder.config) == 193
    tiny = build_encoder("convnova", preset="tiny", vocab_size=10, max_len=512)
    assert [block.conv.dilation[0] for block in tiny.blocks] == [1, 1, 1, 2]
    assert receptive_field(tiny.config) == 49
    small = build_encoder("convnova", preset="small", vocab_size=10, max_len=512)
    print(f"ConvNova small encoder, vocab 10: {count_parameters(small):,} parameters")
    assert small.hidden_size == 64 and count_parameters(small) == 432_192


@pytest.mark.parametrize("input_layer", ["conv", "embedding"])
def test_convnova_receptive_field_is_what_the_model_sees(input_layer):
    torch.manual_seed(0)
    encoder = build_encoder("convnova", preset="tiny", vocab_size=10, max_len=128, dropout=0.0,
                            overrides={"input_layer": input_layer}).eval()
    ids = _random_ids(1, 121, 10)
    changed = ids.clone()
    changed[0, 60] = 5 if ids[0, 60] != 5 else 6
    mask = torch.ones_like(ids)
    with torch.no_grad():
        moved = (encoder(ids, mask) - encoder(changed, mask)).abs().amax(dim=-1)[0] > 0
    reach = torch.nonzero(moved).flatten()
    assert reach.min().item() == 60 - receptive_field(encoder.config) // 2
    assert reach.max().item() == 60 + receptive_field(encoder.config) // 2
    assert receptive_field(encoder.config) == (49 if input_layer == "conv" else 41)


def test_convnova_embedding_input_grows_by_one_table_with_the_vocabulary():
    def size(preset: str, vocab: int, input_layer: str) -> int:
        return count_parameters(build_encoder("convnova", preset=preset, vocab_size=vocab,
                                              max_len=64, overrides={"input_layer": input_layer}))

    for preset, hidden in (("tiny", 32), ("small", 64), ("nt", 128)):
        conv_growth = size(preset, 4096, "conv") - size(preset, 10, "conv")
        embedding_growth = size(preset, 4096, "embedding") - size(preset, 10, "embedding")
        assert conv_growth == 2 * (4096 - 10) * 9 * hidden  # two width-9 one-hot convolutions
        assert embedding_growth == (4096 - 10) * hidden  # one shared table
    assert size("nt", 5, "conv") == RELEASED_NT_PARAMETERS  # the default is the released input
    with pytest.raises(AblateError, match="input_layer"):
        ConvNovaConfig(vocab_size=10, input_layer="one-hot")
    with pytest.raises(AblateError, match="pad_id"):
        ConvNovaConfig(vocab_size=3, input_layer="embedding")


def test_convnova_embedding_input_trains_with_the_complement_stream(tmp_path):
    vocab = 1024
    complement = list(range(vocab))  # a BPE-like table: pairs of tokens complement each other
    for token in range(5, vocab - 1, 2):
        complement[token], complement[token + 1] = token + 1, token
    overrides = {"input_layer": "embedding"}
    model = _classifier("convnova", vocab_size=vocab, complement_ids=complement,
                        overrides=overrides)
    identity = _classifier("convnova", vocab_size=vocab, overrides=overrides)
    embed = model.encoder.embed
    assert isinstance(embed, torch.nn.Embedding) and model.encoder.embed_complement is None
    assert embed.padding_idx == PAD and not embed.weight[PAD].any()
    ids, mask = _padded_batch(vocab)
    model(ids, mask).logsumexp(dim=1).sum().backward()
    grad = embed.weight.grad
    assert torch.isfinite(grad).all() and not grad[PAD].any()
    # both the tokens and their complements (through the complement stream) receive gradient
    seen = ids[mask.bool()].unique()
    assert grad[seen].abs().sum(dim=1).gt(0).all()
    assert grad[torch.tensor(complement)[seen]].abs().sum(dim=1).gt(0).all()
    model.eval(), identity.eval()
    with torch.no_grad():
        assert not torch.allclose(model(ids, mask), identity(ids, mask))
        # padding changes nothing, and the model saves and loads
        alone = model.encoder(ids[2:3, :11], mask[2:3, :11])
        torch.testing.assert_close(model.encoder(ids, mask)[2:3, :11], alone,
                                   atol=1e-5, rtol=1e-4)
        loaded = load_model(save_model(model, tmp_path / "embedding"))
        assert loaded.encoder.config.input_layer == "embedding"
        assert torch.equal(loaded(ids, mask), model(ids, mask))


# --- the k-mer floor -------------------------------------------------------------------------


def _char_batch(sequences: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Char-tokenized sequences ([CLS] ... [SEP]), padded to the longest."""
    encodings = char_tokenizer().encode_batch(sequences)
    width = max(len(e.ids) for e in encodings)
    ids = torch.full((len(sequences), width), PAD)
    mask = torch.zeros_like(ids)
    for row, encoding in enumerate(encodings):
        ids[row, : len(encoding.ids)] = torch.tensor(encoding.ids)
        mask[row, : len(encoding.ids)] = 1
    return ids, mask


def _brute_force_counts(sequence: str, k: int) -> list[int]:
    kmers = ["".join(chars) for chars in itertools.product("ACGT", repeat=k)]
    counts = dict.fromkeys(kmers, 0)
    for start in range(len(sequence) - k + 1):
        window = sequence[start : start + k]
        if window in counts:  # a window with an N is no k-mer
            counts[window] += 1
    return [counts[kmer] for kmer in kmers]


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_kmer_counts_equal_a_brute_force_count(k):
    rng = random.Random(k)
    sequences = ["ACGTACGTTTGCA", "AANCCGNNTTTAC", "GG", "NNNNNN", "",
                 "".join(rng.choice("ACGTTN") for _ in range(70))]
    ids, mask = _char_batch(sequences)
    frequencies = kmer_frequencies(ids, mask, torch.tensor(char_base_ids()), k)
    assert frequencies.shape == (len(sequences), 4**k) and frequencies.dtype == torch.float32
    for row, sequence in enumerate(sequences):
        counts = torch.tensor(_brute_force_counts(sequence, k), dtype=torch.float32)
        expected = counts / counts.sum() if counts.sum() > 0 else counts
        torch.testing.assert_close(frequencies[row], expected)
    # a position outside the attention mask breaks k-mers whatever its token is
    cut = mask.clone()
    cut[0, 8:] = 0  # [CLS] and the first 7 bases stay
    counts = torch.tensor(_brute_force_counts(sequences[0][:7], k), dtype=torch.float32)
    torch.testing.assert_close(kmer_frequencies(ids, cut, torch.tensor(char_base_ids()), k)[0],
                               counts / counts.sum())


def test_kmer_table_is_the_char_tokenizer_vocabulary():
    vocab = char_tokenizer().get_vocab()
    table = char_base_ids()
    assert len(table) == len(vocab) == 10
    assert {token: table[i] for token, i in vocab.items()} == {
        "[UNK]": -1, "[CLS]": -1, "[SEP]": -1, "[PAD]": -1, "[MASK]": -1,
        "A": 0, "C": 1, "G": 2, "T": 3, "N": -1,
    }


def test_kmer_classifier_is_a_linear_model_on_frequencies_and_k_is_overridable():
    default = build_classifier("kmer", preset="base", vocab_size=10, num_classes=2, max_len=64)
    assert default.encoder.config.k == 5 and default.encoder.hidden_size == 1024
    torch.manual_seed(0)
    model = build_classifier("kmer", preset="base", vocab_size=10, num_classes=3, max_len=64,
                             dropout=0.2, overrides={"k": np.int64(4)}).eval()
    encoder = model.encoder
    assert isinstance(encoder, KmerEncoder) and type(encoder.config.k) is int
    assert encoder.config.k == 4 and encoder.hidden_size == 256
    assert model.head.out.in_features == 256 and model.head.dropout.p == 0.2
    assert count_parameters(encoder) == 0 and count_parameters(model) == 256 * 3 + 3
    ids, mask = _char_batch(["ACGTTGCAACGTNACG", "TTTT", "GATTACA"])
    hidden = encoder(ids, mask)
    assert hidden.shape == (3, 1, 256)
    torch.testing.assert_close(hidden.sum(dim=-1), torch.ones(3, 1))
    with torch.no_grad():
        torch.testing.assert_close(model(ids, mask), model.head.out(hidden[:, 0]))


def test_kmer_refuses_other_vocabularies_masked_lm_and_bad_k():
    with pytest.raises(AblateError, match="char tokenizer"):
        build_classifier("kmer", preset="base", vocab_size=4096, num_classes=2, max_len=64)
    with pytest.raises(AblateError, match="no masked-LM pretraining.*convnova"):
        build_mlm("kmer", preset="base", vocab_size=10, max_len=64)
    with pytest.raises(AblateError, match="masked-LM"):
        MaskedLanguageModel(KmerEncoder(KmerConfig(vocab_size=10)))
    for k in (0, 9, "5", 4.5):
        with pytest.raises(AblateError, match="k must"):
            KmerConfig(vocab_size=10, k=k)
    with pytest.raises(AblateError, match="pad_id"):
        KmerConfig(vocab_size=10, pad_id=5)  # A is a base


def test_kmer_is_the_baseline_outside_both_sides_of_the_comparison():
    assert "kmer" in ARCHITECTURES and BASELINES == ("kmer",)
    assert "kmer" not in CONVOLUTIONAL and set(CONVOLUTIONAL) == {"convnova", "unet", "cnn"}
    assert "kmer" not in PRETRAINABLE and set(PRETRAINABLE) == set(ARCHITECTURES) - {"kmer"}
    assert TOKENIZER_KINDS == {"kmer": ("char",)}


# --- training ----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_training_steps_reduce_loss_on_separable_batch(arch):
    model = _classifier(arch)
    # class 0: mostly A (id 5), class 1: mostly T (id 8), with a few random bases
    torch.manual_seed(1)
    labels = torch.arange(16) % 2
    ids = torch.where(labels[:, None] == 0, 5, 8).expand(16, 24).clone()
    noise = torch.rand(16, 24) < 0.2
    ids[noise] = _random_ids(16, 24, 10)[noise]
    mask = torch.ones_like(ids)
    # a linear model on frequencies (summing to 1) moves a logit by at most lr per Adam step
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.3 if arch in BASELINES else 3e-3)
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(model(ids, mask), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("arch", PRETRAINABLE)
def test_mlm_steps_reduce_masked_token_loss_on_repetitive_sequence(arch):
    model = _mlm(arch)
    # A C G T A C G T ... : every masked base follows from its neighbours
    ids = (torch.arange(32) % 4 + 5).repeat(16, 1)
    mask = torch.ones_like(ids)
    generator = torch.Generator().manual_seed(0)
    held_out = mask_tokens(ids, mask, vocab_size=10, mask_prob=0.3, generator=generator)

    def held_out_loss() -> float:
        model.eval()
        with torch.no_grad():
            loss = model.loss(held_out[0], mask, held_out[1]).item()
        model.train()
        return loss

    before = held_out_loss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(15):
        masked, labels = mask_tokens(ids, mask, vocab_size=10, mask_prob=0.3, generator=generator)
        loss = model.loss(masked, mask, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = held_out_loss()
    assert after < 0.7 * before, (before, after)


def test_mlm_loss_of_a_batch_without_labels_is_zero():
    model = _mlm("cnn")
    ids = _random_ids(2, 8, 10)
    loss = model.loss(ids, torch.ones_like(ids), torch.full_like(ids, -100))
    assert loss.item() == 0.0
    loss.backward()


def test_mlm_forward_with_labels_is_the_tested_loss():
    """Pretraining calls the loss through forward (a DDP wrapper sees only forward)."""
    model = _mlm("convnova").eval()
    ids = _random_ids(4, 12, 10)
    mask = torch.ones_like(ids)
    masked, labels = mask_tokens(ids, mask, vocab_size=10, mask_prob=0.5,
                                 generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        through_forward = model(masked, mask, labels)
        direct = model.loss(masked, mask, labels)
        logits = model(masked, mask)
    assert through_forward.ndim == 0 and logits.shape == (4, 12, 10)
    torch.testing.assert_close(through_forward, direct, atol=0, rtol=0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_same_seed_gives_same_model_and_outputs(arch):
    ids = _random_ids(2, 16, 10)
    mask = torch.ones_like(ids)
    first, second = _classifier(arch).eval(), _classifier(arch).eval()
    with torch.no_grad():
        torch.testing.assert_close(first(ids, mask), second(ids, mask), atol=0, rtol=0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_runs_under_bfloat16_autocast(arch):
    model = _mlm(arch) if arch in PRETRAINABLE else _classifier(arch)
    ids = _random_ids(2, 16, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids, torch.ones_like(ids))
    logits.float().sum().backward()
    assert torch.isfinite(logits.float()).all()


# --- masking -----------------------------------------------------------------------------------


def test_mask_tokens_follows_bert_proportions():
    torch.manual_seed(0)
    vocab = 4096
    ids = _random_ids(256, 512, vocab)
    mask = torch.ones_like(ids)
    ids[:, 0], ids[:, 1], ids[:, 2] = 1, 0, 2  # [CLS], [UNK], [SEP]
    lengths = torch.randint(100, 513, (256,))
    padding = torch.arange(512) >= lengths[:, None]
    ids[padding], mask[padding] = PAD, 0
    generator = torch.Generator().manual_seed(7)
    masked, labels = mask_tokens(ids, mask, vocab_size=vocab, generator=generator)

    special = ids < 5
    candidates = mask.bool() & ~special
    selected = labels != -100
    assert not (selected & ~candidates).any()  # specials and padding never selected
    assert torch.equal(masked[~selected], ids[~selected])  # nothing else changes
    assert torch.equal(labels[selected], ids[selected])
    fraction = selected.sum().item() / candidates.sum().item()
    assert abs(fraction - 0.15) < 0.005, fraction

    n = selected.sum().item()
    to_mask = (masked[selected] == MASK).sum().item() / n
    changed = ((masked[selected] != MASK) & (masked[selected] != ids[selected])).sum().item() / n
    kept = (masked[selected] == ids[selected]).sum().item() / n
    assert abs(to_mask - 0.8) < 0.01 and abs(changed - 0.1) < 0.01 and abs(kept - 0.1) < 0.01
    assert (masked[selected & (masked != MASK)] >= 5).all()  # never a special as replacement

    again = mask_tokens(ids, mask, vocab_size=vocab, generator=torch.Generator().manual_seed(7))
    assert torch.equal(again[0], masked) and torch.equal(again[1], labels)
    other = mask_tokens(ids, mask, vocab_size=vocab, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(other[1], labels)


def test_mask_tokens_with_a_character_vocabulary():
    ids = _random_ids(64, 100, 10)
    mask = torch.ones_like(ids)
    masked, labels = mask_tokens(ids, mask, vocab_size=10, mask_prob=1.0,
                                 generator=torch.Generator().manual_seed(0))
    assert (labels == ids).all()
    assert ((masked == MASK) | (masked >= 5)).all()
    with pytest.raises(ValueError, match="no non-special"):
        mask_tokens(ids, mask, vocab_size=5)


# --- saving and loading ------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_save_and_load_round_trip(arch, tmp_path):
    ids, mask = _padded_batch()
    complement = [0, 1, 2, 3, 4, 8, 7, 6, 5, 9]  # used by convnova only
    models = [_classifier(arch, num_classes=3, complement_ids=complement)]
    if arch in PRETRAINABLE:
        models.append(_mlm(arch))
    for model in models:
        model.eval()
        folder = save_model(model, tmp_path / type(model).__name__)
        assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
        loaded = load_model(folder)
        assert type(loaded) is type(model) and not loaded.training
        with torch.no_grad():
            assert torch.equal(loaded(ids, mask), model(ids, mask))
    meta = json.loads((tmp_path / "SequenceClassifier" / "config.json").read_text())
    assert meta["kind"] == "classifier" and meta["architecture"] == arch
    assert meta["num_classes"] == 3 and meta["config"]["vocab_size"] == 10


def test_save_replaces_a_folder_and_leaves_no_temporary_files(tmp_path):
    first, second = _classifier("cnn"), _classifier("cnn", num_classes=5)
    save_model(first, tmp_path / "model")
    save_model(second, tmp_path / "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert load_model(tmp_path / "model").head.out.out_features == 5
    encoder = _classifier("unet").encoder.eval()
    loaded = load_model(save_model(encoder, tmp_path / "encoder"))
    ids, mask = _padded_batch()
    with torch.no_grad():
        assert torch.equal(loaded(ids, mask), encoder(ids, mask))


def test_save_and_load_of_tied_tensors(tmp_path):
    model = _mlm("cnn").eval()
    model.head.decoder.weight = model.encoder.embed.weight  # share one tensor
    folder = save_model(model, tmp_path / "tied")
    assert json.loads((folder / "config.json").read_text())["tied"] == {
        "head.decoder.weight": "encoder.embed.weight"
    }
    loaded = load_model(folder)
    assert torch.equal(loaded.head.decoder.weight, model.encoder.embed.weight)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(AblateError, match="not a folder"):
        load_model(tmp_path / "nothing")
    folder = save_model(_classifier("cnn"), tmp_path / "model")
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(AblateError, match="model.safetensors"):
        load_model(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(AblateError, match="model.safetensors is missing"):
        load_model(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(AblateError, match="config.json is not valid JSON"):
        load_model(folder)
    (folder / "config.json").unlink()
    with pytest.raises(AblateError, match="config.json is missing"):
        load_model(folder)


@pytest.mark.parametrize("arch", PRETRAINABLE)
def test_encoder_weights_move_from_mlm_to_classifier(arch, tmp_path):
    pretrained = _mlm(arch)
    with torch.no_grad():  # make the saved weights differ from any fresh initialisation
        for parameter in pretrained.encoder.parameters():
            parameter.add_(0.01)
    folder = save_model(pretrained, tmp_path / "pretrained")
    torch.manual_seed(1)
    classifier = build_classifier(arch, preset="tiny", vocab_size=10, num_classes=2,
                                  max_len=32, dropout=0.2)  # dropout and max_len may differ
    head = classifier.head.out.weight.clone()
    load_encoder_weights(classifier, folder)
    ids, mask = _padded_batch()
    pretrained.eval(), classifier.eval()
    with torch.no_grad():
        assert torch.equal(classifier.encoder(ids[:, :32], mask[:, :32]),
                           pretrained.encoder(ids[:, :32], mask[:, :32]))
    assert torch.equal(classifier.head.out.weight, head)  # the head is not touched


def test_encoder_weights_refuse_a_different_encoder(tmp_path):
    folder = save_model(_mlm("unet", vocab_size=4096), tmp_path / "bpe")
    with pytest.raises(AblateError, match=r"config.json.*vocab_size \(saved 4096, model 10\)"):
        load_encoder_weights(_classifier("unet"), folder)
    with pytest.raises(AblateError, match=r"config.json.*depth \(saved 2, model 3\)"):
        load_encoder_weights(
            build_classifier("unet", preset="tiny", vocab_size=4096, num_classes=2, max_len=8,
                             overrides={"depth": 3}),
            folder,
        )
    with pytest.raises(AblateError, match="saved encoder is a 'unet'.*model's is a 'cnn'"):
        load_encoder_weights(_classifier("cnn", vocab_size=4096), folder)


# --- registry ----------------------------------------------------------------------------------


def test_overrides_and_max_len_reach_the_config():
    convnova = _classifier("convnova", overrides={"n_layers": 2, "ffn": True})
    assert len(convnova.encoder.blocks) == 2
    assert convnova.encoder.blocks[0].ffn is not None
    transformer = build_classifier(
        "transformer", preset="small", vocab_size=4096, num_classes=2, max_len=37,
        overrides={"n_layers": 1},
    )
    backbone = transformer.encoder.backbone
    assert backbone.config.max_position_embeddings == 37
    assert backbone.config.num_hidden_layers == 1
    assert backbone.config.hidden_size == 256
    assert transformer.encoder.hidden_size == 256
    with pytest.raises(ValueError, match="max_len=37"):
        transformer(_random_ids(1, 38, 10), torch.ones(1, 38, dtype=torch.long))
    unet = build_encoder("unet", preset="tiny", vocab_size=10, max_len=8,
                         overrides={"hidden_size": 8, "depth": 1})
    assert len(unet.down_blocks) == 1 and unet.hidden_size == 8
    cnn = build_encoder("cnn", preset="base", vocab_size=10, max_len=8, overrides={"n_layers": 5})
    assert len(cnn.blocks) == 5 and cnn.blocks[0].conv.kernel_size == (19,)
    assert isinstance(build_mlm("cnn", preset="tiny", vocab_size=10, max_len=8),
                      MaskedLanguageModel)


def test_unknown_names_raise_ablate_error():
    with pytest.raises(AblateError, match="convnova, transformer, unet, cnn"):
        build_classifier("mamba", preset="tiny", vocab_size=10, num_classes=2, max_len=8)
    with pytest.raises(AblateError, match="tiny, small, nt"):
        build_classifier("convnova", preset="huge", vocab_size=10, num_classes=2, max_len=8)
    with pytest.raises(AblateError, match="'n_blocks'.*allowed fields: .*n_layers"):
        build_classifier(
            "convnova", preset="tiny", vocab_size=10, num_classes=2, max_len=8,
            overrides={"n_blocks": 3},
        )
    with pytest.raises(AblateError, match="vocab_size"):
        build_mlm("transformer", preset="tiny", vocab_size=10, max_len=8,
                  overrides={"vocab_size": 20})
    assert PRESETS == {
        "convnova": ("tiny", "small", "nt"),
        "transformer": ("tiny", "small", "dnabert2-base"),
        "unet": ("tiny", "base"),
        "cnn": ("tiny", "base"),
        "kmer": ("base",),
    }


def test_bad_config_values_raise_ablate_error():
    with pytest.raises(AblateError, match="n_heads"):
        build_classifier(
            "transformer", preset="tiny", vocab_size=10, num_classes=2, max_len=8,
            overrides={"n_heads": 3},
        )
    with pytest.raises(AblateError, match="kernel_size"):
        ConvNovaConfig(vocab_size=10, kernel_size=4)
    with pytest.raises(AblateError, match="complement_ids"):
        ConvNovaConfig(vocab_size=10, complement_ids=[0, 1, 2])
    with pytest.raises(AblateError, match="kernel_size"):
        build_encoder("unet", preset="tiny", vocab_size=10, max_len=8,
                      overrides={"kernel_size": 4})
    with pytest.raises(AblateError, match="first_kernel_size"):
        build_encoder("cnn", preset="tiny", vocab_size=10, max_len=8,
                      overrides={"first_kernel_size": 0})


def test_importing_registry_does_not_import_torch():
    code = (
        "import sys, ablate.models, ablate.models.registry as r; "
        "assert 'torch' not in sys.modules, 'torch imported'; print(r.ARCHITECTURES)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
