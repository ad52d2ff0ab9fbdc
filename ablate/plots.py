"""The report's figures, written as PNG files with matplotlib's Agg backend."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ablate.tracking.schema import Family


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(row) -> str:
    return f"{row.architecture}/{row.pretraining}/{row.tokenizer}"


def _marker(family: str) -> str:
    return "x" if family == Family.BASELINE else "o"


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
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tuning_curves(curves: dict, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for cell, curve in sorted(curves.items()):
        ax.plot(range(1, len(curve) + 1), curve, marker="o", markersize=3, label=cell)
    ax.set(xlabel="trials spent", ylabel="expected best dev score",
           title="Tuning curves (expected max over random subsets of the cell's trials)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cost_benefit(frame: pd.DataFrame, path: Path) -> None:
    """Test score against cost (device-hours, FLOPs) per cell, one column per amortisation rule.

    Cost = the cell's search trials + its replicates + its share of pretraining under the rule.
    Circled points are on the Pareto front of their task (no cell cheaper and better); crosses
    are the k-mer floor.
    """
    plt = _plt()
    rules = list(dict.fromkeys(frame["rule"]))
    costs = ["device_hours", "flops"]
    fig, axes = plt.subplots(len(costs), len(rules), figsize=(5 * len(rules), 8), squeeze=False)
    for i, cost in enumerate(costs):
        for ax, rule in zip(axes[i], rules, strict=True):
            sub = frame[(frame["rule"] == rule) & frame["test_score"].notna()]
            for (family, *condition), group in sub.groupby(
                    ["family", "architecture", "pretraining", "tokenizer"]):
                label = "/".join(condition)
                if family == Family.BASELINE:
                    label = f"{label} (k-mer floor)"
                ax.scatter(group[cost], group["test_score"], s=25, marker=_marker(family),
                           label=label)
            front = sub[sub["pareto"]]
            ax.scatter(front[cost], front["test_score"], s=110, facecolors="none",
                       edgecolors="k", label="Pareto front (per task)")
            ax.set(xlabel=cost.replace("_", " "), ylabel="mean test score (the task's metric)",
                   title=f"pretraining charged: {rule}")
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
            ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
