"""Paired comparisons along one axis, and contrasts between cell patterns."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ablate.analysis.columns import (
    AXES,
    CELL_COLUMNS,
    SIZE_COLUMNS,
    SIZE_MISMATCH,
    STAT_COLUMNS,
    family_of,
)
from ablate.analysis.tables import scored_replicates
from ablate.tracking.schema import (
    Family,
)

if TYPE_CHECKING:
    from ablate.spec import CellPattern, Contrast


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


REFUSED = "refused"  # the verdict of a comparison every task of which was refused


def _paired(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two (task x seed) score tables on their common tasks and seeds, keeping every task
    with at least one seed scored in both (a missing replicate drops its pair, not its task)."""
    tasks = a.index.intersection(b.index)
    seeds = a.columns.intersection(b.columns)
    a, b = a.loc[tasks, seeds], b.loc[tasks, seeds]
    both = a.notna() & b.notna()
    keep = both.any(axis=1).to_numpy()
    seeds_used = both.any(axis=0).to_numpy()
    return a.loc[keep, seeds_used], b.loc[keep, seeds_used]


def _refusals(cells_of: Mapping[str, str], other: Mapping[str, str],
              refused: Mapping[str, str]) -> dict[str, str]:
    """Task -> why it is refused, where either arm's cell of that task is refused."""
    out = {}
    for task in sorted(set(cells_of) | set(other)):
        reasons = [f"{c} ({refused[c]})" for c in (cells_of.get(task), other.get(task))
                   if c in refused]
        if reasons:
            out[task] = "; ".join(reasons)
    return out


def _refused_row(name: str, reasons: Mapping[str, str]) -> dict[str, Any]:
    return {"comparison": name, "verdict": REFUSED, "n_tasks": 0,
            "refused": " | ".join(f"{t}: {r}" for t, r in reasons.items())}


def _finish(meta: list[dict], results: dict, refused_rows: list[dict], columns: list[str],
            alpha: float) -> pd.DataFrame:
    from ablate.stats import comparison_table

    frames = []
    if results:
        frames.append(pd.DataFrame([m for m in meta if m["comparison"] in results]).merge(
            comparison_table(results, alpha=alpha), on="comparison"))
    if refused_rows:
        shown = {r["comparison"]: r for r in refused_rows}
        frames.append(pd.DataFrame([{**m, **shown[m["comparison"]]} for m in meta
                                    if m["comparison"] in shown]))
    if not frames:
        return pd.DataFrame(columns=columns)
    out = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if "refused" not in out:
        out["refused"] = ""
    out["refused"] = out["refused"].fillna("")
    return out


def _axis_pairs(reps: pd.DataFrame, refused: Mapping[str, str]):
    """Each comparison along one axis, the other two held fixed: ``(name, row, reasons, a,
    b, mine, theirs)`` with ``a`` and ``b`` its (task x seed) paired score tables, the tasks
    of refused cells removed (``reasons``: task -> why)."""
    usable = scored_replicates(reps)
    families = dict(zip(usable["architecture"], usable["family"], strict=True))
    for axis in AXES:
        others = [a for a in AXES if a != axis]
        for fixed, group in usable.groupby(others, sort=True):
            values = sorted(group[axis].unique())
            for treatment, baseline in _comparison_pairs(values, axis, families):
                mine = group[group[axis] == treatment]
                theirs = group[group[axis] == baseline]
                fixed_text = ", ".join(f"{k}={v}" for k, v in zip(others, fixed, strict=True))
                name = f"{axis}: {treatment} vs {baseline} ({fixed_text})"
                reasons = _refusals(dict(zip(mine["task"], mine["cell"], strict=True)),
                                    dict(zip(theirs["task"], theirs["cell"], strict=True)),
                                    refused)
                mine = mine[~mine["task"].isin(reasons)]
                theirs = theirs[~theirs["task"].isin(reasons)]
                a, b = _paired(
                    mine.pivot_table(index="task", columns="seed", values="test_score"),
                    theirs.pivot_table(index="task", columns="seed", values="test_score"))
                row = {"comparison": name, "axis": axis, "treatment": treatment,
                       "baseline": baseline, **dict(zip(others, fixed, strict=True)),
                       "refused": " | ".join(f"{t}: {r}" for t, r in reasons.items())}
                yield name, row, reasons, a, b, mine, theirs


