"""The fine-tuning recipes the compared models were published with, as searched values.

Every search space shipped in ``search_spaces/`` contains each of these values (a test checks
it), so a search can always find what the authors used. Sources:

- DNABERT-2 (Zhou et al., "DNABERT-2: Efficient Foundation Model and Benchmark for
  Multi-Species Genome", ICLR 2024, GUE fine-tuning): learning rate 3e-5, weight decay 0.01,
  global batch 32, 30-50 warm-up steps, linear decay, 3-10 epochs by task.
- ConvNova (Bo et al., "Revisiting Convolution Architecture in the Realm of DNA Foundation
  Models", ICLR 2025): learning rate 1e-3, weight decay 0.1, batch 128-256, dropout 0, cosine
  schedule with 1% warm-up, 10-20 epochs.
"""

from __future__ import annotations

from typing import Any

# name -> {hyperparameter: the published value, or the published values it ranges over}
PUBLISHED_RECIPES: dict[str, dict[str, Any]] = {
    "DNABERT-2": {"learning_rate": 3e-5, "weight_decay": 0.01, "batch_size": 32,
                  "warmup_steps": (30, 50), "schedule": "linear"},
    "ConvNova": {"learning_rate": 1e-3, "weight_decay": 0.1, "batch_size": (128, 256),
                 "dropout": 0.0, "schedule": "cosine", "warmup_ratio": 0.01},
}


def recipe_values(value: Any) -> tuple[Any, ...]:
    """A recipe entry as the tuple of values it stands for."""
    return tuple(value) if isinstance(value, tuple) else (value,)
