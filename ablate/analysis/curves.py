"""Tuning curves over trials and over compute, and each cell's best at equal compute."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from ablate.analysis.columns import (
    BEST_DEV_MCC,
    BEST_DEV_SCORE,
    CELL,
    OUTCOME,
    _cell_values,
    _column,
    _describe,
    _score,
    _text,
)
from ablate.analysis.costs import CPU, GPU, HOURS, _in_start_order, run_costs
from ablate.tracking.schema import (
    Family,
    Outcome,
    Tag,
    tag_column,
)

# --- tuning curves: over trials and over compute ---------------------------------------------


def tuning_curves(trial_runs: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per cell: expected best dev score after n trials (n = 1..completed trials), from its
    *completed* trials' scores only (a pruned trial's score is truncated, a failed one has
    none); ``compute_curves`` shows every trial against what it cost."""
    from ablate.stats import expected_max_curve

    curves = {}
    if trial_runs.empty:
        return curves
    score = _score(trial_runs, BEST_DEV_SCORE, BEST_DEV_MCC)[0]
    completed = _column(trial_runs, OUTCOME, None) == Outcome.COMPLETED
    for cell, group in trial_runs[completed].groupby(CELL):
        scores = score.loc[group.index].dropna().to_numpy()
        if len(scores):
            curves[cell] = expected_max_curve(scores)
    return curves


CURVE_COLUMNS = ["cell", "architecture", "pretraining", "tokenizer", "task", "family",
                 "metric", "trial", "order", "outcome", "pruned", "dev_score",
                 "best_dev_score_so_far", "cumulative_flops", "cumulative_cpu_core_hours",
                 "cumulative_gpu_hours", "cumulative_price"]


def compute_curves(trial_runs: pd.DataFrame,
                   prices: Mapping[str, float] | None = None) -> pd.DataFrame:
    """Per cell, one row per search trial in start order: the best dev score so far against
    what the search had spent by the end of that trial.

    Every trial counts (completed, pruned, failed): each spent compute. ``dev_score`` is the
    trial's own best dev score (a pruned trial's is truncated: ``pruned`` marks it),
    ``best_dev_score_so_far`` the best up to it (NaN before any score). Cumulative cost:
    ``cumulative_flops``, ``cumulative_cpu_core_hours``, ``cumulative_gpu_hours`` (apart) and
    ``cumulative_price`` (NaN from the first unpriced trial on; priced as ``run_costs``).
    """
    if trial_runs.empty:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    run_cost = run_costs(trial_runs, prices)
    score, metric = _score(trial_runs, BEST_DEV_SCORE, BEST_DEV_MCC)
    described = _describe(trial_runs)
    outcome = _text(trial_runs, OUTCOME)
    trial_id = _text(trial_runs, tag_column(Tag.TRIAL_ID))
    parts = []
    for _, group in trial_runs.groupby(CELL, sort=True):
        ordered = _in_start_order(group).index
        cost = run_cost.loc[ordered]
        part = pd.DataFrame({
            "cell": group.loc[ordered, CELL],
            **_cell_values(group),
            "family": described.loc[ordered, "family"],
            "metric": metric.loc[ordered],
            "trial": trial_id.loc[ordered],
            "order": np.arange(1, len(ordered) + 1),
            "outcome": outcome.loc[ordered],
            "pruned": outcome.loc[ordered] == Outcome.PRUNED,
            "dev_score": score.loc[ordered],
            "best_dev_score_so_far": score.loc[ordered].cummax().ffill(),
            "cumulative_flops": cost["flops"].cumsum(),
            "cumulative_cpu_core_hours": cost[HOURS[CPU]].cumsum(),
            "cumulative_gpu_hours": cost[HOURS[GPU]].cumsum(),
            "cumulative_price": cost["price"].cumsum(skipna=False),
        }, index=ordered)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)[CURVE_COLUMNS]


EQUAL_COMPUTE_COLUMNS = ["task", "cell", "architecture", "pretraining", "tokenizer", "family",
                         "metric", "budget_flops", "budget_cell", "total_flops", "trials",
                         "trials_within_budget", "best_dev_score_at_budget", "best_dev_score"]


def equal_compute(trial_runs: pd.DataFrame) -> pd.DataFrame:
    """Per task, every cell's best dev score at an equal compute budget, one row per cell.

    The budget of a task (``budget_flops``) is the smallest total search FLOPs among its cells
    (``budget_cell`` names it); baseline cells (the k-mer floor, whose searches cost next to
    nothing) and cells that logged no FLOPs do not set it, unless no other cell can. Each
    cell's ``best_dev_score_at_budget`` is its best dev score over the trials that ended within
    the budget, counted in trial start order by cumulative FLOPs (a trial that crosses the
    budget does not count); NaN where even its first trial exceeds it. ``best_dev_score``
    beside it is the best over all the cell's trials: the equal-trials answer.
    """
    curves = compute_curves(trial_runs)
    if curves.empty:
        return pd.DataFrame(columns=EQUAL_COMPUTE_COLUMNS)
    rows = []
    for task, per_task in curves.groupby("task", sort=True):
        totals = per_task.groupby("cell")["cumulative_flops"].last()
        families = per_task.groupby("cell")["family"].first()
        setters = totals[(families != Family.BASELINE) & (totals > 0)]
        if setters.empty:
            setters = totals[totals > 0]
        budget = float(setters.min()) if len(setters) else np.nan
        budget_cell = setters.idxmin() if len(setters) else ""
        for cell, curve in per_task.groupby("cell", sort=True):
            within = curve[curve["cumulative_flops"] <= budget]
            first = curve.iloc[0]
            rows.append({
                "task": task, "cell": cell,
                **{c: first[c] for c in ("architecture", "pretraining", "tokenizer", "family",
                                         "metric")},
                "budget_flops": budget, "budget_cell": budget_cell,
                "total_flops": float(totals[cell]), "trials": len(curve),
                "trials_within_budget": len(within),
                "best_dev_score_at_budget": (float(within["dev_score"].max()) if len(within)
                                             else np.nan),
                "best_dev_score": float(curve["dev_score"].max()),
            })
    return pd.DataFrame(rows, columns=EQUAL_COMPUTE_COLUMNS)
