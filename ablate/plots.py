"""The report's figures, written as PNG files with matplotlib's Agg backend.

Every figure with several panels gives each condition (architecture/pretraining/tokenizer) one
colour in all its panels, puts its legend outside the axes and is saved with
``bbox_inches="tight"``, so no label is clipped.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from ablate.tracking.schema import Family

RULE_MARKERS = {"none": "o", "per-task": "s", "full": "^"}  # amortisation rule -> marker
COST_AXES = {"price": "money (price-table units)", "flops": "FLOPs"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(row) -> str:
    return f"{row.architecture}/{row.pretraining}/{row.tokenizer}"


def _marker(family: str) -> str:
    return "x" if family == Family.BASELINE else "o"


def _conditions(frame: pd.DataFrame) -> pd.Series:
    """Each row's condition: ``architecture/pretraining/tokenizer``, marked for the floor."""
    labels = frame["architecture"] + "/" + frame["pretraining"] + "/" + frame["tokenizer"]
    family = frame["family"] if "family" in frame else pd.Series("", index=frame.index)
    return labels.where(family != Family.BASELINE, labels + " (k-mer floor)")


def condition_colours(conditions) -> dict[str, Any]:
    """One colour per condition (sorted), from matplotlib's qualitative ``tab10``/``tab20``
    maps, so a condition has the same colour in every panel."""
    plt = _plt()
    names = sorted(set(conditions))
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def _grid(n_panels: int, per_row: int, width: float = 4.6, height: float = 3.4):
    plt = _plt()
    cols = max(1, min(per_row, n_panels))
    rows = max(1, math.ceil(n_panels / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n_panels:]:
        ax.set_visible(False)
    return fig, flat[:n_panels]


def _save(fig, path: Path, dpi: int = 100) -> None:
    plt = _plt()
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def _log_if_positive(ax, axis: str, values: pd.Series) -> None:
    values = values.dropna()
    # Log only across more than a decade: within one, log ticks are minor ticks whose labels
    # collide, so a linear axis in scientific notation reads better.
    if len(values) and (values > 0).all() and values.max() > 10 * values.min():
        from matplotlib.ticker import NullFormatter

        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
        (ax.xaxis if axis == "x" else ax.yaxis).set_minor_formatter(NullFormatter())
    elif len(values):
        ax.ticklabel_format(axis=axis, style="sci", scilimits=(-2, 3))


def plot_cost_vs_mcc(table: pd.DataFrame, path: Path) -> None:
    """Search cost against best dev score (the task's metric), one point per cell; the k-mer
    floor is drawn with crosses."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in table.itertuples():
        ax.scatter(row.wall_seconds, row.best_dev_score, s=40,
                   marker=_marker(getattr(row, "family", "")))
        ax.annotate(f"{_label(row)} {row.task}", (row.wall_seconds, row.best_dev_score),
                    textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set(xlabel="total search wall seconds in the cell",
           ylabel="best dev score (the task's metric)",
           title="Search cost vs accuracy, one point per cell (x: k-mer floor)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_tuning_curves(curves: dict, path: Path) -> None:
    """Expected best dev score after n trials per cell (``analysis.tuning_curves``: completed
    trials only), legend outside the axes."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for cell, curve in sorted(curves.items()):
        ax.plot(range(1, len(curve) + 1), curve, marker="o", markersize=3, label=cell)
    ax.set(xlabel="completed trials", ylabel="expected best dev score",
           title="Tuning curves (expected max over random subsets of the cell's completed "
                 "trials)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    _save(fig, path, dpi=110)


def compute_curves_figure(curves: pd.DataFrame):
    """The figure of ``plot_compute_curves``, not yet saved (its caller closes it)."""
    from matplotlib.lines import Line2D

    frame = curves[curves["cumulative_flops"] > 0].copy()
    frame["condition"] = _conditions(frame)
    colours = condition_colours(frame["condition"])
    tasks = sorted(frame["task"].unique())
    fig, axes = _grid(len(tasks), per_row=3)
    for ax, task in zip(axes, tasks, strict=True):
        for condition, group in frame[frame["task"] == task].groupby("condition", sort=True):
            colour = colours[condition]
            ax.step(group["cumulative_flops"], group["best_dev_score_so_far"], where="post",
                    color=colour, linewidth=1.4)
            done, pruned = group[~group["pruned"]], group[group["pruned"]]
            ax.scatter(done["cumulative_flops"], done["best_dev_score_so_far"], s=18,
                       color=colour)
            ax.scatter(pruned["cumulative_flops"], pruned["best_dev_score_so_far"], s=22,
                       facecolors="none", edgecolors=colour)
        ax.set_xscale("log")
        ax.set(title=task, xlabel="cumulative search FLOPs (log)",
               ylabel="best dev score so far")
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=c, marker="o", label=name) for name, c in colours.items()]
    handles.append(Line2D([], [], color="grey", marker="o", markerfacecolor="none",
                          linestyle="none", label="after a pruned trial (truncated score)"))
    fig.suptitle("Best dev score against search compute, trials in start order")
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=7)
    fig.tight_layout()
    return fig


