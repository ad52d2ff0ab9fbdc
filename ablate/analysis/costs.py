"""Cost: pretraining costs, cost-benefit, break-even and tuning curves."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ablate.analysis.columns import (
    BEST_DEV_MCC,
    BEST_DEV_SCORE,
    CELL,
    DEVICE_HOURS,
    FLOPS,
    PRETRAIN_RUN,
    STAGE,
    TASK,
    _cell_values,
    _column,
    _describe,
    _score,
)
from ablate.analysis.tables import (
    replicates,
)
from ablate.tracking.reader import client_for
from ablate.tracking.schema import (
    MetricName,
    Stage,
    Tag,
    tag_column,
)

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
