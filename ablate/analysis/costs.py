"""Cost in one unit: per-run costs, pretraining costs, cost-benefit, break-even, compute curves.

CPU core-hours and GPU-hours are kept apart (``cpu_core_hours``, ``gpu_hours``) and never
added. What can be compared across devices is money (``price``: each run's own ``price``
metric, else its device-hours priced from the study's price table, matched to the device's
name by ``ablate.cost.price_for``) and FLOPs. Money that cannot be computed is NaN and the
``unpriced`` column says what lacked a price; it is never a partial sum.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

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
    _numeric,
    _score,
    _text,
)
from ablate.analysis.tables import (
    replicates,
)
from ablate.cost import GPU_PEAK_FLOPS, UNPRICED, match_device, price_for
from ablate.tracking.reader import client_for
from ablate.tracking.schema import (
    MetricName,
    Stage,
    Tag,
    metric_column,
    tag_column,
)

CPU, GPU = "cpu", "gpu"
HOURS = {CPU: "cpu_core_hours", GPU: "gpu_hours"}  # the device-hours column of each kind
DEVICE_TYPE = tag_column(Tag.DEVICE_TYPE)
DEVICE_NAME = tag_column(Tag.DEVICE_NAME)
PRICE = metric_column(MetricName.PRICE)
EXTERNAL = "external"  # Tag.PRETRAIN_KIND of an imported checkpoint
# Words in a device name that say it is a GPU (besides the names of the peak table).
GPU_WORDS = ("nvidia", "tesla", "geforce", "quadro", "radeon", "instinct", "gpu", "cuda")


# --- per-run costs ----------------------------------------------------------------------------


def names_a_gpu(device_name: str) -> bool:
    """Whether a device name is a GPU's (a peak-table part, or a GPU vendor's word)."""
    words = device_name.lower()
    return bool(device_name) and (match_device(GPU_PEAK_FLOPS, device_name) is not None
                                  or any(w in words for w in GPU_WORDS))


def device_kind(device_type: str, device_name: str, default: str = CPU) -> tuple[str, bool]:
    """(kind, assumed): a run's device kind from its tags. A run without a ``cpu``/``gpu``
    device type is a GPU run when its device name says so, else ``default``; ``assumed`` is
    True then."""
    kind = device_type.strip().lower()
    if kind in (CPU, GPU):
        return kind, False
    return (GPU if names_a_gpu(device_name) else default), True


def _describe_device(kind: str, name: str) -> str:
    return f"{kind} {name}" if name and name.lower() != kind else kind


def _money(own: float, hours: float, kind: str, name: str,
           prices: Mapping[str, float] | None) -> tuple[float, str, str]:
    """(money, price source, what is unpriced): a run's own price, else its hours priced."""
    if np.isfinite(own):
        return float(own), "run", ""
    if hours == 0:
        return 0.0, "", ""  # nothing was spent, nothing to price
    price, source = price_for(prices, kind, name)
    if price is None:
        return np.nan, UNPRICED, _describe_device(kind, name)
    return hours * price, source, ""


def run_costs(runs: pd.DataFrame, prices: Mapping[str, float] | None = None) -> pd.DataFrame:
    """Per run (same index): its device and what it cost, in each unit.

    Columns: ``device_type`` (``cpu``/``gpu``; a run without the tag counts as ``cpu`` unless
    its device name says GPU), ``device_type_assumed``, ``device_name``, ``cpu_core_hours`` and
    ``gpu_hours`` (the run's ``device_hours`` in the column of its kind, 0 in the other),
    ``flops``, ``price`` (the run's own ``price`` metric, else its device-hours times the
    matched price of ``prices``; NaN when unpriced), ``price_source`` (``run``, the matched
    key, ``unpriced``, or ``""`` for a run that spent nothing) and ``unpriced`` (the device
    that lacked a price, else ``""``). Missing device-hours and FLOPs count as 0.
    """
    hours = _numeric(runs, DEVICE_HOURS).fillna(0.0).to_numpy()
    own = _numeric(runs, PRICE).to_numpy()
    rows = []
    for spent, paid, kind_tag, name in zip(hours, own, _text(runs, DEVICE_TYPE),
                                           _text(runs, DEVICE_NAME), strict=True):
        kind, assumed = device_kind(kind_tag, name)
        money, source, missing = _money(paid, spent, kind, name, prices)
        rows.append({"device_type": kind, "device_type_assumed": assumed, "device_name": name,
                     HOURS[CPU]: spent if kind == CPU else 0.0,
                     HOURS[GPU]: spent if kind == GPU else 0.0,
                     "flops": 0.0, "price": money, "price_source": source, "unpriced": missing})
    frame = pd.DataFrame(rows, index=runs.index,
                         columns=["device_type", "device_type_assumed", "device_name",
                                  HOURS[CPU], HOURS[GPU], "flops", "price", "price_source",
                                  "unpriced"])
    frame["flops"] = _numeric(runs, FLOPS).fillna(0.0).to_numpy()
    return frame


