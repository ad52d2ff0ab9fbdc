"""The columns every table of a study shares: names, scores by the task's metric, families."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from ablate.models import registry
from ablate.models.registry import CONVOLUTIONAL
from ablate.tracking.schema import (
    Family,
    MetricName,
    Tag,
    metric_column,
    tag_column,
)

AXES = ["architecture", "pretraining", "tokenizer"]
CELL_COLUMNS = [*AXES, "task"]
# The tag of each cell column.
CELL_TAGS = {"architecture": Tag.ARCHITECTURE, "pretraining": Tag.PRETRAINING,
             "tokenizer": Tag.TOKENIZER, "task": Tag.TASK}
COLLAPSE_MCC = 0.05  # a replicate whose test MCC is below this has collapsed
SIZE_MISMATCH = 1.5  # arms whose parameter counts differ by more than this factor are marked
EDGE_MARGIN = 0.05  # share of a range's width (log width for log ranges) that counts as its edge
MCC = "mcc"  # the metric of every task but virus/covid, and of every run before schema 3
# The baseline architectures (the k-mer floor), when the registry names them.
BASELINES: tuple[str, ...] = tuple(getattr(registry, "BASELINES", ("kmer",)))
# Metric-name prefixes: a pretraining run's exposure to a task, and a cell run's caveat figures.
EXPOSURE_PREFIX = MetricName.EXPOSURE_PREFIX
CAVEAT_PREFIX = MetricName.CAVEAT_PREFIX
EXTERNAL_KIND = "external"  # Tag.PRETRAIN_KIND of a registered checkpoint
EXTERNAL_VALUE = EXTERNAL_KIND + ":"  # prefix of an external checkpoint's pretraining value

STAGE = tag_column(Tag.STAGE)
OUTCOME = tag_column(Tag.OUTCOME)
CELL = tag_column(Tag.CELL)
TASK = tag_column(Tag.TASK)
PRETRAIN_RUN = tag_column(Tag.PRETRAIN_RUN_ID)
BEST_DEV_MCC = metric_column(MetricName.BEST_DEV_MCC)
BEST_DEV_SCORE = metric_column(MetricName.BEST_DEV_SCORE)
TEST_MCC = metric_column(MetricName.TEST_MCC)
TEST_SCORE = metric_column(MetricName.TEST_SCORE)
SCORE_COLUMNS = [metric_column(m) for m in (MetricName.BEST_DEV_SCORE, MetricName.DEV_SCORE,
                                            MetricName.TEST_SCORE)]
DEVICE_HOURS = metric_column(MetricName.DEVICE_HOURS)
FLOPS = metric_column(MetricName.FLOPS)
N_PARAMS = metric_column(MetricName.N_PARAMS)

STAT_COLUMNS = ["mean_difference", "ci_low", "ci_high", "p_value", "p_holm", "verdict",
                "prob_improvement", "n_tasks"]
SIZE_COLUMNS = ["metric", "treatment_params", "baseline_params", "size_ratio", "size_mismatch",
                "treatment_extension", "baseline_extension", "exposure_unknown"]


def _cell_values(group: pd.DataFrame) -> dict[str, Any]:
    """The cell columns (architecture, pretraining, tokenizer, task) of a group of one cell."""
    return {col: group[tag_column(tag)].iloc[0] for col, tag in CELL_TAGS.items()}


def _column(frame: pd.DataFrame, name: str, default: Any = np.nan) -> pd.Series:
    return frame[name] if name in frame else pd.Series(default, index=frame.index)


def _numeric(frame: pd.DataFrame, name: str) -> pd.Series:
    return pd.to_numeric(_column(frame, name), errors="coerce").astype(float)


def _text(frame: pd.DataFrame, name: str) -> pd.Series:
    """A tag column as strings, '' where the tag is absent."""
    values = _column(frame, name, None)
    return pd.Series([v if isinstance(v, str) else "" for v in values], index=frame.index,
                     dtype=object)



# --- what a run's score is, and which side of question 1 its cell is on ---------------------


def task_metric(task: str) -> str:
    """The task's own metric: ``"mcc"``, or ``"f1_macro"`` for virus/covid."""
    from ablate.data.gue import REGISTRY

    dataset = REGISTRY.get(task)
    return dataset.metric if dataset is not None else MCC


