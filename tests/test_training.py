import numpy as np
import pytest
import torch

from ablate.models.registry import build_classifier
from ablate.shards import SplitArrays
from ablate.training import (
    SplitTensors,
    autocast_context,
    classification_metrics,
    count_step_flops,
    evaluate,
    pick_device,
)


def tiny_batch(rows=8, width=12, vocab=10):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (rows, width), generator=generator)
    mask = torch.ones_like(ids)
    labels = torch.arange(rows) % 2
    return ids, mask, labels


@pytest.mark.parametrize("arch", ["convnova", "transformer"])
def test_flop_count_scales_with_batch_and_backward(arch):
    model = build_classifier(arch, preset="tiny", vocab_size=10, num_classes=2, max_len=16)
    small = count_step_flops(model, tiny_batch(rows=4), backward=False)
    large = count_step_flops(model, tiny_batch(rows=8), backward=False)
    train = count_step_flops(model, tiny_batch(rows=8), backward=True)
    assert small > 0
    assert large == pytest.approx(2 * small, rel=0.01)
    assert 2.5 * large <= train <= 3.5 * large  # backward costs about twice the forward
    assert all(p.grad is None for p in model.parameters())  # counting leaves no gradients


def test_classification_metrics_hand_computed():
    labels = np.array([0, 0, 1, 1])
    metrics = classification_metrics(labels, np.array([0, 1, 1, 1]))
    assert metrics["accuracy"] == pytest.approx(0.75)
    # MCC = (TP*TN - FP*FN) / sqrt(...) = (2*1 - 1*0) / sqrt(3*2*2*1)
    assert metrics["mcc"] == pytest.approx(2 / np.sqrt(12))
    assert classification_metrics(labels, np.zeros(4, dtype=int))["mcc"] == 0.0


def test_evaluate_matches_manual_loss():
    model = build_classifier("transformer", preset="tiny", vocab_size=10, num_classes=2,
                             max_len=16)
    ids, mask, labels = tiny_batch(rows=10)
    split = SplitTensors(ids, mask, labels)
    metrics = evaluate(model, split, torch.device("cpu"), batch_size=3)
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(model(ids, mask), labels).item()
    assert metrics["loss"] == pytest.approx(expected, rel=1e-5)
    assert -1.0 <= metrics["mcc"] <= 1.0


def test_split_tensors_from_arrays():
    arrays = SplitArrays(np.array([[1, 5, 2, 3]], dtype=np.int32), np.array([3], dtype=np.int32),
                         np.array([1]))
    tensors = SplitTensors.from_arrays(arrays)
    assert tensors.input_ids.dtype == torch.int64
    assert tensors.attention_mask.tolist() == [[1, 1, 1, 0]]
    assert len(tensors) == 1


def test_cpu_device_has_no_autocast():
    device = pick_device()
    if device.type == "cpu":
        with autocast_context(device):
            assert not torch.is_autocast_enabled("cpu")