def _join(parts) -> str:
    return "; ".join(sorted({p for p in parts if p}))


# --- pretraining ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PretrainCost:
    """What one pretraining run cost (its own, or an external checkpoint's declared cost).

    Attributes:
        run_id: Its MLflow run.
        device_hours: GPU-hours, or core-hours on CPU (by ``device_type``).
        flops: FLOPs; NaN where unknown (an external checkpoint declares none).
        device_type: ``"cpu"`` or ``"gpu"``.
        device_name: The device's name, for pricing ("" when not known).
        price: The money it cost, when known (its own ``price`` metric, or priced by
            ``pretrain_costs`` from a price table); None: price it from the study's table.
        price_source: Where ``price`` comes from (``"run"`` or a price-table key).
        external: An imported checkpoint with a declared cost.
        device_type_assumed: The run named no device type (own runs then count as CPU unless
            the device name says GPU, external checkpoints as GPU).
    """

    run_id: str
    device_hours: float
    flops: float = np.nan
    device_type: str = GPU
    device_name: str = ""
    price: float | None = None
    price_source: str = ""
    external: bool = False
    device_type_assumed: bool = False

    def hours(self) -> dict[str, float]:
        """Device-hours by kind: ``{"cpu_core_hours": ..., "gpu_hours": ...}``."""
        return {column: (self.device_hours if kind == self.device_type else 0.0)
                for kind, column in HOURS.items()}

    def money(self, prices: Mapping[str, float] | None = None) -> tuple[float, str]:
        """(money, source): ``price`` when known, else the device-hours priced from ``prices``;
        ``(nan, "unpriced")`` when neither."""
        if self.price is not None:
            return float(self.price), self.price_source or "run"
        money, source, _ = _money(np.nan, self.device_hours, self.device_type,
                                  self.device_name, prices)
        return money, source

    def describe(self) -> str:
        """The run and its device, as the ``unpriced`` column names it."""
        return f"pretraining {self.run_id} ({_describe_device(self.device_type, self.device_name)})"


def pretrain_costs(tracking_uri: str, run_ids: list[str],
                   prices: Mapping[str, float] | None = None) -> dict[str, PretrainCost]:
    """The cost of each pretraining run, read from MLflow.

    Device type and name come from the run's tags (an own run without a device type counts as
    CPU unless its device name says GPU; an external checkpoint without one as GPU), FLOPs and
    money from its ``flops`` and ``price`` metrics. With ``prices``, a run without its own
    price is priced here from the table (by device kind and name).
    """
    client = client_for(tracking_uri)
    out = {}
    for run_id in run_ids:
        data = client.get_run(run_id).data
        metrics, tags = data.metrics, data.tags
        external = tags.get(Tag.PRETRAIN_KIND, "") == EXTERNAL
        kind, assumed = device_kind(tags.get(Tag.DEVICE_TYPE, ""),
                                    tags.get(Tag.DEVICE_NAME, ""), GPU if external else CPU)
        cost = PretrainCost(
            run_id, float(metrics.get(MetricName.DEVICE_HOURS, 0.0)),
            float(metrics.get(MetricName.FLOPS, np.nan)), kind, tags.get(Tag.DEVICE_NAME, ""),
            price=metrics.get(MetricName.PRICE), price_source="run" if MetricName.PRICE in metrics
            else "", external=external, device_type_assumed=assumed)
        if cost.price is None and prices:
            money, source = cost.money(prices)
            if np.isfinite(money):
                cost = replace(cost, price=money, price_source=source)
        out[run_id] = cost
    return out


def _assumed_note(fine: pd.DataFrame, pre: PretrainCost | None, charged: bool) -> str:
    notes = []
    n = int(fine["device_type_assumed"].sum())
    if n:
        notes.append(f"{n} fine-tuning runs without a device type counted as "
                     f"{_join(fine.loc[fine['device_type_assumed'], 'device_type'])}")
    if pre is not None and charged and pre.device_type_assumed:
        notes.append(f"pretraining without a device type counted as {pre.device_type}")
    return "; ".join(notes)


# --- cost-benefit -----------------------------------------------------------------------------


