"""The report's figures, written as PNG files with matplotlib's Agg backend.

Each condition (architecture/pretraining/tokenizer) has one colour: the report builds one
mapping from all the study's conditions (:func:`condition_colours`) and passes it to every
figure, so a condition looks the same in the forest plots, the cost-benefit frontier, the
tuning and compute curves. Points of different tasks never share an axis (one panel per
task); legends sit outside the axes, long labels are wrapped, and every figure is saved with
``bbox_inches="tight"``, so no label is clipped.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping
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


def condition_labels(frame: pd.DataFrame) -> pd.Series:
    """Each row's condition as the figures name it (the key of :func:`condition_colours`)."""
    return _conditions(frame)


def _palette() -> list:
    """Distinct qualitative colours, most distinct first: matplotlib's ``tab10``, then the
    light halves of ``tab20``, then the dark shades of ``tab20b`` and ``tab20c`` (29 in all)."""
    plt = _plt()
    tab20, tab20b, tab20c = (plt.get_cmap(n) for n in ("tab20", "tab20b", "tab20c"))
    return ([plt.get_cmap("tab10")(i) for i in range(10)]
            + [tab20(i) for i in range(1, 20, 2)]
            + [tab20b(i) for i in range(0, 20, 4)] + [tab20c(i) for i in range(0, 16, 4)])


PALETTE_SIZE = 29


def condition_colours(conditions) -> dict[str, Any]:
    """One colour per condition (sorted by name), from :func:`_palette`: the same mapping
    for the same conditions, distinct up to ``PALETTE_SIZE`` conditions (beyond that the
    palette repeats). Build it once from every condition of a study and pass it to each
    figure, so a condition has one colour in all of them."""
    palette = _palette()
    names = sorted(set(conditions))
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


def _covering(colours: Mapping[str, Any] | None, names) -> dict[str, Any]:
    """``colours`` extended to ``names``: a condition it lacks gets a palette colour it does
    not use (or, without ``colours``, the mapping of ``names`` alone)."""
    if colours is None:
        return condition_colours(names)
    out = dict(colours)
    missing = sorted(set(names) - set(out))
    if missing:
        used = {tuple(c) for c in out.values()}
        free = [c for c in _palette() if tuple(c) not in used] or _palette()
        out.update({name: free[i % len(free)] for i, name in enumerate(missing)})
    return out


def _wrap(text: str, width: int = 38) -> str:
    """A long label over several lines, broken at spaces, '/' or '|'."""
    if len(text) <= width:
        return text
    spaced = text.replace("/", "/\u200b").replace("|", "|\u200b")
    lines = textwrap.wrap(spaced, width=width, break_long_words=True)
    return "\n".join(line.replace("\u200b", "") for line in lines)


def _condition_handles(colours: Mapping[str, Any], shown, marker: str = "o") -> list:
    from matplotlib.lines import Line2D

    return [Line2D([], [], color=colours[name], marker=marker, label=_wrap(name, 44))
            for name in sorted(set(shown))]


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


def _cell_condition(cell: str) -> tuple[str, str]:
    """(condition, task) of a cell named ``architecture|pretraining|tokenizer|task``."""
    parts = cell.split("|", 3)
    if len(parts) < 4:
        return cell, ""
    return "/".join(parts[:3]), parts[3]


