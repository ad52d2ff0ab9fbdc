"""Render a study: ``report.md``, a self-contained ``report.html``, CSV tables and PNG plots.

The report opens with a plain-language answer to the study's three questions (transformer vs
convolution, what pretraining contributes, what BPE does), each with its effect size, interval
and Holm-adjusted p-value, and "not significant" where it is not; then the budget table (and any
cell whose budget differs), failures, comparisons, tuning curves and cost-benefit curves.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ablate import analysis
from ablate.tracking.schema import Tag, tag_column

QUESTIONS = {
    "architecture": "Do pretrained transformers beat convolutional models?",
    "pretraining": "What does pretraining itself contribute?",
    "tokenizer": "What does BPE tokenization do?",
}


@dataclass
class Report:
    folder: Path
    cells: pd.DataFrame
    sweep: str
    comparisons: pd.DataFrame = field(default_factory=pd.DataFrame)
    summary: list[str] = field(default_factory=list)

    @property
    def markdown(self) -> Path:
        return self.folder / "report.md"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(row) -> str:
    return f"{row.architecture}/{row.pretraining}/{row.tokenizer}"


def plot_cost_vs_mcc(table: pd.DataFrame, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in table.itertuples():
        ax.scatter(row.wall_seconds, row.best_dev_mcc, s=40)
        ax.annotate(f"{_label(row)} {row.task}", (row.wall_seconds, row.best_dev_mcc),
                    textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set(xlabel="total search wall seconds in the cell", ylabel="best dev MCC",
           title="Search cost vs accuracy, one point per cell")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tuning_curves(curves: dict, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for cell, curve in sorted(curves.items()):
        ax.plot(range(1, len(curve) + 1), curve, marker="o", markersize=3, label=cell)
    ax.set(xlabel="trials spent", ylabel="expected best dev MCC",
           title="Tuning curves (expected max over random subsets of the cell's trials)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cost_benefit(frame: pd.DataFrame, path: Path) -> None:
    """Test MCC against cost (device-hours, FLOPs) per cell, one column per amortisation rule.

    Cost = the cell's search trials + its replicates + its share of pretraining under the rule.
    Circled points are on the Pareto front of their task (no cell cheaper and better).
    """
    plt = _plt()
    rules = list(dict.fromkeys(frame["rule"]))
    costs = ["device_hours", "flops"]
    fig, axes = plt.subplots(len(costs), len(rules), figsize=(5 * len(rules), 8), squeeze=False)
    for i, cost in enumerate(costs):
        for ax, rule in zip(axes[i], rules, strict=True):
            sub = frame[(frame["rule"] == rule) & frame["test_mcc"].notna()]
            for condition, group in sub.groupby(["architecture", "pretraining", "tokenizer"]):
                ax.scatter(group[cost], group["test_mcc"], s=25, label="/".join(condition))
            front = sub[sub["pareto"]]
            ax.scatter(front[cost], front["test_mcc"], s=110, facecolors="none",
                       edgecolors="k", label="Pareto front (per task)")
            ax.set(xlabel=cost.replace("_", " "), ylabel="mean test MCC",
                   title=f"pretraining charged: {rule}")
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
            ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _sentence(row) -> str:
    ci = f"[{row.ci_low:+.3f}, {row.ci_high:+.3f}]"
    p = "untested" if pd.isna(row.p_value) else f"p = {row.p_value:.3g} (Holm {row.p_holm:.3g})"
    return (f"{row.treatment} vs {row.baseline} ({_fixed(row)}): mean test MCC difference "
            f"{row.mean_difference:+.3f}, 95% CI {ci}, Wilcoxon {p}, P(improvement) "
            f"{row.prob_improvement:.2f} over {row.n_tasks} task(s): **{row.verdict}**")


def _fixed(row) -> str:
    return ", ".join(f"{a}={getattr(row, a)}" for a in analysis.AXES
                     if a != row.axis and isinstance(getattr(row, a, None), str))


def summarise(comps: pd.DataFrame, has_replicates: bool) -> list[str]:
    """Plain-language answers to the three questions, one paragraph each."""
    lines = []
    for axis, question in QUESTIONS.items():
        lines.append(f"**{question}**")
        rows = comps[comps["axis"] == axis] if not comps.empty else comps
        if not has_replicates:
            lines.append("No replicates were run (the study stopped after the search), so "
                         "there is no test-set comparison; see the dev-set budget table.")
        elif rows.empty:
            lines.append("The study has no pair of conditions along this axis.")
        else:
            significant = rows[rows["verdict"] == "significant"]
            lines.append(
                f"{len(significant)} of {len(rows)} comparison(s) significant after Holm "
                f"correction over all {len(comps)} comparisons (alpha 0.05)."
            )
            lines += [f"- {_sentence(r)}" for r in rows.itertuples()]
        lines.append("")
    return lines


def _markdown(frame: pd.DataFrame) -> str:
    """A Markdown table; the '|' inside cell names is escaped so it does not split columns."""
    escaped = frame.apply(
        lambda col: col.map(lambda v: v.replace("|", "\\|") if isinstance(v, str) else v)
    )
    return escaped.to_markdown(index=False, floatfmt=".4g")


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.stem)}">'


def _html(title: str, sections: list[tuple[str, str]]) -> str:
    body = "\n".join(f"<h2>{html.escape(h)}</h2>\n{content}" for h, content in sections)
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;}"
             "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;"
             "padding:2px 6px}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
            f"{body}</body></html>")


def _md_para(lines: list[str]) -> str:
    return "".join(
        f"<p>{html.escape(line).replace('**', '')}</p>" for line in lines if line.strip()
    )


def write_report(tracking_uri: str, study: str, out_dir: Path, sweep: str | None = None) -> Report:
    """Query MLflow for a study's latest sweep (or ``sweep``) and write every report file."""
    sweep = sweep or analysis.latest_sweep(tracking_uri, study)[1]
    all_runs = analysis.runs(tracking_uri, study, sweep)
    trial_runs = analysis.search_trials(all_runs)
    reps = analysis.replicates(all_runs)
    table = analysis.cells(trial_runs, all_runs if len(reps) else None)
    parity = analysis.budget_parity(table)
    table["budget_equal"] = table["cell"].map(parity)
    comps = analysis.comparisons(reps) if len(reps) else pd.DataFrame()
    pre_ids = analysis._column(all_runs, analysis.PRETRAIN_RUN, None).dropna().unique()
    costs = analysis.pretrain_costs(tracking_uri, list(pre_ids))
    benefit = analysis.cost_benefit(all_runs, costs)
    even = analysis.break_even(trial_runs, costs)
    curves = analysis.tuning_curves(trial_runs)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_table = table.copy()
    csv_table["best_params"] = csv_table["best_params"].map(lambda p: json.dumps(p, sort_keys=True))
    csv_table.to_csv(out / "cells.csv", index=False)
    reps.to_csv(out / "replicates.csv", index=False)
    comps.to_csv(out / "comparisons.csv", index=False)
    benefit.to_csv(out / "cost_benefit.csv", index=False)
    even.to_csv(out / "break_even.csv", index=False)
    plots = [out / "cost_vs_mcc.png"]
    plot_cost_vs_mcc(table, plots[0])
    if curves:
        plots.append(out / "tuning_curves.png")
        plot_tuning_curves(curves, plots[-1])
    if len(benefit) and benefit["test_mcc"].notna().any():
        plots.append(out / "cost_benefit.png")
        plot_cost_benefit(benefit, plots[-1])
    friedman_line = _friedman(reps, out, plots)

    summary = summarise(comps, has_replicates=bool(len(reps)))
    data_tags = analysis._column(all_runs, tag_column(Tag.DATA), "").dropna().unique()
    synthetic = any(str(v).startswith("synthetic") for v in data_tags)
    budget_note = ("All cells had the same budget." if all(parity.values()) else
                   "**Budgets differ**: comparisons involving cells marked False in "
                   "budget_equal are not fair.")
    shown = ["cell", "trials", "completed", "pruned", "failed", "max_epochs", "budget_equal",
             "best_dev_mcc", "device_hours", "wall_seconds", "flops"]
    shown += [c for c in ("replicates", "collapsed", "replicate_failures", "test_mcc")
              if c in table]
    lines = [f"# Study `{study}`", "",
             f"Sweep `{sweep}` in `{tracking_uri}`. Configurations are selected on dev; test is "
             "evaluated once per replicate of each cell's best configuration.", ""]
    if synthetic:
        lines += ["**Data: synthetic GUE-shaped sequences with planted motifs, not real GUE.**",
                  ""]
    lines += ["## The three questions", "", *summary, friedman_line, "",
              "## Budget per cell", "", budget_note, "",
              _markdown(table[shown]), ""]
    if len(even):
        lines += ["## Break-even of pretraining", "", _markdown(even), ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    (out / "report.md").write_text("\n".join(lines) + "\n")

    sections = [("The three questions", _md_para(summary + [friedman_line])),
                ("Budget per cell", _md_para([budget_note]) + table[shown].to_html(
                    index=False, float_format=lambda v: f"{v:.4g}")),
                ("Comparisons", comps.to_html(index=False, float_format=lambda v: f"{v:.4g}")
                 if len(comps) else "<p>No replicates, no test comparisons.</p>"),
                ("Break-even of pretraining", even.to_html(index=False) if len(even)
                 else "<p>No pretrained cells.</p>"),
                ("Plots", "".join(_image(p) for p in plots))]
    title = f"ablate study {study}" + (" (synthetic data)" if synthetic else "")
    (out / "report.html").write_text(_html(title, sections))
    return Report(folder=out, cells=table, sweep=sweep, comparisons=comps, summary=summary)


def _friedman(reps: pd.DataFrame, out: Path, plots: list[Path]) -> str:
    """Friedman test over all conditions (tasks as blocks), with a critical-difference plot."""
    from ablate.stats import friedman, plot_critical_difference

    usable = reps[~reps["failed"]].copy()
    if usable.empty:
        return ""
    usable["condition"] = usable[analysis.AXES].agg("/".join, axis=1)
    scores = usable.pivot_table(index="task", columns="condition", values="test_mcc").dropna()
    if scores.shape[1] < 3 or scores.shape[0] < 2:
        return ("Friedman test: needs at least 3 conditions on at least 2 complete tasks "
                f"(have {scores.shape[1]} on {scores.shape[0]}).")
    result = friedman(scores)
    plots.append(out / "critical_difference.png")
    plot_critical_difference(result, plots[-1])
    best = next(iter(result.mean_ranks))
    return (f"Friedman test over {scores.shape[1]} conditions and {result.n_tasks} tasks: "
            f"chi2 = {result.statistic:.3g}, p = {result.p_value:.3g}; best mean rank: {best}; "
            f"Nemenyi critical difference {result.critical_difference:.3g}.")