def cost_benefit(study_runs: pd.DataFrame, costs: Mapping[str, PretrainCost], *,
                 prices: Mapping[str, float] | None = None) -> pd.DataFrame:
    """Per cell and amortisation rule: mean test score against money, FLOPs and device-hours.

    Fine-tuning cost is every search trial plus every replicate of the cell. Pretraining cost
    (money, FLOPs and device-hours alike) is charged per rule: ``none`` (0), ``per-task``
    (divided by the number of tasks whose cells use that pretraining run) or ``full``.

    Columns per unit, for ``finetune_``, ``pretrain_`` and the total: ``cpu_core_hours``,
    ``gpu_hours`` (kept apart, never added), ``flops`` and ``price`` (runs' own ``price``
    metrics, else priced from ``prices``; NaN when any part is unpriced, and ``unpriced``
    says what). A linked pretraining run missing from ``costs`` is unknown: NaN under
    ``per-task``/``full``. ``assumed_device_type`` says which runs named no device type.
    ``pareto`` marks cells no other cell of the same task and rule beats on both cost and
    score; ``pareto_axis`` says the cost it used: ``price`` where every point of that task is
    priced, else ``flops``. Baseline cells (the k-mer floor) are included, with their
    ``family``.
    """
    from ablate.stats import AMORTISATION_RULES, amortised_cost

    reps = replicates(study_runs)
    staged = study_runs[_column(study_runs, STAGE).isin([Stage.TRIAL, Stage.REPLICATE])]
    run_cost = run_costs(staged, prices)
    link = _column(staged, PRETRAIN_RUN, None)
    tasks_using = staged.assign(link=link).dropna(subset=["link"]).groupby("link")[
        TASK].nunique().to_dict()
    described = _describe(staged)
    _, metric = _score(staged, BEST_DEV_SCORE, BEST_DEV_MCC)
    units = [HOURS[CPU], HOURS[GPU], "flops", "price"]
    rows = []
    for cell, group in staged.groupby(CELL):
        fine = run_cost.loc[group.index]
        run_id = _column(group, PRETRAIN_RUN, None).dropna()
        run_id = run_id.iloc[0] if len(run_id) else None
        pre = costs.get(run_id) if run_id else None
        cell_reps = reps[reps["cell"] == cell]
        spent = {u: float(fine[u].sum(skipna=False)) for u in units}
        for rule in AMORTISATION_RULES:
            share = amortised_cost(1.0, tasks_using.get(run_id, 1), rule) if run_id else 0.0
            charged, missing = _pretrain_charge(run_id, pre, share, prices)
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
                **{f"finetune_{u}": spent[u] for u in units},
                **{f"pretrain_{u}": charged[u] for u in units},
                **{u: spent[u] + charged[u] for u in units},
                "unpriced": _join([*fine["unpriced"], missing]),
                "assumed_device_type": _assumed_note(fine, pre, share > 0),
            })
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    _mark_pareto(frame)
    return frame


def _pretrain_charge(run_id: str | None, pre: PretrainCost | None, share: float,
                     prices: Mapping[str, float] | None) -> tuple[dict[str, float], str]:
    """(pretraining cost charged per unit, what is unpriced) for one cell under one rule."""
    units = [HOURS[CPU], HOURS[GPU], "flops", "price"]
    if not run_id or share == 0:
        return dict.fromkeys(units, 0.0), ""
    if pre is None:
        return dict.fromkeys(units, np.nan), f"pretraining {run_id} (cost unknown)"
    money, source = pre.money(prices)
    full = {**pre.hours(), "flops": pre.flops, "price": money}
    return ({u: full[u] * share for u in units},
            pre.describe() if source == UNPRICED else "")


def _mark_pareto(frame: pd.DataFrame) -> None:
    from ablate.stats import pareto_front

    frame["pareto"] = False
    frame["pareto_axis"] = ""
    for _, idx in frame.groupby(["rule", "task"]).groups.items():
        sub = frame.loc[idx]
        scored = sub[sub["test_score"].notna()]
        axis = "price" if len(scored) and scored["price"].notna().all() else "flops"
        frame.loc[idx, "pareto_axis"] = axis
        ok = scored[scored[axis].notna()]
        if len(ok):
            mask = pareto_front(ok[axis].to_numpy(), ok["test_score"].to_numpy())
            frame.loc[ok.index, "pareto"] = mask


# --- break-even -------------------------------------------------------------------------------


