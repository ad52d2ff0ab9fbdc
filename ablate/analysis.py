"""Read a study back from MLflow as DataFrames, and the comparisons built on them.

For notebook users, each function returns a DataFrame (the report is built from the same ones):
``runs(tracking_uri, study)`` every run of the latest sweep; ``search_trials(runs)`` its search
trials; ``cells(trials, runs)`` the budget table, one row per cell; ``replicates(runs)`` one row
per test run; ``comparisons(replicates)`` paired tests along each axis, Holm-adjusted;
``cost_benefit(runs, pretrain_costs(...))`` test MCC against device-hours and FLOPs with each
amortisation rule; ``break_even`` and ``tuning_curves``. Column names follow
``ablate.tracking.schema``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ablate.models.registry import CONVOLUTIONAL
from ablate.tracking.reader import client_for
from ablate.tracking.reader import latest_sweep as latest_sweep  # re-exported for notebooks
from ablate.tracking.reader import runs as runs  # re-exported for notebooks
from ablate.tracking.schema import (
    MetricName,
    Outcome,
    Stage,
    Tag,
    metric_column,
    param_column,
    tag_column,
)

AXES = ["architecture", "pretraining", "tokenizer"]
CELL_COLUMNS = [*AXES, "task"]
# The tag of each cell column.
CELL_TAGS = {"architecture": Tag.ARCHITECTURE, "pretraining": Tag.PRETRAINING,
             "tokenizer": Tag.TOKENIZER, "task": Tag.TASK}
COLLAPSE_MCC = 0.05  # a replicate whose test MCC is below this has collapsed

STAGE = tag_column(Tag.STAGE)
OUTCOME = tag_column(Tag.OUTCOME)
CELL = tag_column(Tag.CELL)
TASK = tag_column(Tag.TASK)
PRETRAIN_RUN = tag_column(Tag.PRETRAIN_RUN_ID)
BEST_DEV_MCC = metric_column(MetricName.BEST_DEV_MCC)
DEVICE_HOURS = metric_column(MetricName.DEVICE_HOURS)
FLOPS = metric_column(MetricName.FLOPS)


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


def cells(trial_runs: pd.DataFrame, replicate_runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """The budget table: one row per cell with its trials' outcomes, best dev MCC and cost."""
    columns = ["cell", *CELL_COLUMNS, "trials", "completed", "pruned", "failed", "max_epochs",
               "best_dev_mcc", "best_trial", "best_params", "wall_seconds", "flops",
               "device_hours"]
    if trial_runs.empty:
        return pd.DataFrame(columns=columns)
    param_cols = [c for c in trial_runs.columns if c.startswith(param_column(""))]
    rows = []
    for cell, group in trial_runs.groupby(CELL, sort=True):
        outcome = _column(group, OUTCOME, "running").fillna("running")
        scores = _column(group, BEST_DEV_MCC)
        best = group.loc[scores.idxmax()] if scores.notna().any() else None
        rows.append({
            "cell": cell,
            **_cell_values(group),
            "trials": len(group),
            "completed": int((outcome == Outcome.COMPLETED).sum()),
            "pruned": int((outcome == Outcome.PRUNED).sum()),
            "failed": int((outcome == Outcome.FAILED).sum()),
            "max_epochs": int(pd.to_numeric(_column(group, param_column("max_epochs")),
                                             errors="coerce").max()),
            "best_dev_mcc": float(scores.max()) if best is not None else np.nan,
            "best_trial": best[tag_column(Tag.TRIAL_ID)] if best is not None else "",
            "best_params": ({c.removeprefix(param_column("")): best[c] for c in param_cols
                             if pd.notna(best[c])} if best is not None else {}),
            "wall_seconds": float(_column(group, metric_column(MetricName.WALL_SECONDS)).sum()),
            "flops": float(_column(group, FLOPS).sum()),
            "device_hours": float(_column(group, DEVICE_HOURS).sum()),
        })
    table = pd.DataFrame(rows, columns=columns)
    if replicate_runs is not None and not replicate_runs.empty:
        reps = replicates(replicate_runs)
        summary = reps.groupby("cell").agg(
            replicates=("seed", "size"),
            collapsed=("collapsed", "sum"),
            replicate_failures=("failed", "sum"),
            test_mcc=("test_mcc", "mean"),
            replicate_device_hours=("device_hours", "sum"),
        )
        table = table.merge(summary, left_on="cell", right_index=True, how="left")
    return table


