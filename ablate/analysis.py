"""Read a study back from MLflow as DataFrames, and the comparisons built on them.

For notebook users: ``load(tracking_uri, study)`` returns a ``StudyData`` whose methods give
``cells()`` (the budget table, one row per cell), ``replicates()`` (one row per test run),
``comparisons()`` (paired tests along each axis, Holm-adjusted) and ``cost_benefit()`` (test MCC
against device-hours and FLOPs with each amortisation rule). The report is built from the same
functions.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ablate.errors import AblateError

TAG = "tags.ablate."
AXES = ["architecture", "pretraining", "tokenizer"]
CELL_COLUMNS = [*AXES, "task"]
COLLAPSE_MCC = 0.05  # a replicate whose test MCC is below this has collapsed
CONVOLUTIONAL = ("convnova", "unet", "cnn")


def _client(tracking_uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri)


def latest_sweep(tracking_uri: str, study: str) -> tuple[str, str]:
    """(experiment id, sweep id) of the study's most recent launch in this tracking store."""
    client = _client(tracking_uri)
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        raise AblateError(
            f"study {study!r} has no MLflow experiment at {tracking_uri}; run `ablate run` first "
            "or pass the --tracking-uri the study used"
        )
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.`ablate.stage` = 'cell'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise AblateError(f"study {study!r} at {tracking_uri} has no cell runs yet")
    return experiment.experiment_id, runs[0].data.tags["ablate.sweep"]


def runs(tracking_uri: str, study: str, sweep: str | None = None) -> pd.DataFrame:
    """Every run of a sweep (default: the latest): cells, trials and replicates."""
    import mlflow

    experiment_id, latest = latest_sweep(tracking_uri, study)
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.`ablate.sweep` = '{sweep or latest}'",
        output_format="pandas",
        max_results=200_000,
    )


def search_trials(all_runs: pd.DataFrame) -> pd.DataFrame:
    """The search-trial runs among a sweep's runs, without those of trials lost when a driver
    was killed (``ablate.outcome=lost``: their slots were re-issued and run again)."""
    if all_runs.empty:
        return all_runs
    keep = (_column(all_runs, f"{TAG}stage") == "trial") & (
        _column(all_runs, f"{TAG}outcome") != "lost")
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
    param_cols = [c for c in trial_runs.columns if c.startswith("params.")]
    rows = []
    for cell, group in trial_runs.groupby(f"{TAG}cell", sort=True):
        outcome = _column(group, f"{TAG}outcome", "running").fillna("running")
        scores = _column(group, "metrics.best_dev_mcc")
        best = group.loc[scores.idxmax()] if scores.notna().any() else None
        rows.append({
            "cell": cell,
            **{col: group[f"{TAG}{col}"].iloc[0] for col in CELL_COLUMNS},
            "trials": len(group),
            "completed": int((outcome == "completed").sum()),
            "pruned": int((outcome == "pruned").sum()),
            "failed": int((outcome == "failed").sum()),
            "max_epochs": int(pd.to_numeric(_column(group, "params.max_epochs"),
                                             errors="coerce").max()),
            "best_dev_mcc": float(scores.max()) if best is not None else np.nan,
            "best_trial": best[f"{TAG}trial_id"] if best is not None else "",
            "best_params": ({c.removeprefix("params."): best[c] for c in param_cols
                             if pd.notna(best[c])} if best is not None else {}),
            "wall_seconds": float(_column(group, "metrics.wall_seconds").sum()),
            "flops": float(_column(group, "metrics.flops").sum()),
            "device_hours": float(_column(group, "metrics.device_hours").sum()),
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
    reps = study_runs[(_column(study_runs, f"{TAG}stage") == "replicate")
                      & (_column(study_runs, f"{TAG}outcome") != "lost")]
    frame = pd.DataFrame({
        "cell": reps[f"{TAG}cell"],
        **{col: reps[f"{TAG}{col}"] for col in CELL_COLUMNS},
        "seed": pd.to_numeric(_column(reps, f"{TAG}replicate_seed"), errors="coerce"),
        "test_mcc": _column(reps, "metrics.test_mcc"),
        "dev_mcc": _column(reps, "metrics.best_dev_mcc"),
        "device_hours": _column(reps, "metrics.device_hours"),
        "flops": _column(reps, "metrics.flops"),
        "failed": _column(reps, f"{TAG}outcome") == "failed",
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
    client = _client(tracking_uri)
    out = {}
    for run_id in run_ids:
        metrics = client.get_run(run_id).data.metrics
        out[run_id] = PretrainCost(run_id, float(metrics.get("device_hours", 0.0)),
                                   float(metrics.get("flops", 0.0)))
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
    staged = study_runs[_column(study_runs, f"{TAG}stage").isin(["trial", "replicate"])]
    link = _column(staged, f"{TAG}pretrain_run_id", None)
    tasks_using = staged.assign(link=link).dropna(subset=["link"]).groupby("link")[
        f"{TAG}task"].nunique().to_dict()
    rows = []
    for cell, group in staged.groupby(f"{TAG}cell"):
        run_id = _column(group, f"{TAG}pretrain_run_id", None).dropna()
        run_id = run_id.iloc[0] if len(run_id) else None
        pre = costs.get(run_id) if run_id else None
        cell_reps = reps[reps["cell"] == cell]
        for rule in AMORTISATION_RULES:
            share = amortised_cost(1.0, tasks_using.get(run_id, 1), rule) if pre else 0.0
            rows.append({
                "cell": cell,
                **{col: group[f"{TAG}{col}"].iloc[0] for col in CELL_COLUMNS},
                "rule": rule,
                "test_mcc": float(cell_reps["test_mcc"].mean()) if len(cell_reps) else np.nan,
                "finetune_device_hours": float(_column(group, "metrics.device_hours").sum()),
                "finetune_flops": float(_column(group, "metrics.flops").sum()),
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
    spent = _column(ordered, "metrics.device_hours").fillna(0.0).cumsum()
    reached = _column(ordered, "metrics.best_dev_mcc") >= target
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
    keys = [f"{TAG}architecture", f"{TAG}tokenizer", f"{TAG}task"]
    for (arch, tok, task), group in trial_runs.groupby(keys):
        scratch = group[group[f"{TAG}pretraining"] == "none"]
        for pre, pre_group in group.groupby(f"{TAG}pretraining"):
            run_id = _column(pre_group, f"{TAG}pretrain_run_id", None).dropna()
            if pre == "none" or scratch.empty or not len(run_id) or run_id.iloc[0] not in costs:
                continue
            target = float(_column(pre_group, "metrics.best_dev_mcc").max())
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
    for cell, group in trial_runs.groupby(f"{TAG}cell"):
        scores = _column(group, "metrics.best_dev_mcc").dropna().to_numpy()
        if len(scores):
            curves[cell] = expected_max_curve(scores)
    return curves