def _in_start_order(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values("start_time", kind="stable") if "start_time" in frame else frame


def cost_to_reach(trial_group: pd.DataFrame, target: float,
                  cost: str = DEVICE_HOURS) -> float | None:
    """What a cell's search spent, in trial start order, until a trial reached ``target``.

    ``cost`` is the column to add up (any unit: ``metrics.device_hours``, ``metrics.flops``,
    or a per-run money column). None when no trial reached the target; NaN when a trial up to
    the one that did has no value in ``cost`` (the cost is then unknown).
    """
    ordered = _in_start_order(trial_group)
    spent = _numeric(ordered, cost).cumsum(skipna=False)
    reached = _score(ordered, BEST_DEV_SCORE, BEST_DEV_MCC)[0] >= target
    return float(spent[reached].iloc[0]) if reached.any() else None


def _break_even_in(unit: str, pretrain: float, mine: float | None,
                   theirs: float | None) -> tuple[int | None, str]:
    from ablate.stats import break_even_tasks

    if theirs is None:
        return None, "scratch never matched"
    if mine is None or not all(np.isfinite(x) for x in (pretrain, mine, theirs)):
        return None, "unpriced" if unit == "price" else "FLOPs unknown"
    tasks = break_even_tasks(pretrain, mine, theirs)
    return tasks, "never" if tasks is None else f"after {tasks} tasks"


def break_even(trial_runs: pd.DataFrame, costs: Mapping[str, PretrainCost], *,
               prices: Mapping[str, float] | None = None) -> pd.DataFrame:
    """For each pretrained cell: fine-tuning tasks needed before its pretraining pays off, in
    money and in FLOPs.

    Within one task, architecture and tokenizer: the pretrained cell's search reached its best
    dev score (``target_dev_score``) after spending ``f``; the from-scratch cell's search
    needed ``s`` to reach that same dev score; pretraining cost ``P``. Pretraining pays off
    once ``P / n + f <= s`` (``stats.break_even_tasks``). Each unit has its columns
    (``pretrained_<u>``, ``scratch_<u>``, ``pretrain_<u>``, ``break_even_tasks_<u>``,
    ``verdict_<u>`` for ``u`` in ``price``, ``flops``); money is each run's own ``price``,
    else priced from ``prices``. A verdict is ``after n tasks``, ``never`` (``f >= s``),
    ``scratch never matched`` (no from-scratch trial reached the target), ``unpriced`` (what
    lacked a price is in ``unpriced``) or ``FLOPs unknown`` (an external checkpoint declares
    no FLOPs); ``scratch_<u>`` is NaN when scratch never matched. Pretrained cells whose
    pretraining run is missing from ``costs`` are skipped.
    """
    units = ["price", "flops"]
    columns = ["architecture", "tokenizer", "pretraining", "task", "metric", "target_dev_score",
               *[f"{k}_{u}" for u in units for k in ("pretrained", "scratch", "pretrain",
                                                    "break_even_tasks", "verdict")],
               "unpriced"]
    if trial_runs.empty:
        return pd.DataFrame(columns=columns)
    run_cost = run_costs(trial_runs, prices)
    frame = trial_runs.assign(_price=run_cost["price"], _flops=run_cost["flops"])
    keys = [tag_column(Tag.ARCHITECTURE), tag_column(Tag.TOKENIZER), TASK]
    pretraining = tag_column(Tag.PRETRAINING)
    rows = []
    for (arch, tok, task), group in frame.groupby(keys):
        scratch = group[group[pretraining] == "none"]
        for pre, pre_group in group.groupby(pretraining):
            run_id = _column(pre_group, PRETRAIN_RUN, None).dropna()
            if pre == "none" or scratch.empty or not len(run_id) or run_id.iloc[0] not in costs:
                continue
            cost = costs[run_id.iloc[0]]
            score, metric = _score(pre_group, BEST_DEV_SCORE, BEST_DEV_MCC)
            target = float(score.max())
            money, source = cost.money(prices)
            row = {"architecture": arch, "tokenizer": tok, "pretraining": pre, "task": task,
                   "metric": metric.iloc[0], "target_dev_score": target}
            for unit, total in (("price", money), ("flops", cost.flops)):
                mine = cost_to_reach(pre_group, target, f"_{unit}")
                theirs = cost_to_reach(scratch, target, f"_{unit}")
                tasks, verdict = _break_even_in(unit, total, mine, theirs)
                row.update({f"pretrained_{unit}": mine,
                            f"scratch_{unit}": np.nan if theirs is None else theirs,
                            f"pretrain_{unit}": total, f"break_even_tasks_{unit}": tasks,
                            f"verdict_{unit}": verdict})
            row["unpriced"] = _join([*run_cost.loc[pd.concat([pre_group, scratch]).index,
                                                   "unpriced"],
                                     cost.describe() if source == UNPRICED else ""])
            rows.append(row)
    table = pd.DataFrame(rows, columns=columns)
    for unit in units:  # whole numbers of tasks, <NA> where there is none
        table[f"break_even_tasks_{unit}"] = table[f"break_even_tasks_{unit}"].astype("Int64")
    return table