def budget_parity(cell_table: pd.DataFrame) -> dict[str, bool]:
    """Per cell: whether its budget (trials run, max epochs) equals the study's most common."""
    if cell_table.empty:
        return {}
    budget = list(zip(cell_table["trials"], cell_table["max_epochs"], strict=True))
    common = max(set(budget), key=budget.count)
    return {cell: b == common for cell, b in zip(cell_table["cell"], budget, strict=True)}


def replicates(study_runs: pd.DataFrame) -> pd.DataFrame:
    """One row per replicate (test) run: its cell, seed, test MCC and whether it collapsed."""
    reps = study_runs[(_column(study_runs, STAGE) == Stage.REPLICATE)
                      & (_column(study_runs, OUTCOME) != Outcome.LOST)]
    frame = pd.DataFrame({
        "cell": reps[CELL],
        **{col: reps[tag_column(tag)] for col, tag in CELL_TAGS.items()},
        "seed": pd.to_numeric(_column(reps, tag_column(Tag.REPLICATE_SEED)), errors="coerce"),
        "test_mcc": _column(reps, metric_column(MetricName.TEST_MCC)),
        "dev_mcc": _column(reps, BEST_DEV_MCC),
        "device_hours": _column(reps, DEVICE_HOURS),
        "flops": _column(reps, FLOPS),
        "failed": _column(reps, OUTCOME) == Outcome.FAILED,
    })
    frame["collapsed"] = ~frame["failed"] & ~(frame["test_mcc"] >= COLLAPSE_MCC)
    return frame.reset_index(drop=True)


def _comparison_pairs(values: list[str], axis: str) -> list[tuple[str, str]]:
    """(treatment, baseline) pairs along one axis, oriented to answer the study's questions."""
    if axis == "pretraining":
        return [(v, "none") for v in values if v != "none" and "none" in values]
    if axis == "architecture":
        pairs = [("transformer", v) for v in values if v in CONVOLUTIONAL]
        if "transformer" not in values:
            pairs = list(itertools.combinations(sorted(values), 2))
        return pairs
    if axis == "tokenizer":
        bpe = [v for v in values if v.startswith("bpe")]
        return [(b, v) for b in bpe for v in values if not v.startswith("bpe")] or list(
            itertools.combinations(sorted(values), 2)
        )
    return list(itertools.combinations(sorted(values), 2))