def _uses_score(frame: pd.DataFrame) -> pd.Series:
    """Per run: whether it carries the task-metric names (schema 3) rather than MCC only."""
    version = _numeric(frame, tag_column(Tag.SCHEMA_VERSION))
    present = [c for c in SCORE_COLUMNS if c in frame]
    logged = (frame[present].notna().any(axis=1) if present
              else pd.Series(False, index=frame.index))
    return (version >= 3) | (version.isna() & logged)


def _score(frame: pd.DataFrame, score: str, mcc: str) -> tuple[pd.Series, pd.Series]:
    """(score per run, its metric's name): the task metric, or MCC for runs before schema 3."""
    uses = _uses_score(frame)
    values = _numeric(frame, score).where(uses, _numeric(frame, mcc))
    tasks = _text(frame, TASK)
    metric = pd.Series([task_metric(t) if u else MCC for t, u in zip(tasks, uses, strict=True)],
                       index=frame.index, dtype=object)
    return values, metric


def family_of(architecture: str) -> str:
    """The family of an architecture by the registry (for runs without ``Tag.FAMILY``)."""
    if architecture in CONVOLUTIONAL:
        return Family.CONVOLUTIONAL
    if architecture in BASELINES:
        return Family.BASELINE
    return Family.TRANSFORMER


def _families(frame: pd.DataFrame) -> pd.Series:
    tagged = _text(frame, tag_column(Tag.FAMILY))
    archs = _text(frame, tag_column(Tag.ARCHITECTURE))
    return pd.Series([t or family_of(a) for t, a in zip(tagged, archs, strict=True)],
                     index=frame.index, dtype=object)


def _checkpoints(frame: pd.DataFrame) -> pd.Series:
    """The external checkpoint a run's cell is an arm of ('' for none)."""
    tagged = _text(frame, tag_column(Tag.EXTERNAL_CHECKPOINT))
    pre = _text(frame, tag_column(Tag.PRETRAINING))
    return pd.Series([t or (p.removeprefix(EXTERNAL_VALUE) if p.startswith(EXTERNAL_VALUE)
                            else "") for t, p in zip(tagged, pre, strict=True)],
                     index=frame.index, dtype=object)


def is_external_pretrained(pretraining: str, checkpoint: str = "") -> bool:
    """Whether a cell is an external checkpoint's pretrained arm (not its random-init twin)."""
    return pretraining.startswith(EXTERNAL_VALUE) or (bool(checkpoint) and pretraining != "none")


def is_extension(family: str, tokenizer: str) -> bool:
    """A convolutional model reading anything but single nucleotides is ablate's own extension
    (the released ConvNova is single-nucleotide only)."""
    return family == Family.CONVOLUTIONAL and tokenizer != "char"


def _describe(frame: pd.DataFrame) -> pd.DataFrame:
    """The per-run columns every table shares, from tags with the fallbacks for old runs."""
    family = _families(frame)
    tokenizer = _text(frame, tag_column(Tag.TOKENIZER))
    checkpoint = _checkpoints(frame)
    pretraining = _text(frame, tag_column(Tag.PRETRAINING))
    return pd.DataFrame({
        "family": family,
        "external_checkpoint": checkpoint,
        "external_pretrained": [is_external_pretrained(p, c)
                                for p, c in zip(pretraining, checkpoint, strict=True)],
        "extension": [is_extension(f, t) for f, t in zip(family, tokenizer, strict=True)],
    }, index=frame.index)



def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _float(row: pd.Series | None, name: str) -> float:
    value = _number(row.get(name)) if row is not None else None
    return np.nan if value is None else value
