"""Read a study back from MLflow as DataFrames, and the comparisons built on them.

For notebook users, each function returns a DataFrame (the report is built from the same ones):
``runs(tracking_uri, study)`` every run of the latest sweep; ``search_trials(runs)`` its search
trials; ``cells(trials, runs)`` the budget table, one row per cell; ``replicates(runs)`` one row
per test run; ``comparisons(replicates)`` paired tests along each axis, Holm-adjusted;
``contrasts(replicates, cells, patterns)`` paired tests between cell patterns that may vary
several axes at once; ``cost_benefit(runs, pretrain_costs(...))`` test score against
device-hours and FLOPs with each amortisation rule; ``break_even`` and ``tuning_curves``;
``kmer_floor``, ``caveats``, ``leakage(pretraining_runs(...))`` and ``edge_flags`` for what the
report discloses beside the numbers. Column names follow ``ablate.tracking.schema``.

Every score is the task's own metric (MCC, or macro F1 for virus/covid; the ``metric`` column
says which). Runs written before the schema carried the score names (version 2 and older) are
read with MCC as their score.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ablate.models import registry
from ablate.models.registry import CONVOLUTIONAL
from ablate.tracking.reader import client_for
from ablate.tracking.reader import latest_sweep as latest_sweep  # re-exported for notebooks
from ablate.tracking.reader import runs as runs  # re-exported for notebooks
from ablate.tracking.schema import (
    Family,
    MetricName,
    Outcome,
    Stage,
    Tag,
    metric_column,
    param_column,
    tag_column,
)

if TYPE_CHECKING:
    from ablate.spec import CellPattern, Contrast

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


def search_trials(all_runs: pd.DataFrame) -> pd.DataFrame:
    """The search-trial runs among a sweep's runs, without those of trials lost when a driver
    was killed (``ablate.outcome=lost``: their slots were re-issued and run again)."""
    if all_runs.empty:
        return all_runs
    keep = (_column(all_runs, STAGE) == Stage.TRIAL) & (
        _column(all_runs, OUTCOME) != Outcome.LOST)
    return all_runs[keep].reset_index(drop=True)


def trials(tracking_uri: str, study: str, sweep: str | None = None) -> pd.DataFrame:
    """One row per search trial of a sweep, with params, metrics and tags."""
    return search_trials(runs(tracking_uri, study, sweep))


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


# --- the budget table ------------------------------------------------------------------------


@dataclass(frozen=True)
class EdgeFlag:
    """A searched hyperparameter whose best value sits at (or within the margin of) an edge."""

    parameter: str
    value: float
    low: float
    high: float
    side: str  # "low" or "high"

    def __str__(self) -> str:
        return f"{self.parameter}={self.value:g} at {self.side} edge [{self.low:g}, {self.high:g}]"


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


def _edge_of(name: str, value: float, spec: Mapping[str, Any], margin: float) -> EdgeFlag | None:
    kind = spec.get("type")
    if kind == "categorical":
        choices = [_number(c) for c in spec.get("choices") or []]
        if len(choices) < 2 or any(c is None for c in choices):
            return None  # a single choice is not searched; strings have no order
        low, high = min(choices), max(choices)
        if value == high:
            return EdgeFlag(name, value, low, high, "high")
        if value == low and low != 0:
            return EdgeFlag(name, value, low, high, "low")
        return None
    low, high = _number(spec.get("low")), _number(spec.get("high"))
    if low is None or high is None or high <= low:
        return None
    lo, hi, x = low, high, value
    if spec.get("log") and low > 0 and value > 0:
        lo, hi, x = math.log(low), math.log(high), math.log(value)
    width = hi - lo
    near_low = low != 0 and x - lo <= margin * width  # a low of 0 is a natural bound
    near_high = hi - x <= margin * width
    if near_high and (not near_low or hi - x <= x - lo):
        return EdgeFlag(name, value, low, high, "high")
    if near_low:
        return EdgeFlag(name, value, low, high, "low")
    return None


def edge_flags(best_params: Mapping[str, Any], search_space: str | Mapping[str, Any] | None,
               *, margin: float = EDGE_MARGIN) -> list[EdgeFlag]:
    """The searched hyperparameters of a best configuration at or near an edge of their range.

    ``search_space`` is the cell's ``Tag.SEARCH_SPACE`` (JSON, or its parsed dict):
    ``{"params": {name: {"type": "float"|"int"|"categorical", "low", "high", "log",
    "choices"}}, "model_params": {...}}``. A value within ``margin`` of the range's width (of
    its log width for log ranges) of an end is at that edge: the best may lie beyond it
    (the Deep Learning Tuning Playbook's boundary check). A low of 0 (dropout, warm-up, weight
    decay) is a natural bound, not an edge. A categorical of numbers is at an edge at its
    smallest or largest choice; other categoricals have no edges.
    """
    if not search_space:
        return []
    space = json.loads(search_space) if isinstance(search_space, str) else dict(search_space)
    sections = [space[k] for k in ("params", "model_params") if isinstance(space.get(k), dict)]
    if not sections:
        sections = [space]
    flags = []
    for section in sections:
        for name, spec in section.items():
            value = _number(best_params.get(name))
            if value is None or not isinstance(spec, Mapping):
                continue
            flag = _edge_of(name, value, spec, margin)
            if flag is not None:
                flags.append(flag)
    return flags


def cells(trial_runs: pd.DataFrame, replicate_runs: pd.DataFrame | None = None, *,
          cell_runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """The budget table: one row per cell with its trials' outcomes, best dev score and cost.

    ``best_dev_score`` is in the task's ``metric``; ``best_dev_mcc`` is the best trial's MCC.
    With ``cell_runs`` (the sweep's cell runs, or all its runs) ``at_edge`` lists the best
    configuration's hyperparameters at an edge of the cell's search ranges (:func:`edge_flags`).
    """
    columns = ["cell", *CELL_COLUMNS, "family", "metric", "extension", "external_checkpoint",
               "trials", "completed", "pruned", "failed", "max_epochs", "best_dev_score",
               "best_dev_mcc", "best_trial", "best_params", "n_params", "wall_seconds",
               "flops", "device_hours", "at_edge"]
    if trial_runs.empty:
        return pd.DataFrame(columns=columns)
    param_cols = [c for c in trial_runs.columns if c.startswith(param_column(""))]
    score, metric = _score(trial_runs, BEST_DEV_SCORE, BEST_DEV_MCC)
    described = _describe(trial_runs)
    spaces = search_spaces(cell_runs)
    rows = []
    for cell, group in trial_runs.groupby(CELL, sort=True):
        outcome = _column(group, OUTCOME, "running").fillna("running")
        scores = score.loc[group.index]
        best = group.loc[scores.idxmax()] if scores.notna().any() else None
        first = described.loc[group.index[0]]
        params = ({c.removeprefix(param_column("")): best[c] for c in param_cols
                   if pd.notna(best[c])} if best is not None else {})
        rows.append({
            "cell": cell,
            **_cell_values(group),
            "family": first["family"],
            "metric": metric.loc[group.index[0]],
            "extension": bool(first["extension"]),
            "external_checkpoint": first["external_checkpoint"],
            "trials": len(group),
            "completed": int((outcome == Outcome.COMPLETED).sum()),
            "pruned": int((outcome == Outcome.PRUNED).sum()),
            "failed": int((outcome == Outcome.FAILED).sum()),
            "max_epochs": int(pd.to_numeric(_column(group, param_column("max_epochs")),
                                             errors="coerce").max()),
            "best_dev_score": float(scores.max()) if best is not None else np.nan,
            "best_dev_mcc": _float(best, BEST_DEV_MCC),
            "best_trial": best[tag_column(Tag.TRIAL_ID)] if best is not None else "",
            "best_params": params,
            "n_params": _float(best, N_PARAMS),
            "wall_seconds": float(_column(group, metric_column(MetricName.WALL_SECONDS)).sum()),
            "flops": float(_column(group, FLOPS).sum()),
            "device_hours": float(_column(group, DEVICE_HOURS).sum()),
            "at_edge": "; ".join(str(f) for f in edge_flags(params, spaces.get(cell))),
        })
    table = pd.DataFrame(rows, columns=columns)
    if replicate_runs is not None and not replicate_runs.empty:
        reps = replicates(replicate_runs)
        summary = reps.groupby("cell").agg(
            replicates=("seed", "size"),
            collapsed=("collapsed", "sum"),
            replicate_failures=("failed", "sum"),
            test_score=("test_score", "mean"),
            test_mcc=("test_mcc", "mean"),
            replicate_device_hours=("device_hours", "sum"),
        )
        table = table.merge(summary, left_on="cell", right_index=True, how="left")
    return table


def search_spaces(cell_runs: pd.DataFrame | None) -> dict[str, str]:
    """Cell name -> its ``Tag.SEARCH_SPACE`` JSON, from the sweep's cell runs."""
    if cell_runs is None or cell_runs.empty:
        return {}
    own = cell_runs[_column(cell_runs, STAGE) == Stage.CELL]
    spaces = _text(own, tag_column(Tag.SEARCH_SPACE))
    return {c: s for c, s in zip(_text(own, CELL), spaces, strict=True) if s}


def budget_parity(cell_table: pd.DataFrame) -> dict[str, bool]:
    """Per cell: whether its budget (trials run, max epochs) equals the study's most common."""
    if cell_table.empty:
        return {}
    budget = list(zip(cell_table["trials"], cell_table["max_epochs"], strict=True))
    common = max(set(budget), key=budget.count)
    return {cell: b == common for cell, b in zip(cell_table["cell"], budget, strict=True)}


def replicates(study_runs: pd.DataFrame) -> pd.DataFrame:
    """One row per replicate (test) run: its cell, seed, test score and whether it collapsed.

    ``seed`` is the replicate's seed (``Tag.REPLICATE_SEED``), the one paired comparisons
    match on; ``test_score``/``dev_score`` are in the task's ``metric``; ``n_params`` is the
    model's parameter count.
    """
    reps = study_runs[(_column(study_runs, STAGE) == Stage.REPLICATE)
                      & (_column(study_runs, OUTCOME) != Outcome.LOST)]
    test_score, metric = _score(reps, TEST_SCORE, TEST_MCC)
    dev_score, _ = _score(reps, BEST_DEV_SCORE, BEST_DEV_MCC)
    frame = pd.DataFrame({
        "cell": _text(reps, CELL),
        **{col: _text(reps, tag_column(tag)) for col, tag in CELL_TAGS.items()},
        **_describe(reps),
        "metric": metric,
        "seed": pd.to_numeric(_column(reps, tag_column(Tag.REPLICATE_SEED)), errors="coerce"),
        "test_score": test_score,
        "dev_score": dev_score,
        "test_mcc": _numeric(reps, TEST_MCC),
        "dev_mcc": _numeric(reps, BEST_DEV_MCC),
        "n_params": _numeric(reps, N_PARAMS),
        "device_hours": _numeric(reps, DEVICE_HOURS),
        "flops": _numeric(reps, FLOPS),
        "failed": _column(reps, OUTCOME) == Outcome.FAILED,
    }, index=reps.index)
    collapse = frame["test_mcc"].where(frame["test_mcc"].notna(), frame["test_score"])
    frame["collapsed"] = ~frame["failed"] & ~(collapse >= COLLAPSE_MCC)
    return frame.reset_index(drop=True)


def _usable(reps: pd.DataFrame) -> pd.DataFrame:
    """Replicates that count in a paired test: not failed, with a test score (a collapsed one
    counts with its near-zero score)."""
    return reps[~reps["failed"].astype(bool) & reps["test_score"].notna()]


# --- comparisons along one axis --------------------------------------------------------------


def _comparison_pairs(values: list[str], axis: str,
                      families: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """(treatment, baseline) pairs along one axis, oriented to answer the study's questions.

    On the architecture axis every transformer is set against every convolutional model; the
    k-mer baseline is the floor, in neither group. With only one family present its members are
    compared with each other.
    """
    if axis == "pretraining":
        return [(v, "none") for v in values if v != "none" and "none" in values]
    if axis == "architecture":
        family = {v: (families or {}).get(v) or family_of(v) for v in values}
        transformers = [v for v in values if family[v] == Family.TRANSFORMER]
        convolutional = [v for v in values if family[v] == Family.CONVOLUTIONAL]
        if transformers and convolutional:
            return [(t, c) for t in transformers for c in convolutional]
        return list(itertools.combinations(sorted(transformers or convolutional), 2))
    if axis == "tokenizer":
        bpe = [v for v in values if v.startswith("bpe")]
        return [(b, v) for b in bpe for v in values if not v.startswith("bpe")] or list(
            itertools.combinations(sorted(values), 2)
        )
    return list(itertools.combinations(sorted(values), 2))


def _median(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.median()) if len(values) else np.nan


def _size_columns(treatment: pd.DataFrame, baseline: pd.DataFrame) -> dict[str, Any]:
    """Both arms' parameter counts (median over their runs), their ratio and the flags."""
    mine, theirs = _median(treatment["n_params"]), _median(baseline["n_params"])
    ratio = mine / theirs if mine > 0 and theirs > 0 else np.nan
    metrics = sorted(set(treatment["metric"]) | set(baseline["metric"]))
    return {
        "metric": "+".join(metrics),
        "treatment_params": mine,
        "baseline_params": theirs,
        "size_ratio": ratio,
        "size_mismatch": bool(np.isfinite(ratio)
                              and max(ratio, 1.0 / ratio) > SIZE_MISMATCH),
        "treatment_extension": bool(treatment["extension"].any()),
        "baseline_extension": bool(baseline["extension"].any()),
        "exposure_unknown": bool(treatment["external_pretrained"].any()
                                 or baseline["external_pretrained"].any()),
    }


def _arm(rows: pd.DataFrame, tasks: pd.Index, seeds: pd.Index) -> pd.DataFrame:
    return rows[rows["task"].isin(tasks) & rows["seed"].isin(seeds)]


def comparisons(reps: pd.DataFrame, *, seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """Paired comparisons along each axis, the other two axes held fixed, across tasks.

    Each comparison pairs the two conditions task by task and replicate by replicate (the same
    seeds) on the task's score; collapsed replicates count with their (near-zero) score, failed
    ones are left out of that pair. Wilcoxon signed-rank across tasks, Holm over every
    comparison of the report. Each row also gives both arms' parameter counts (median over the
    compared runs), their ratio, ``size_mismatch`` when they differ by more than
    ``SIZE_MISMATCH``, whether an arm is ablate's own extension (a convolutional model with a
    non-char tokenizer) and ``exposure_unknown`` when an arm is an external checkpoint's
    pretrained cell.
    """
    from ablate.stats import comparison_table, paired_comparison

    usable = _usable(reps)
    families = dict(zip(usable["architecture"], usable["family"], strict=True))
    results, meta = {}, []
    for axis in AXES:
        others = [a for a in AXES if a != axis]
        for fixed, group in usable.groupby(others, sort=True):
            values = sorted(group[axis].unique())
            for treatment, baseline in _comparison_pairs(values, axis, families):
                mine = group[group[axis] == treatment]
                theirs = group[group[axis] == baseline]
                a = mine.pivot_table(index="task", columns="seed", values="test_score")
                b = theirs.pivot_table(index="task", columns="seed", values="test_score")
                tasks = a.index.intersection(b.index)
                seeds = a.columns.intersection(b.columns)
                a, b = a.loc[tasks, seeds], b.loc[tasks, seeds]
                keep = a.notna().all(axis=1) & b.notna().all(axis=1)
                if keep.sum() == 0 or len(seeds) == 0:
                    continue
                fixed_text = ", ".join(f"{k}={v}" for k, v in zip(others, fixed, strict=True))
                name = f"{axis}: {treatment} vs {baseline} ({fixed_text})"
                results[name] = paired_comparison(a[keep].to_numpy(), b[keep].to_numpy(),
                                                  seed=seed)
                kept = tasks[keep.to_numpy()]
                meta.append({"comparison": name, "axis": axis, "treatment": treatment,
                             "baseline": baseline, **dict(zip(others, fixed, strict=True)),
                             **_size_columns(_arm(mine, kept, seeds), _arm(theirs, kept, seeds))})
    if not results:
        return pd.DataFrame(columns=["comparison", "axis", "treatment", "baseline",
                                     *STAT_COLUMNS, *SIZE_COLUMNS])
    table = comparison_table(results, alpha=alpha)
    return pd.DataFrame(meta).merge(table, on="comparison")


# --- contrasts across axes -------------------------------------------------------------------


def pattern_text(pattern: CellPattern) -> str:
    """A cell pattern in words, e.g. ``transformer, pretrained``."""
    parts = [pattern.family] if pattern.family else []
    if pattern.pretrained is not None:
        parts.append("pretrained" if pattern.pretrained else "from scratch")
    parts += [f"{axis}={getattr(pattern, axis)}" for axis in AXES
              if getattr(pattern, axis) != "*"]
    return ", ".join(parts) or "any cell"


def condition(row: Any) -> str:
    """A cell's condition (its axes but the task): ``architecture/pretraining/tokenizer``."""
    return "/".join(str(getattr(row, axis)) for axis in AXES)


def _catalogue(reps: pd.DataFrame, cell_table: pd.DataFrame) -> pd.DataFrame:
    """Every cell with its axes, family and dev score (the cell table's best dev score, or the
    mean dev score of its replicates for a cell the table lacks)."""
    columns = ["cell", *CELL_COLUMNS, "family", "dev_score"]
    known = pd.DataFrame(columns=columns)
    if cell_table is not None and len(cell_table):
        known = cell_table.assign(dev_score=cell_table["best_dev_score"])[columns]
    extra = reps[~reps["cell"].isin(known["cell"])]
    if len(extra):
        more = extra.groupby("cell", sort=True).agg(
            **{c: (c, "first") for c in [*CELL_COLUMNS, "family"]},
            dev_score=("dev_score", "mean")).reset_index()
        known = pd.concat([known, more[columns]], ignore_index=True) if len(known) else more
    return known.reset_index(drop=True)


def _matching(catalogue: pd.DataFrame, pattern: CellPattern) -> pd.Series:
    return pd.Series([pattern.matches(architecture=r.architecture, pretraining=r.pretraining,
                                      tokenizer=r.tokenizer, family=r.family)
                      for r in catalogue.itertuples()], index=catalogue.index, dtype=bool)


def contrast_pairs(reps: pd.DataFrame, cell_table: pd.DataFrame,
                   patterns: Sequence[Contrast]) -> pd.DataFrame:
    """Per contrast and task: which treatment cell is set against which control cell.

    With ``control_choice="best"`` the control of a task is its control cell with the best dev
    score (chosen on dev, so test stays untouched by the choice); with ``"each"`` every control
    cell of the task in turn. A task with treatment cells but no control (or no control with a
    dev score to choose by) gives no pair.
    """
    columns = ["contrast", "task", "treatment", "control", "treatment_cell", "control_cell",
               "control_dev_score"]
    catalogue = _catalogue(reps, cell_table)
    rows = []
    for pattern in patterns:
        if catalogue.empty:
            break
        treated = _matching(catalogue, pattern.treatment)
        controls = _matching(catalogue, pattern.control)
        best_label = f"best by dev of [{pattern_text(pattern.control)}]"
        for task, cells_of_task in catalogue.groupby("task", sort=True):
            treatment = cells_of_task[treated.loc[cells_of_task.index]]
            control = cells_of_task[controls.loc[cells_of_task.index]]
            if pattern.control_choice == "best":
                ranked = control[control["dev_score"].notna()].sort_values(
                    ["dev_score", "cell"], ascending=[False, True])
                control = ranked.head(1)
            for t in treatment.itertuples():
                for c in control.itertuples():
                    if t.cell == c.cell:
                        continue
                    rows.append({
                        "contrast": pattern.name, "task": task, "treatment": condition(t),
                        "control": best_label if pattern.control_choice == "best"
                        else condition(c),
                        "treatment_cell": t.cell, "control_cell": c.cell,
                        "control_dev_score": c.dev_score,
                    })
    return pd.DataFrame(rows, columns=columns)


def matching_cells(reps: pd.DataFrame, cell_table: pd.DataFrame,
                   pattern: CellPattern) -> list[str]:
    """The study's cells a pattern takes, every task together."""
    catalogue = _catalogue(reps, cell_table)
    if catalogue.empty:
        return []
    return sorted(catalogue.loc[_matching(catalogue, pattern), "cell"])


def contrast_tasks(reps: pd.DataFrame, cell_table: pd.DataFrame,
                   patterns: Sequence[Contrast]) -> pd.DataFrame:
    """:func:`contrast_pairs` with each pair's test scores: the mean over the seeds both cells
    have a usable replicate for, and their difference (treatment - control)."""
    pairs = contrast_pairs(reps, cell_table, patterns)
    usable = _usable(reps)
    by_cell = {cell: group.set_index("seed")["test_score"]
               for cell, group in usable.groupby("cell")}
    empty = pd.Series(dtype=float)
    means = []
    for t, c in zip(pairs["treatment_cell"], pairs["control_cell"], strict=True):
        a, b = by_cell.get(t, empty), by_cell.get(c, empty)
        seeds = a.index.intersection(b.index)
        a, b = a.loc[seeds].groupby(level=0).mean(), b.loc[seeds].groupby(level=0).mean()
        means.append({"seeds": len(a), "treatment_test": float(a.mean()) if len(a) else np.nan,
                      "control_test": float(b.mean()) if len(b) else np.nan})
    frame = pd.concat([pairs, pd.DataFrame(means, index=pairs.index,
                                           columns=["seeds", "treatment_test",
                                                    "control_test"])], axis=1)
    frame["difference"] = frame["treatment_test"] - frame["control_test"]
    return frame


def contrasts(reps: pd.DataFrame, cell_table: pd.DataFrame, patterns: Sequence[Contrast], *,
              seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """Paired tests between cell patterns that may vary several axes at once.

    Per task, each treatment cell is set against the control side (:func:`contrast_pairs`),
    replicate by replicate (the same seeds); across tasks the statistics are those of
    :func:`comparisons` (Wilcoxon over tasks, bootstrap interval, Holm over every row of this
    table, one family). One row per contrast, treatment condition and control (``best by dev``
    or each control condition), with both arms' parameter counts and flags as in comparisons;
    ``control_cells`` names the control chosen on each task.
    """
    from ablate.stats import comparison_table, paired_comparison

    columns = ["comparison", "contrast", "treatment", "control", "control_cells", *STAT_COLUMNS,
               *SIZE_COLUMNS]
    pairs = contrast_pairs(reps, cell_table, patterns)
    usable = _usable(reps)
    if pairs.empty or usable.empty:
        return pd.DataFrame(columns=columns)
    scores = usable.pivot_table(index="cell", columns="seed", values="test_score")
    results, meta = {}, []
    for (name, treatment, control), group in pairs.groupby(
            ["contrast", "treatment", "control"], sort=False):
        group = group[group["treatment_cell"].isin(scores.index)
                      & group["control_cell"].isin(scores.index)]
        if group.empty:
            continue
        a = scores.loc[group["treatment_cell"]].set_axis(group["task"], axis=0)
        b = scores.loc[group["control_cell"]].set_axis(group["task"], axis=0)
        seeds = a.columns[(a.notna().any(axis=0) & b.notna().any(axis=0)).to_numpy()]
        a, b = a[seeds], b[seeds]
        keep = (a.notna().all(axis=1) & b.notna().all(axis=1)).to_numpy()
        if keep.sum() == 0 or len(seeds) == 0:
            continue
        key = f"{name}: {treatment} vs {control}"
        results[key] = paired_comparison(a[keep].to_numpy(), b[keep].to_numpy(), seed=seed)
        kept = group[keep]
        mine = usable[usable["cell"].isin(kept["treatment_cell"]) & usable["seed"].isin(seeds)]
        theirs = usable[usable["cell"].isin(kept["control_cell"]) & usable["seed"].isin(seeds)]
        chosen = "; ".join(f"{task}: {cell}" for task, cell in
                           zip(kept["task"], kept["control_cell"], strict=True))
        meta.append({"comparison": key, "contrast": name, "treatment": treatment,
                     "control": control, "control_cells": chosen,
                     **_size_columns(mine, theirs)})
    if not results:
        return pd.DataFrame(columns=columns)
    table = comparison_table(results, alpha=alpha)
    return pd.DataFrame(meta).merge(table, on="comparison")[
        [*columns, "n_replicates", "note"]]


# --- the floor, the caveats and the pretraining corpora --------------------------------------


def kmer_floor(cell_table: pd.DataFrame) -> pd.DataFrame:
    """Per task, the baseline cells (the k-mer floor) with their test and best dev score."""
    columns = ["task", "cell", "metric", "test_score", "best_dev_score"]
    if cell_table.empty or "family" not in cell_table:
        return pd.DataFrame(columns=columns)
    floor = cell_table[cell_table["family"] == Family.BASELINE].copy()
    if "test_score" not in floor:
        floor["test_score"] = np.nan
    return floor[columns].sort_values(["task", "cell"]).reset_index(drop=True)


def caveats(study_runs: pd.DataFrame) -> pd.DataFrame:
    """Per task: what its data lets it measure (``Tag.CAVEAT`` on its cell runs) and the
    figures behind that (the cell runs' metrics named ``caveat_...``)."""
    columns = ["task", "caveat", "figures"]
    if study_runs.empty:
        return pd.DataFrame(columns=columns)
    own = study_runs[_column(study_runs, STAGE) == Stage.CELL]
    figures = [c for c in own.columns if c.startswith(metric_column(CAVEAT_PREFIX))]
    rows = []
    for task, group in own.groupby(TASK, sort=True):
        texts = [t for t in dict.fromkeys(_text(group, tag_column(Tag.CAVEAT))) if t]
        numbers = {c.removeprefix(metric_column("")): group[c].dropna().iloc[0]
                   for c in figures if group[c].notna().any()}
        if texts or numbers:
            rows.append({"task": task, "caveat": " ".join(texts),
                         "figures": ", ".join(f"{k} = {v:.4g}" for k, v in numbers.items())})
    return pd.DataFrame(rows, columns=columns)


def pretraining_runs(tracking_uri: str, run_ids: Sequence[str]) -> pd.DataFrame:
    """The pretraining runs a sweep used, one row each, with columns as ``mlflow.search_runs``
    names them (``run_id``, ``tags.<Tag>``, ``metrics.<name>``)."""
    client = client_for(tracking_uri)
    rows = []
    for run_id in run_ids:
        data = client.get_run(run_id).data
        rows.append({"run_id": run_id,
                     **{tag_column(k): v for k, v in data.tags.items()},
                     **{metric_column(k): v for k, v in data.metrics.items()}})
    return pd.DataFrame(rows)


def _exposure_key(name: str) -> tuple[str, str]:
    """(task, split) of an exposure metric's name after its prefix: ``<task>/<split>`` or just
    ``<task>`` (task names hold a '/' themselves, e.g. ``tf/0``)."""
    task, _, split = name.rpartition("/")
    return (task, split) if task and split in ("dev", "test") else (name, "")


def leakage(pretrain_runs: pd.DataFrame) -> pd.DataFrame:
    """Per pretraining run: its corpus size, the sequences removed from it as leaked (equal to,
    containing or contained in a study task's dev/test sequence or its reverse complement) and,
    per task, how many of that task's dev/test sequences the corpus held before filtering
    (metrics ``exposure/<task>`` or ``exposure/<task>/<split>``).

    An external checkpoint was pretrained elsewhere on a corpus this study never saw:
    ``exposure`` is ``"unknown"`` for it.
    """
    columns = ["run_id", "name", "kind", "corpus_sequences", "leaked_removed", "exposure"]
    if pretrain_runs.empty:
        return pd.DataFrame(columns=columns)
    prefix = metric_column(EXPOSURE_PREFIX)
    exposure_cols = sorted(c for c in pretrain_runs.columns if c.startswith(prefix))
    kinds = _text(pretrain_runs, tag_column(Tag.PRETRAIN_KIND))
    names = _text(pretrain_runs, tag_column(Tag.PRETRAIN_NAME))
    rows = []
    for (_, run), kind, name in zip(pretrain_runs.iterrows(), kinds, names, strict=True):
        external = kind == EXTERNAL_KIND
        counts: dict[str, list[str]] = {}
        for c in exposure_cols:
            if pd.notna(run[c]):
                task, split = _exposure_key(c.removeprefix(prefix))
                counts.setdefault(task, []).append(f"{int(run[c])} {split}".strip())
        rows.append({
            "run_id": run["run_id"], "name": name or run["run_id"], "kind": kind or "ablate",
            "corpus_sequences": _number(run.get(metric_column(MetricName.CORPUS_SEQUENCES))),
            "leaked_removed": _number(run.get(metric_column(MetricName.LEAKED_REMOVED))),
            "exposure": ("unknown" if external else
                         "; ".join(f"{t}: {', '.join(n)}" for t, n in counts.items())
                         or "not recorded"),
        })
    return pd.DataFrame(rows, columns=columns)


# --- cost -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PretrainCost:
    run_id: str
    device_hours: float
    flops: float


def pretrain_costs(tracking_uri: str, run_ids: list[str]) -> dict[str, PretrainCost]:
    client = client_for(tracking_uri)
    out = {}
    for run_id in run_ids:
        metrics = client.get_run(run_id).data.metrics
        out[run_id] = PretrainCost(run_id, float(metrics.get(MetricName.DEVICE_HOURS, 0.0)),
                                   float(metrics.get(MetricName.FLOPS, 0.0)))
    return out


def cost_benefit(study_runs: pd.DataFrame, costs: dict[str, PretrainCost]) -> pd.DataFrame:
    """Per cell and amortisation rule: mean test score against total device-hours and FLOPs.

    Fine-tuning cost is every search trial plus every replicate of the cell. Pretraining cost is
    charged per rule: ``none`` (0), ``per-task`` (divided by the number of tasks whose cells use
    that pretraining run) or ``full``. ``pareto`` marks cells no other cell beats on both cost
    and accuracy under the same rule. Baseline cells (the k-mer floor) are included, with their
    ``family``.
    """
    from ablate.stats import AMORTISATION_RULES, amortised_cost, pareto_front

    reps = replicates(study_runs)
    staged = study_runs[_column(study_runs, STAGE).isin([Stage.TRIAL, Stage.REPLICATE])]
    link = _column(staged, PRETRAIN_RUN, None)
    tasks_using = staged.assign(link=link).dropna(subset=["link"]).groupby("link")[
        TASK].nunique().to_dict()
    described = _describe(staged)
    _, metric = _score(staged, BEST_DEV_SCORE, BEST_DEV_MCC)
    rows = []
    for cell, group in staged.groupby(CELL):
        run_id = _column(group, PRETRAIN_RUN, None).dropna()
        run_id = run_id.iloc[0] if len(run_id) else None
        pre = costs.get(run_id) if run_id else None
        cell_reps = reps[reps["cell"] == cell]
        for rule in AMORTISATION_RULES:
            share = amortised_cost(1.0, tasks_using.get(run_id, 1), rule) if pre else 0.0
            rows.append({
                "cell": cell,
                **_cell_values(group),
                "family": described.loc[group.index[0], "family"],
                "metric": (cell_reps["metric"].iloc[0] if len(cell_reps)
                           else metric.loc[group.index[0]]),
                "rule": rule,
                "test_score": (float(cell_reps["test_score"].mean()) if len(cell_reps)
                               else np.nan),
                "test_mcc": float(cell_reps["test_mcc"].mean()) if len(cell_reps) else np.nan,
                "finetune_device_hours": float(_column(group, DEVICE_HOURS).sum()),
                "finetune_flops": float(_column(group, FLOPS).sum()),
                "pretrain_device_hours": pre.device_hours * share if pre else 0.0,
                "pretrain_flops": pre.flops * share if pre else 0.0,
            })
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame["device_hours"] = frame["finetune_device_hours"] + frame["pretrain_device_hours"]
    frame["flops"] = frame["finetune_flops"] + frame["pretrain_flops"]
    frame["pareto"] = False
    for _, idx in frame.groupby(["rule", "task"]).groups.items():
        sub = frame.loc[idx]
        ok = sub["test_score"].notna()
        if ok.any():
            mask = pareto_front(sub.loc[ok, "device_hours"].to_numpy(),
                                sub.loc[ok, "test_score"].to_numpy())
            frame.loc[sub.index[ok.to_numpy()], "pareto"] = mask
    return frame


def cost_to_reach(trial_group: pd.DataFrame, target: float) -> float | None:
    """Device-hours a cell's search spent, in trial order, until a trial reached ``target``."""
    ordered = trial_group.sort_values("start_time")
    spent = _column(ordered, DEVICE_HOURS).fillna(0.0).cumsum()
    reached = _score(ordered, BEST_DEV_SCORE, BEST_DEV_MCC)[0] >= target
    return float(spent[reached].iloc[0]) if reached.any() else None


def break_even(trial_runs: pd.DataFrame, costs: dict[str, PretrainCost]) -> pd.DataFrame:
    """For each pretrained cell: fine-tuning tasks needed before its pretraining pays off.

    Within one task, architecture and tokenizer: the pretrained cell's search reached its best
    dev score after spending ``f`` device-hours; the from-scratch cell's search needed ``s``
    device-hours to reach that same dev score. Pretraining (``P`` device-hours) pays off once
    ``P / n + f <= s`` (``stats.break_even_tasks``). ``verdict`` says "never" when ``f >= s``
    and "scratch never matched" when no from-scratch trial reached that accuracy in the data.
    """
    from ablate.stats import break_even_tasks

    columns = ["architecture", "tokenizer", "pretraining", "task", "metric", "target_dev_score",
               "pretrained_cost", "scratch_cost", "pretrain_cost", "break_even_tasks", "verdict"]
    rows = []
    keys = [tag_column(Tag.ARCHITECTURE), tag_column(Tag.TOKENIZER), TASK]
    pretraining = tag_column(Tag.PRETRAINING)
    if trial_runs.empty:
        return pd.DataFrame(columns=columns)
    for (arch, tok, task), group in trial_runs.groupby(keys):
        scratch = group[group[pretraining] == "none"]
        for pre, pre_group in group.groupby(pretraining):
            run_id = _column(pre_group, PRETRAIN_RUN, None).dropna()
            if pre == "none" or scratch.empty or not len(run_id) or run_id.iloc[0] not in costs:
                continue
            score, metric = _score(pre_group, BEST_DEV_SCORE, BEST_DEV_MCC)
            target = float(score.max())
            mine = cost_to_reach(pre_group, target)
            theirs = cost_to_reach(scratch, target)
            pretrain = costs[run_id.iloc[0]].device_hours
            if theirs is None:
                tasks, verdict = None, "scratch never matched"
            else:
                tasks = break_even_tasks(pretrain, mine, theirs)
                verdict = "never" if tasks is None else f"after {tasks} tasks"
            rows.append({"architecture": arch, "tokenizer": tok, "pretraining": pre,
                         "task": task, "metric": metric.iloc[0], "target_dev_score": target,
                         "pretrained_cost": mine, "scratch_cost": theirs,
                         "pretrain_cost": pretrain, "break_even_tasks": tasks,
                         "verdict": verdict})
    return pd.DataFrame(rows, columns=columns)


def tuning_curves(trial_runs: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per cell: expected best dev score after n trials (n = 1..trials), from its trial scores."""
    from ablate.stats import expected_max_curve

    curves = {}
    if trial_runs.empty:
        return curves
    score = _score(trial_runs, BEST_DEV_SCORE, BEST_DEV_MCC)[0]
    for cell, group in trial_runs.groupby(CELL):
        scores = score.loc[group.index].dropna().to_numpy()
        if len(scores):
            curves[cell] = expected_max_curve(scores)
    return curves