def plot_compute_curves(curves: pd.DataFrame, path: Path) -> None:
    """Best dev score so far against cumulative search FLOPs (log x), one panel per task and
    one colour per condition in every panel (``analysis.compute_curves``). Hollow points
    follow pruned trials, whose scores are truncated."""
    _save(compute_curves_figure(curves), path)


def cost_benefit_figure(frame: pd.DataFrame):
    """The figure of ``plot_cost_benefit``, not yet saved (its caller closes it)."""
    from matplotlib.lines import Line2D

    frame = frame[frame["test_score"].notna()].copy()
    frame["condition"] = _conditions(frame)
    colours = condition_colours(frame["condition"])
    units = [u for u in COST_AXES if u != "price" or frame["price"].notna().any()]
    tasks = sorted(frame["task"].unique())
    fig, axes = _grid(len(tasks) * len(units), per_row=4 if len(units) == 2 else 3)
    panels = [(task, unit) for task in tasks for unit in units]
    for ax, (task, unit) in zip(axes, panels, strict=True):
        sub = frame[frame["task"] == task]
        shown = sub[sub[unit].notna()]
        for _, group in shown.groupby("cell", sort=True):
            colour = colours[group["condition"].iloc[0]]
            ordered = group.set_index("rule").reindex(
                [r for r in RULE_MARKERS if r in set(group["rule"])])
            if ordered[unit].nunique() == 1:  # no pretraining charged: one point
                ordered = ordered.iloc[:1]
            ax.plot(ordered[unit], ordered["test_score"], color=colour, linewidth=0.8,
                    alpha=0.6)
            for rule, row in ordered.iterrows():
                ax.scatter(row[unit], row["test_score"], color=colour, s=28,
                           marker=RULE_MARKERS.get(rule, "o"))
        front = shown[shown["pareto"] & (shown["pareto_axis"] == unit)]
        ax.scatter(front[unit], front["test_score"], s=130, facecolors="none",
                   edgecolors="k", linewidths=1.0)
        _log_if_positive(ax, "x", shown[unit])
        missing = len(sub) - len(shown)
        title = f"{task}: {COST_AXES[unit]}"
        ax.set(title=title + (f" ({missing} points unpriced)" if missing else ""),
               xlabel=COST_AXES[unit], ylabel="mean test score (the task's metric)")
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=c, marker="o", label=name) for name, c in colours.items()]
    handles += [Line2D([], [], color="k", marker=m, linestyle="none",
                       label=f"pretraining charged: {rule}" + (" (or none to charge)"
                                                               if rule == "none" else ""))
                for rule, m in RULE_MARKERS.items()]
    handles.append(Line2D([], [], color="k", marker="o", markersize=11, markerfacecolor="none",
                          linestyle="none", label="Pareto front of its task and rule"))
    fig.suptitle("Cost-benefit per task: fine-tuning (search + replicates) plus pretraining "
                 "as charged")
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=7)
    fig.tight_layout()
    return fig


def plot_cost_benefit(frame: pd.DataFrame, path: Path) -> None:
    """Mean test score against cost per cell (``analysis.cost_benefit``): one panel per task
    and cost axis, money when anything is priced and FLOPs (log x where all costs are
    positive), so points of different tasks never share an axis.

    A cell's three points are its cost with pretraining charged ``none`` (circle), ``per-task``
    (square) and ``full`` (triangle), joined by a line; one colour per condition in every
    panel. Ringed points are on the Pareto front of their task and rule on that panel's axis
    (``pareto_axis``).
    """
    _save(cost_benefit_figure(frame), path)