def plot_cost_vs_mcc(table: pd.DataFrame, path: Path,
                     colours: Mapping[str, Any] | None = None) -> None:
    """Search wall seconds against best dev score (the task's metric), one panel per task
    and one point per cell, coloured by condition; the k-mer floor is drawn with a cross."""
    from matplotlib.lines import Line2D

    frame = table.copy()
    frame["condition"] = _conditions(frame)
    colours = _covering(colours, frame["condition"])
    tasks = sorted(frame["task"].unique()) or [""]
    fig, axes = _grid(len(tasks), per_row=3)
    for ax, task in zip(axes, tasks, strict=True):
        for row in frame[frame["task"] == task].itertuples():
            ax.scatter(row.wall_seconds, row.best_dev_score, s=46,
                       marker=_marker(getattr(row, "family", "")),
                       color=colours[row.condition])
        ax.set(title=task, xlabel="search wall seconds in the cell",
               ylabel="best dev score (the task's metric)")
        _log_if_positive(ax, "x", frame.loc[frame["task"] == task, "wall_seconds"])
        ax.grid(alpha=0.3)
    handles = _condition_handles(colours, frame["condition"])
    if (frame.get("family", pd.Series(dtype=str)) == Family.BASELINE).any():
        handles.append(Line2D([], [], color="k", marker="x", linestyle="none",
                              label="k-mer floor"))
    fig.suptitle("Search cost against best dev score, one point per cell")
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=7)
    fig.tight_layout()
    _save(fig, path, dpi=110)


def plot_tuning_curves(curves: dict, path: Path, colours: Mapping[str, Any] | None = None,
                       conditions: Mapping[str, str] | None = None) -> None:
    """Expected best dev score after n trials per cell (``analysis.tuning_curves``: completed
    trials only), one panel per task and one colour per condition; ``conditions`` maps a
    cell to its condition label (default: read from the cell's name)."""
    named = {cell: _cell_condition(cell) for cell in curves}
    if conditions:
        named = {cell: (conditions.get(cell, cond), task) for cell, (cond, task) in named.items()}
    colours = _covering(colours, [cond for cond, _ in named.values()])
    tasks = sorted({task for _, task in named.values()})
    fig, axes = _grid(len(tasks), per_row=3)
    for ax, task in zip(axes, tasks, strict=True):
        for cell, curve in sorted(curves.items()):
            condition, own = named[cell]
            if own == task:
                ax.plot(range(1, len(curve) + 1), curve, marker="o", markersize=3,
                        color=colours[condition])
        ax.set(title=task, xlabel="completed trials", ylabel="expected best dev score")
        ax.grid(alpha=0.3)
    fig.suptitle("Tuning curves: expected best over random subsets of a cell's completed "
                 "trials")
    fig.legend(handles=_condition_handles(colours, [c for c, _ in named.values()]),
               loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=7)
    fig.tight_layout()
    _save(fig, path, dpi=110)


def compute_curves_figure(curves: pd.DataFrame, colours: Mapping[str, Any] | None = None):
    """The figure of ``plot_compute_curves``, not yet saved (its caller closes it)."""
    from matplotlib.lines import Line2D

    spent = curves[curves["cumulative_flops"] > 0]
    tasks = sorted(spent["task"].unique())
    # Before a cell's first scored trial (all failed so far, say) there is no best to draw.
    frame = spent[spent["best_dev_score_so_far"].notna()].copy()
    frame["condition"] = _conditions(frame)
    colours = _covering(colours, frame["condition"])
    fig, axes = _grid(len(tasks), per_row=3)
    for ax, task in zip(axes, tasks, strict=True):
        scored = frame[frame["task"] == task]
        if scored.empty:
            ax.text(0.5, 0.5, "no trial with a dev score yet", ha="center", va="center",
                    transform=ax.transAxes, color="grey")
            ax.set(title=task, xticks=[], yticks=[])
            continue
        for condition, group in scored.groupby("condition", sort=True):
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
    handles = _condition_handles(colours, frame["condition"])
    handles.append(Line2D([], [], color="grey", marker="o", markerfacecolor="none",
                          linestyle="none", label="after a pruned trial (truncated score)"))
    fig.suptitle("Best dev score against search compute, trials in start order")
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=7)
    fig.tight_layout()
    return fig