TASK_COLUMNS = ["comparison", "axis", "treatment", "baseline", "task", "mean_difference",
                "ci_low", "ci_high", "seeds"]


def _task_rows(a: pd.DataFrame, b: pd.DataFrame, head: dict[str, Any],
               seed: int) -> list[dict[str, Any]]:
    from ablate.stats import paired_comparison

    rows = []
    for task in a.index:
        one_a, one_b = a.loc[[task]].to_numpy(), b.loc[[task]].to_numpy()
        result = paired_comparison(one_a, one_b, seed=seed)
        rows.append({**head, "task": task, "mean_difference": result.mean_difference,
                     "ci_low": result.ci_low, "ci_high": result.ci_high,
                     "seeds": int((~np.isnan(one_a - one_b)).sum())})
    return rows


def comparison_tasks(reps: pd.DataFrame, *, seed: int = 0,
                     refused: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Each row of :func:`comparisons` task by task: the paired difference (treatment -
    baseline, mean over the seeds both arms have) on each task it pools, with that task's
    interval over its seeds (the same hierarchical bootstrap on one task; a point where the
    task has one seed). The tasks and seeds are exactly those the comparison uses."""
    rows = []
    for name, row, _, a, b, _, _ in _axis_pairs(reps, refused or {}):
        head = {"comparison": name, "axis": row["axis"], "treatment": row["treatment"],
                "baseline": row["baseline"]}
        rows += _task_rows(a, b, head, seed)
    return pd.DataFrame(rows, columns=TASK_COLUMNS)


def contrast_task_differences(reps: pd.DataFrame, cell_table: pd.DataFrame,
                              patterns: Sequence[Contrast], *, seed: int = 0,
                              refused: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Each row of :func:`contrasts` task by task, as :func:`comparison_tasks` does for the
    single-axis comparisons (``baseline`` holds the control side)."""
    refused = refused or {}
    pairs = contrast_pairs(reps, cell_table, patterns)
    usable = scored_replicates(reps)
    if pairs.empty or usable.empty:
        return pd.DataFrame(columns=TASK_COLUMNS)
    scores = usable.pivot_table(index="cell", columns="seed", values="test_score")
    rows = []
    for (name, treatment, control), group in pairs.groupby(
            ["contrast", "treatment", "control"], sort=False):
        bad = group["treatment_cell"].isin(refused) | group["control_cell"].isin(refused)
        group = group[~bad & group["treatment_cell"].isin(scores.index)
                      & group["control_cell"].isin(scores.index)]
        a = scores.loc[group["treatment_cell"]].set_axis(list(group["task"]), axis=0)
        b = scores.loc[group["control_cell"]].set_axis(list(group["task"]), axis=0)
        both = a.notna().to_numpy() & b.notna().to_numpy()
        keep, seeds = both.any(axis=1), both.any(axis=0)
        if group.empty or not keep.any():
            continue
        head = {"comparison": f"{name}: {treatment} vs {control}", "axis": name,
                "treatment": treatment, "baseline": control}
        rows += _task_rows(a.loc[keep, seeds], b.loc[keep, seeds], head, seed)
    return pd.DataFrame(rows, columns=TASK_COLUMNS)


def comparisons(reps: pd.DataFrame, *, seed: int = 0, alpha: float = 0.05,
                refused: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Paired comparisons along each axis, the other two axes held fixed, across tasks.

    Each comparison pairs the two conditions task by task and replicate by replicate (the same
    seeds) on the task's score (:func:`scored_replicates`: a model failure counts as 0 against
    its arm, a collapsed replicate with its near-zero score; an infrastructure failure drops
    that seed's pair, never the task). Wilcoxon signed-rank across tasks, a hierarchical
    bootstrap interval over tasks and seeds (``sample`` says how many), Holm over every
    comparison of the report; ``verdict`` says "underpowered" where the tasks are too few for
    any result to reach ``alpha`` (see ``stats.comparison_table``).

    ``refused`` (cell -> reason, from :func:`refused_cells`) names cells no comparison may
    use: an unfinished sweep, or a budget unlike the others'. Their tasks are left out of each
    comparison that involves them and listed in its ``refused`` column; a comparison left with
    no task is kept as a row with verdict "refused" and no statistics.

    Each row also gives both arms' parameter counts (median over the compared runs), their
    ratio, ``size_mismatch`` when they differ by more than ``SIZE_MISMATCH``, whether an arm
    is ablate's own extension (a convolutional model with a non-char tokenizer) and
    ``exposure_unknown`` when an arm is an external checkpoint's pretrained cell.
    """
    from ablate.stats import paired_comparison

    results, meta, refused_rows = {}, [], []
    for name, row, reasons, a, b, mine, theirs in _axis_pairs(reps, refused or {}):
        if a.empty:
            if reasons:
                meta.append(row)
                refused_rows.append(_refused_row(name, reasons))
            continue
        results[name] = paired_comparison(a.to_numpy(), b.to_numpy(), seed=seed)
        meta.append({**row, **_size_columns(_arm(mine, a.index, a.columns),
                                            _arm(theirs, a.index, a.columns))})
    return _finish(meta, results, refused_rows,
                   ["comparison", "axis", "treatment", "baseline", *STAT_COLUMNS,
                    *SIZE_COLUMNS, "refused"], alpha)


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
    usable = scored_replicates(reps)
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
              seed: int = 0, alpha: float = 0.05,
              refused: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Paired tests between cell patterns that may vary several axes at once.

    Per task, each treatment cell is set against the control side (:func:`contrast_pairs`),
    replicate by replicate (the same seeds); across tasks the statistics are those of
    :func:`comparisons` (Wilcoxon over tasks, hierarchical bootstrap interval, Holm over every
    row of this table, one family, "underpowered" where it is). One row per contrast,
    treatment condition and control (``best by dev`` or each control condition), with both
    arms' parameter counts and flags as in comparisons; ``control_cells`` names the control
    chosen on each task. ``refused`` cells are left out as in :func:`comparisons`.
    """
    from ablate.stats import paired_comparison

    refused = refused or {}
    columns = ["comparison", "contrast", "treatment", "control", "control_cells", *STAT_COLUMNS,
               *SIZE_COLUMNS, "refused"]
    pairs = contrast_pairs(reps, cell_table, patterns)
    usable = scored_replicates(reps)
    if pairs.empty or usable.empty:
        return pd.DataFrame(columns=columns)
    scores = usable.pivot_table(index="cell", columns="seed", values="test_score")
    results, meta, refused_rows = {}, [], []
    for (name, treatment, control), group in pairs.groupby(
            ["contrast", "treatment", "control"], sort=False):
        key = f"{name}: {treatment} vs {control}"
        bad = group["treatment_cell"].isin(refused) | group["control_cell"].isin(refused)
        reasons = {task: "; ".join(f"{c} ({refused[c]})" for c in (t, c_) if c in refused)
                   for task, t, c_ in zip(group.loc[bad, "task"], group.loc[bad,
                                          "treatment_cell"], group.loc[bad, "control_cell"],
                                          strict=True)}
        group = group[~bad & group["treatment_cell"].isin(scores.index)
                      & group["control_cell"].isin(scores.index)]
        row = {"comparison": key, "contrast": name, "treatment": treatment, "control": control,
               "refused": " | ".join(f"{t}: {r}" for t, r in reasons.items())}
        a = scores.loc[group["treatment_cell"]].set_axis(list(group["task"]), axis=0)
        b = scores.loc[group["control_cell"]].set_axis(list(group["task"]), axis=0)
        both = a.notna().to_numpy() & b.notna().to_numpy()
        keep, seeds = both.any(axis=1), both.any(axis=0)
        if group.empty or not keep.any():
            if reasons:
                meta.append({**row, "control_cells": ""})
                refused_rows.append(_refused_row(key, reasons))
            continue
        a, b = a.loc[keep, seeds], b.loc[keep, seeds]
        results[key] = paired_comparison(a.to_numpy(), b.to_numpy(), seed=seed)
        kept = group[keep]
        used = a.columns
        mine = usable[usable["cell"].isin(kept["treatment_cell"]) & usable["seed"].isin(used)]
        theirs = usable[usable["cell"].isin(kept["control_cell"]) & usable["seed"].isin(used)]
        chosen = "; ".join(f"{task}: {cell}" for task, cell in
                           zip(kept["task"], kept["control_cell"], strict=True))
        meta.append({**row, "control_cells": chosen, **_size_columns(mine, theirs)})
    out = _finish(meta, results, refused_rows, columns, alpha)
    extra = [c for c in ("n_replicates", "note", "sample", "p_floor", "p_holm_floor",
                         "family_size", "tasks_needed", "interval_note", "n_pairs") if c in out]
    return out[[*columns, *extra]] if len(out) else out
