"""The budget table, the replicate table and what the report discloses beside them."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ablate.analysis.columns import (
    BEST_DEV_MCC,
    BEST_DEV_SCORE,
    CAVEAT_PREFIX,
    CELL,
    CELL_COLUMNS,
    CELL_TAGS,
    COLLAPSE_MCC,
    DEVICE_HOURS,
    EDGE_MARGIN,
    EXPOSURE_PREFIX,
    EXTERNAL_KIND,
    FLOPS,
    N_PARAMS,
    OUTCOME,
    STAGE,
    TASK,
    TEST_MCC,
    TEST_SCORE,
    _cell_values,
    _column,
    _describe,
    _float,
    _number,
    _numeric,
    _score,
    _text,
)
from ablate.tracking.reader import client_for, runs
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


RUNNING = "running"  # a trial run with no outcome yet: the sweep has not finished


def cells(trial_runs: pd.DataFrame, replicate_runs: pd.DataFrame | None = None, *,
          cell_runs: pd.DataFrame | None = None,
          trials_per_cell: int | None = None) -> pd.DataFrame:
    """The budget table: one row per cell with its trials' outcomes, best dev score and cost.

    The best configuration is chosen among the cell's *completed* trials only (a pruned trial
    was stopped early, at a lower fidelity; the replicates re-train a completed one), so
    ``best_params`` are the hyperparameters its replicates re-trained. ``best_dev_score`` is
    in the task's ``metric``; ``best_dev_mcc`` is the best trial's MCC.

    ``budget_trials`` counts the trials that count against the cell's budget: completed,
    pruned and model-failed ones (a model failure is the model's own), never an
    infrastructure failure (its slot is re-issued) nor a trial still running. ``finished`` is
    False while trials run or, with ``trials_per_cell``, before that many counted.

    With ``replicate_runs``: the replicates' mean test score, with model failures counted as
    score 0 (:func:`scored_replicates`), its bootstrap interval over the replicates
    (``test_ci_low``/``test_ci_high``, ``test_n`` replicates), ``selection_gap`` (the selected
    configuration's dev score minus that mean test score: what selecting on a small dev set
    costs), and the replicates' failures by kind. With ``cell_runs`` (the sweep's cell runs, or
    all its runs) ``at_edge`` lists the best configuration's hyperparameters at an edge of the
    cell's search ranges (:func:`edge_flags`).
    """
    columns = ["cell", *CELL_COLUMNS, "family", "metric", "extension", "external_checkpoint",
               "trials", "budget_trials", "completed", "pruned", "model_failed", "failed",
               "running", "finished", "max_epochs", "best_dev_score", "best_dev_mcc",
               "best_trial", "best_params", "n_params", "wall_seconds", "flops",
               "device_hours", "at_edge"]
    if trial_runs.empty:
        return pd.DataFrame(columns=columns)
    param_cols = [c for c in trial_runs.columns if c.startswith(param_column(""))]
    score, metric = _score(trial_runs, BEST_DEV_SCORE, BEST_DEV_MCC)
    described = _describe(trial_runs)
    spaces = search_spaces(cell_runs)
    rows = []
    for cell, group in trial_runs.groupby(CELL, sort=True):
        outcome = _column(group, OUTCOME, RUNNING).fillna(RUNNING)
        completed = outcome == Outcome.COMPLETED
        scores = score.loc[group.index].where(completed)
        best = group.loc[scores.idxmax()] if scores.notna().any() else None
        first = described.loc[group.index[0]]
        params = ({c.removeprefix(param_column("")): best[c] for c in param_cols
                   if pd.notna(best[c])} if best is not None else {})
        counts = {name: int((outcome == value).sum()) for name, value in (
            ("completed", Outcome.COMPLETED), ("pruned", Outcome.PRUNED),
            ("model_failed", Outcome.MODEL_FAILED), ("failed", Outcome.FAILED),
            ("running", RUNNING))}
        budget_trials = counts["completed"] + counts["pruned"] + counts["model_failed"]
        rows.append({
            "cell": cell,
            **_cell_values(group),
            "family": first["family"],
            "metric": metric.loc[group.index[0]],
            "extension": bool(first["extension"]),
            "external_checkpoint": first["external_checkpoint"],
            "trials": len(group),
            "budget_trials": budget_trials,
            **counts,
            "finished": counts["running"] == 0 and (trials_per_cell is None
                                                    or budget_trials >= trials_per_cell),
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
        if len(reps):
            summary = replicate_summary(reps)
            table = table.merge(summary, left_on="cell", right_index=True, how="left")
            table["selection_gap"] = table["best_dev_score"] - table["test_score"]
    return table


def replicate_summary(reps: pd.DataFrame, *, seed: int = 0) -> pd.DataFrame:
    """Per cell (the index): its replicates, their failures by kind, and the mean test score
    (model failures counted as 0) with a bootstrap interval over the replicates."""
    from ablate.stats import bootstrap_ci

    scored = scored_replicates(reps)
    rows = {}
    for cell, group in reps.groupby("cell", sort=True):
        values = scored.loc[scored["cell"] == cell, "test_score"].dropna().to_numpy()
        interval = bootstrap_ci(values, seed=seed) if len(values) else None
        rows[cell] = {
            "replicates": len(group),
            "collapsed": int(group["collapsed"].sum()),
            "replicate_model_failures": int(group["model_failed"].sum()),
            "replicate_failures": int(group["failed"].sum()),
            "test_score": interval.mean if interval else np.nan,
            "test_ci_low": interval.low if interval else np.nan,
            "test_ci_high": interval.high if interval else np.nan,
            "test_n": len(values),
            "test_mcc": float(group["test_mcc"].mean()),
            "replicate_dev_score": float(group["dev_score"].mean()),
            "replicate_device_hours": float(group["device_hours"].sum()),
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def search_spaces(cell_runs: pd.DataFrame | None) -> dict[str, str]:
    """Cell name -> its ``Tag.SEARCH_SPACE`` JSON, from the sweep's cell runs."""
    if cell_runs is None or cell_runs.empty:
        return {}
    own = cell_runs[_column(cell_runs, STAGE) == Stage.CELL]
    spaces = _text(own, tag_column(Tag.SEARCH_SPACE))
    return {c: s for c, s in zip(_text(own, CELL), spaces, strict=True) if s}