def plot_compute_curves(curves: pd.DataFrame, path: Path,
                        colours: Mapping[str, Any] | None = None) -> None:
    """Best dev score so far against cumulative search FLOPs (log x), one panel per task and
    one colour per condition in every panel (``analysis.compute_curves``). Hollow points
    follow pruned trials, whose scores are truncated."""
    _save(compute_curves_figure(curves, colours), path)


def cost_benefit_figure(frame: pd.DataFrame, colours: Mapping[str, Any] | None = None):
    """The figure of ``plot_cost_benefit``, not yet saved (its caller closes it)."""
    from matplotlib.lines import Line2D

    frame = frame[frame["test_score"].notna()].copy()
    frame["condition"] = _conditions(frame)
    colours = _covering(colours, frame["condition"])
    units = [u for u in COST_AXES if u != "price" or frame["price"].notna().any()]
    tasks = sorted(frame["task"].unique())
    fig, axes = _grid(len(tasks) * len(units), per_row=4 if len(units) == 2 else 3)
    panels = [(task, unit) for task in tasks for unit in units]
    family = frame["family"] if "family" in frame else pd.Series("", index=frame.index)
    has_floor = False
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
        floor = sub[family.loc[sub.index] == Family.BASELINE]["test_score"].dropna()
        if len(floor):
            has_floor = True
            ax.axhline(float(floor.max()), color="grey", linestyle="--", linewidth=0.9)
        front = shown[shown["pareto"] & (shown["pareto_axis"] == unit)]
        for _, rule_front in front.groupby("rule", sort=True):
            ordered = rule_front.sort_values(unit)
            ax.step(ordered[unit], ordered["test_score"], where="post", color="k",
                    linestyle=":", linewidth=0.8, alpha=0.6)
        ax.scatter(front[unit], front["test_score"], s=130, facecolors="none",
                   edgecolors="k", linewidths=1.0)
        _log_if_positive(ax, "x", shown[unit])
        missing = len(sub) - len(shown)
        title = f"{task}: {COST_AXES[unit]}"
        ax.set(title=title + (f" ({missing} points unpriced)" if missing else ""),
               xlabel=COST_AXES[unit], ylabel="mean test score (the task's metric)")
        ax.grid(alpha=0.3)
    handles = _condition_handles(colours, frame["condition"])
    handles += [Line2D([], [], color="k", marker=m, linestyle="none",
                       label=f"pretraining charged: {rule}" + (" (or none to charge)"
                                                               if rule == "none" else ""))
                for rule, m in RULE_MARKERS.items()]
    handles.append(Line2D([], [], color="k", marker="o", markersize=11, markerfacecolor="none",
                          linestyle=":", label="Pareto front of its task and rule"))
    if has_floor:
        handles.append(Line2D([], [], color="grey", linestyle="--",
                              label="k-mer floor (its test score)"))
    fig.suptitle("Cost-benefit per task: fine-tuning (search + replicates) plus pretraining "
                 "as charged")
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=7)
    fig.tight_layout()
    return fig


def plot_cost_benefit(frame: pd.DataFrame, path: Path,
                      colours: Mapping[str, Any] | None = None) -> None:
    """Mean test score against cost per cell (``analysis.cost_benefit``): one panel per task
    and cost axis, money when anything is priced and FLOPs (log x where all costs are
    positive), so points of different tasks never share an axis.

    A cell's three points are its cost with pretraining charged ``none`` (circle), ``per-task``
    (square) and ``full`` (triangle), joined by a line; one colour per condition in every
    panel. Ringed points are on the Pareto front of their task and rule on that panel's axis
    (``pareto_axis``), joined by a dotted step line; a dashed line marks the task's k-mer
    floor (its test score).
    """
    _save(cost_benefit_figure(frame, colours), path)


