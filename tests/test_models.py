"""Tests of the model architectures, heads and registry (tiny models, CPU)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from ablate.errors import AblateError
from ablate.models.convnova import ConvNovaConfig, TokenConv, dilation_schedule
from ablate.models.heads import masked_mean_pool
from ablate.models.registry import (
    ARCHITECTURES,
    PRESETS,
    build_classifier,
    build_encoder,
    count_parameters,
)

PAD = 3
TINY = {"convnova": "tiny", "transformer": "tiny"}
RELEASED_NT_PARAMETERS = 1_688_448


def _classifier(arch: str, vocab_size: int = 10, num_classes: int = 2, **kwargs):
    torch.manual_seed(0)
    return build_classifier(
        arch, preset=TINY[arch], vocab_size=vocab_size, num_classes=num_classes, max_len=64,
        **kwargs,
    )


def _random_ids(batch: int, length: int, vocab_size: int) -> torch.Tensor:
    # ids from 5 up: no special tokens inside sequences
    return torch.randint(5, vocab_size, (batch, length))


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


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("vocab_size", [10, 4096])
def test_logits_have_right_shape_and_are_finite(arch, vocab_size):
    model = _classifier(arch, vocab_size=vocab_size, num_classes=3)
    ids = _random_ids(4, 40, vocab_size)
    mask = torch.ones_like(ids)
    mask[1, 25:] = 0
    ids[1, 25:] = PAD
    logits = model(ids, mask)
    assert logits.shape == (4, 3)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_padding_is_ignored(arch):
    model = _classifier(arch, overrides={"ffn": True} if arch == "convnova" else None).eval()
    ids = _random_ids(3, 20, 10)
    mask = torch.ones_like(ids)
    padded_ids = torch.cat([ids, torch.full((3, 13), PAD)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(3, 13, dtype=torch.long)], dim=1)
    with torch.no_grad():
        plain = model(ids, mask)
        padded = model(padded_ids, padded_mask)
        # a short sequence alone vs the same sequence padded inside a batch of longer ones
        alone = model(ids[:1, :12], mask[:1, :12])
        batch_ids, batch_mask = ids.clone(), mask.clone()
        batch_ids[0, 12:], batch_mask[0, 12:] = PAD, 0
        in_batch = model(batch_ids, batch_mask)[:1]
    torch.testing.assert_close(padded, plain, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(in_batch, alone, atol=1e-5, rtol=1e-4)


def test_masked_mean_pool_averages_real_positions_only():
    hidden = torch.tensor([[[1.0], [3.0], [100.0]], [[2.0], [4.0], [6.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    torch.testing.assert_close(masked_mean_pool(hidden, mask), torch.tensor([[2.0], [4.0]]))


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
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(model(ids, mask), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


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


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_same_seed_gives_same_model_and_outputs(arch):
    ids = _random_ids(2, 16, 10)
    mask = torch.ones_like(ids)
    first, second = _classifier(arch).eval(), _classifier(arch).eval()
    with torch.no_grad():
        torch.testing.assert_close(first(ids, mask), second(ids, mask), atol=0, rtol=0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_runs_under_bfloat16_autocast(arch):
    model = _classifier(arch)
    ids = _random_ids(2, 16, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids, torch.ones_like(ids))
    logits.float().sum().backward()
    assert torch.isfinite(logits.float()).all()


def test_overrides_and_max_len_reach_the_config():
    convnova = _classifier("convnova", overrides={"n_layers": 2, "ffn": True})
    assert len(convnova.encoder.blocks) == 2
    assert convnova.encoder.blocks[0].ffn is not None
    transformer = build_classifier(
        "transformer", preset="small", vocab_size=4096, num_classes=2, max_len=37,
        overrides={"n_layers": 1},
    )
    bert = transformer.encoder.bert
    assert bert.config.max_position_embeddings == 37
    assert bert.config.num_hidden_layers == 1
    assert bert.config.hidden_size == 256
    assert bert.pooler is None
    assert transformer.encoder.hidden_size == 256


def test_unknown_names_raise_ablate_error():
    with pytest.raises(AblateError, match="convnova, transformer"):
        build_classifier("mamba", preset="tiny", vocab_size=10, num_classes=2, max_len=8)
    with pytest.raises(AblateError, match="tiny, nt"):
        build_classifier("convnova", preset="huge", vocab_size=10, num_classes=2, max_len=8)
    with pytest.raises(AblateError, match="'n_blocks'.*allowed fields: .*n_layers"):
        build_classifier(
            "convnova", preset="tiny", vocab_size=10, num_classes=2, max_len=8,
            overrides={"n_blocks": 3},
        )
    with pytest.raises(AblateError, match="vocab_size"):
        build_classifier(
            "transformer", preset="tiny", vocab_size=10, num_classes=2, max_len=8,
            overrides={"vocab_size": 20},
        )
    assert PRESETS == {"convnova": ("tiny", "nt"), "transformer": ("tiny", "small")}


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


def test_importing_registry_does_not_import_torch():
    code = (
        "import sys, ablate.models, ablate.models.registry as r; "
        "assert 'torch' not in sys.modules, 'torch imported'; print(r.ARCHITECTURES)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
