"""Render a study's results: ``report.md``, ``cells.csv`` and ``cost_vs_mcc.png``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ablate.analysis import cells, trials


@dataclass
class Report:
    folder: Path
    cells: pd.DataFrame
    sweep: str

    @property
    def markdown(self) -> Path:
        return self.folder / "report.md"


def _format_params(params: dict) -> str:
    keys = ("learning_rate", "weight_decay", "dropout", "warmup_ratio", "batch_size")
    shown = []
    for key in keys:
        if key in params:
            value = params[key]
            try:
                value = f"{float(value):.3g}"
            except ValueError:
                pass
            shown.append(f"{key}={value}")
    return ", ".join(shown)


def _table(frame: pd.DataFrame) -> str:
    header = ("| cell | trials | completed | pruned | failed | best dev MCC | wall s | FLOPs "
              "| best hyperparameters |")
    lines = [header, "|" + "---|" * 9]
    for row in frame.itertuples():
        lines.append(
            f"| {row.cell} | {row.trials} | {row.completed} | {row.pruned} | {row.failed} "
            f"| {row.best_dev_mcc:.4f} | {row.wall_seconds:.1f} | {row.flops:.3g} "
            f"| {_format_params(row.best_params)} |"
        )
    return "\n".join(lines)


def plot_cost_vs_mcc(frame: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in frame.itertuples():
        ax.scatter(row.wall_seconds, row.best_dev_mcc, s=40)
        ax.annotate(
            f"{row.architecture}/{row.tokenizer}/{row.task}",
            (row.wall_seconds, row.best_dev_mcc),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    ax.set_xlabel("total trial wall seconds in the cell")
    ax.set_ylabel("best dev MCC")
    ax.set_title("Cost vs accuracy, one point per cell")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(tracking_uri: str, study: str, out_dir: Path, sweep: str | None = None) -> Report:
    """Query MLflow for a study's latest sweep (or ``sweep``) and write the report files."""
    from ablate.analysis import latest_sweep

    sweep = sweep or latest_sweep(tracking_uri, study)[1]
    runs = trials(tracking_uri, study, sweep)
    table = cells(runs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_frame = table.copy()
    csv_frame["best_params"] = csv_frame["best_params"].map(lambda p: json.dumps(p, sort_keys=True))
    csv_frame.to_csv(out_dir / "cells.csv", index=False)
    plot_cost_vs_mcc(table, out_dir / "cost_vs_mcc.png")
    synthetic = any(
        str(v).startswith("synthetic") for v in runs.get("tags.ablate.data", pd.Series()).unique()
    )
    lines = [
        f"# Study `{study}`",
        "",
        f"Sweep `{sweep}`, tracking store `{tracking_uri}`. "
        "Best dev MCC per cell (selection on dev; test is not touched by the search).",
        "",
    ]
    if synthetic:
        lines += ["**Data: synthetic GUE-shaped sequences with planted motifs, not real GUE.**", ""]
    lines += [_table(table), "", "![cost vs MCC](cost_vs_mcc.png)", ""]
    (out_dir / "report.md").write_text("\n".join(lines))
    return Report(folder=out_dir, cells=table, sweep=sweep)