def comparisons(reps: pd.DataFrame, *, seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """Paired comparisons along each axis, the other two axes held fixed, across tasks.

    Each comparison pairs the two conditions task by task and replicate by replicate (the same
    seeds); collapsed replicates count with their (near-zero) MCC, failed ones are left out of
    that pair. Wilcoxon signed-rank across tasks, Holm over every comparison of the report.
    """
    from ablate.stats import comparison_table, paired_comparison

    usable = reps[~reps["failed"] & reps["test_mcc"].notna()]
    results, meta = {}, []
    for axis in AXES:
        others = [a for a in AXES if a != axis]
        for fixed, group in usable.groupby(others, sort=True):
            values = sorted(group[axis].unique())
            for treatment, baseline in _comparison_pairs(values, axis):
                a = group[group[axis] == treatment].pivot_table(
                    index="task", columns="seed", values="test_mcc")
                b = group[group[axis] == baseline].pivot_table(
                    index="task", columns="seed", values="test_mcc")
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
                meta.append({"comparison": name, "axis": axis, "treatment": treatment,
                             "baseline": baseline, **dict(zip(others, fixed, strict=True))})
    if not results:
        return pd.DataFrame(columns=["comparison", "axis", "treatment", "baseline",
                                     "mean_difference", "ci_low", "ci_high", "p_value",
                                     "p_holm", "verdict", "prob_improvement", "n_tasks"])
    table = comparison_table(results, alpha=alpha)
    return pd.DataFrame(meta).merge(table, on="comparison")


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
    """Per cell and amortisation rule: mean test MCC against total device-hours and FLOPs.

    Fine-tuning cost is every search trial plus every replicate of the cell. Pretraining cost is
    charged per rule: ``none`` (0), ``per-task`` (divided by the number of tasks whose cells use
    that pretraining run) or ``full``. ``pareto`` marks cells no other cell beats on both cost
    and accuracy under the same rule.
    """
    from ablate.stats import AMORTISATION_RULES, amortised_cost, pareto_front

    reps = replicates(study_runs)
    staged = study_runs[_column(study_runs, STAGE).isin([Stage.TRIAL, Stage.REPLICATE])]
    link = _column(staged, PRETRAIN_RUN, None)
    tasks_using = staged.assign(link=link).dropna(subset=["link"]).groupby("link")[
        TASK].nunique().to_dict()
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
                "rule": rule,
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
        ok = sub["test_mcc"].notna()
        if ok.any():
            mask = pareto_front(sub.loc[ok, "device_hours"].to_numpy(),
                                sub.loc[ok, "test_mcc"].to_numpy())
            frame.loc[sub.index[ok.to_numpy()], "pareto"] = mask
    return frame


def cost_to_reach(trial_group: pd.DataFrame, target: float) -> float | None:
    """Device-hours a cell's search spent, in trial order, until a trial reached ``target``."""
    ordered = trial_group.sort_values("start_time")
    spent = _column(ordered, DEVICE_HOURS).fillna(0.0).cumsum()
    reached = _column(ordered, BEST_DEV_MCC) >= target
    return float(spent[reached].iloc[0]) if reached.any() else None


def break_even(trial_runs: pd.DataFrame, costs: dict[str, PretrainCost]) -> pd.DataFrame:
    """For each pretrained cell: fine-tuning tasks needed before its pretraining pays off.

    Within one task, architecture and tokenizer: the pretrained cell's search reached its best
    dev MCC after spending ``f`` device-hours; the from-scratch cell's search needed ``s``
    device-hours to reach that same dev MCC. Pretraining (``P`` device-hours) pays off once
    ``P / n + f <= s`` (``stats.break_even_tasks``). ``verdict`` says "never" when ``f >= s``
    and "scratch never matched" when no from-scratch trial reached that accuracy in the data.
    """
    from ablate.stats import break_even_tasks

    columns = ["architecture", "tokenizer", "pretraining", "task", "target_dev_mcc",
               "pretrained_cost", "scratch_cost", "pretrain_cost", "break_even_tasks", "verdict"]
    rows = []
    keys = [tag_column(Tag.ARCHITECTURE), tag_column(Tag.TOKENIZER), TASK]
    pretraining = tag_column(Tag.PRETRAINING)
    for (arch, tok, task), group in trial_runs.groupby(keys):
        scratch = group[group[pretraining] == "none"]
        for pre, pre_group in group.groupby(pretraining):
            run_id = _column(pre_group, PRETRAIN_RUN, None).dropna()
            if pre == "none" or scratch.empty or not len(run_id) or run_id.iloc[0] not in costs:
                continue
            target = float(_column(pre_group, BEST_DEV_MCC).max())
            mine = cost_to_reach(pre_group, target)
            theirs = cost_to_reach(scratch, target)
            pretrain = costs[run_id.iloc[0]].device_hours
            if theirs is None:
                tasks, verdict = None, "scratch never matched"
            else:
                tasks = break_even_tasks(pretrain, mine, theirs)
                verdict = "never" if tasks is None else f"after {tasks} tasks"
            rows.append({"architecture": arch, "tokenizer": tok, "pretraining": pre,
                         "task": task, "target_dev_mcc": target, "pretrained_cost": mine,
                         "scratch_cost": theirs, "pretrain_cost": pretrain,
                         "break_even_tasks": tasks, "verdict": verdict})
    return pd.DataFrame(rows, columns=columns)


def tuning_curves(trial_runs: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per cell: expected best dev MCC after n trials (n = 1..trials), from its trial scores."""
    from ablate.stats import expected_max_curve

    curves = {}
    for cell, group in trial_runs.groupby(CELL):
        scores = _column(group, BEST_DEV_MCC).dropna().to_numpy()
        if len(scores):
            curves[cell] = expected_max_curve(scores)
    return curves