def budget_parity(cell_table: pd.DataFrame, *,
                  trials_per_cell: int | None = None) -> dict[str, bool]:
    """Per cell: whether its budget equals what its comparisons assume.

    A cell's budget is the trials that counted against it (``budget_trials``: infrastructure
    failures re-issued, trials still running not yet counted) and its maximum epochs. Trials
    must equal ``trials_per_cell`` (the spec's), or without it the study's most common count;
    maximum epochs must equal the most common among the cells of the same task (a study may
    give tasks different epoch budgets, never the cells of one task)."""
    if cell_table.empty:
        return {}
    counted = (cell_table["budget_trials"] if "budget_trials" in cell_table
               else cell_table["trials"]).tolist()
    target = trials_per_cell if trials_per_cell is not None else max(set(counted),
                                                                     key=counted.count)
    epochs_of = {}
    for task, group in cell_table.groupby("task"):
        epochs = group["max_epochs"].tolist()
        epochs_of[task] = max(set(epochs), key=epochs.count)
    return {row.cell: n == target and row.max_epochs == epochs_of[row.task]
            for row, n in zip(cell_table.itertuples(), counted, strict=True)}


def refused_cells(cell_table: pd.DataFrame, *,
                  trials_per_cell: int | None = None) -> dict[str, str]:
    """Cells no comparison may use, with the reason: an unfinished sweep (trials still
    running, or fewer counted than the budget) or a budget unlike the others'."""
    if cell_table.empty:
        return {}
    parity = budget_parity(cell_table, trials_per_cell=trials_per_cell)
    out = {}
    for row in cell_table.itertuples():
        counted = getattr(row, "budget_trials", row.trials)
        if getattr(row, "running", 0):
            out[row.cell] = f"unfinished: {row.running} trial(s) still running"
        elif trials_per_cell is not None and counted < trials_per_cell:
            out[row.cell] = f"unfinished: {counted} of {trials_per_cell} trials"
        elif not parity.get(row.cell, True):
            out[row.cell] = (f"budget differs: {counted} trials x {row.max_epochs} epochs")
    return out


def replicates(study_runs: pd.DataFrame) -> pd.DataFrame:
    """One row per replicate (test) run: its cell, seed, test score and how it ended.

    ``seed`` is the replicate's seed (``Tag.REPLICATE_SEED``), the one paired comparisons
    match on; ``test_score``/``dev_score`` are in the task's ``metric``; ``n_params`` is the
    model's parameter count. ``model_failed`` marks a replicate the model itself failed (a NaN
    loss, out of memory at its own batch; ``failure`` says which): it counts against its arm
    (:func:`scored_replicates`). ``failed`` marks an infrastructure failure after its retries
    (and, for runs written before schema 4, any failure): never scored. ``collapsed`` marks a
    finished replicate whose test MCC fell below ``COLLAPSE_MCC``.
    """
    reps = study_runs[(_column(study_runs, STAGE) == Stage.REPLICATE)
                      & (_column(study_runs, OUTCOME) != Outcome.LOST)]
    test_score, metric = _score(reps, TEST_SCORE, TEST_MCC)
    dev_score, _ = _score(reps, BEST_DEV_SCORE, BEST_DEV_MCC)
    outcome = _column(reps, OUTCOME)
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
        "failed": outcome == Outcome.FAILED,
        "model_failed": outcome == Outcome.MODEL_FAILED,
        "failure": _text(reps, tag_column(Tag.FAILURE)),
    }, index=reps.index)
    collapse = frame["test_mcc"].where(frame["test_mcc"].notna(), frame["test_score"])
    frame["collapsed"] = ~frame["failed"] & ~frame["model_failed"] & ~(collapse >= COLLAPSE_MCC)
    return frame.reset_index(drop=True)


MODEL_FAILURE_SCORE = 0.0  # what a model-failed replicate scores: MCC 0 is chance


def scored_replicates(reps: pd.DataFrame) -> pd.DataFrame:
    """The replicates that count, with the score they count with.

    A model failure counts against its arm with score ``MODEL_FAILURE_SCORE`` (0: chance for
    MCC, below any real predictor for macro F1), so an unstable model cannot win by failing
    on its hard tasks. An infrastructure failure is left out (the pair of that seed, not the
    task, drops out of a paired comparison), and so is a replicate with no test score yet. A
    collapsed replicate counts with its own near-zero score.
    """
    out = reps[~reps["failed"].astype(bool)].copy()
    model_failed = out["model_failed"].astype(bool) if "model_failed" in out else False
    out["test_score"] = out["test_score"].where(~model_failed, MODEL_FAILURE_SCORE)
    return out[out["test_score"].notna()]


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