def forest_figure(pooled: pd.DataFrame, per_task: pd.DataFrame, title: str,
                  colours: Mapping[str, Any] | None = None):
    """The figure of ``plot_forest``, not yet saved (its caller closes it)."""
    from matplotlib.lines import Line2D

    plt = _plt()
    rows = pooled[pooled["mean_difference"].notna()] if len(pooled) else pooled
    colours = _covering(colours, rows["condition"]) if len(rows) else {}
    labels, y = [], 0.0
    n_lines = len(rows) + len(per_task)
    legend_rows = math.ceil((2 + (rows["condition"].nunique() if len(rows) else 0)) / 2) + 1
    legend_height = 0.2 + 0.17 * legend_rows
    fig, ax = plt.subplots(figsize=(8.6, 1.1 + 0.34 * max(n_lines, 1) + 0.25 * len(rows)
                                    + legend_height))
    for row in rows.itertuples():
        colour = colours[row.condition]
        tasks = per_task[per_task["comparison"] == row.comparison]
        ax.errorbar([row.mean_difference], [y],
                    xerr=[[row.mean_difference - row.ci_low], [row.ci_high - row.mean_difference]],
                    fmt="D", markersize=8, color=colour, ecolor=colour, elinewidth=2.4,
                    capsize=4)
        ax.text(1.02, y, f"{row.mean_difference:+.3f} [{row.ci_low:+.3f}, {row.ci_high:+.3f}]"
                f"\n{row.verdict}", transform=ax.get_yaxis_transform(), va="center",
                fontsize=7)
        labels.append((y, _wrap(f"{row.label} (pooled, {row.sample})", 46), "bold"))
        for task in tasks.itertuples():
            y -= 1
            low, high = task.ci_low, task.ci_high
            ax.errorbar([task.mean_difference], [y],
                        xerr=[[task.mean_difference - low], [high - task.mean_difference]],
                        fmt="o", markersize=4, color=colour, ecolor=colour, elinewidth=1.0,
                        capsize=2, alpha=0.8)
            seeds = f"{task.seeds} seed{'s' if task.seeds != 1 else ''}"
            labels.append((y, _wrap(f"{task.task} ({seeds})", 46), "normal"))
        y -= 1.6
    from matplotlib.ticker import MaxNLocator

    ax.axvline(0.0, color="k", linewidth=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=7))
    ax.set_yticks([t for t, _, _ in labels], [text for _, text, _ in labels], fontsize=7)
    for tick, (_, _, weight) in zip(ax.get_yticklabels(), labels, strict=True):
        tick.set_fontweight(weight)
    ax.set_ylim(y + 0.9, 0.8)
    ax.set_xlabel("paired difference in test score, treatment - baseline (the task's metric)")
    ax.set_title(_wrap(title, 90), fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    handles = [Line2D([], [], color="grey", marker="D", linewidth=2.4,
                      label="pooled over tasks: mean and its interval"),
               Line2D([], [], color="grey", marker="o", linewidth=1.0,
                      label="one task: mean over its seeds and their interval")]
    handles += _condition_handles(colours, rows["condition"]) if len(rows) else []
    height = fig.get_size_inches()[1]
    fig.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.02, 0.0), fontsize=7,
               ncol=2, frameon=False, title="colour: the treatment's condition",
               title_fontsize=7)
    fig.tight_layout(rect=(0, min(0.6, legend_height / height), 1, 1))
    return fig


def plot_forest(pooled: pd.DataFrame, per_task: pd.DataFrame, path: Path, title: str,
                colours: Mapping[str, Any] | None = None) -> None:
    """A forest plot of one question's comparisons: per comparison its pooled paired
    difference (diamond, with its interval) and below it the difference on each task it pools
    (dot, with the task's interval over its seeds), a zero line, and the pooled value and
    verdict at the right.

    ``pooled``: comparison rows with ``comparison``, ``label``, ``condition`` (the treatment's,
    for its colour), ``mean_difference``, ``ci_low``, ``ci_high``, ``sample`` and ``verdict``;
    ``per_task``: rows of ``analysis.comparison_tasks``.
    """
    _save(forest_figure(pooled, per_task, title, colours), path, dpi=110)
