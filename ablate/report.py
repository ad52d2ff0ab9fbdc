"""Render a study: ``report.md``, a self-contained ``report.html``, CSV tables and PNG plots.

The report opens with the headline contrast (each pretrained transformer with its own tokenizer
against the best convolutional model from scratch, task by task), then a plain-language answer
to the study's three questions (transformer vs convolution, what pretraining contributes, what
BPE does), each with its effect size, interval and Holm-adjusted p-value, and "not significant"
where it is not; then the study's further contrasts, the comparisons with both arms' parameter
counts, the tasks (metric, k-mer floor, caveats), what the pretraining corpora held of the
study's dev/test sequences, hyperparameters at an edge of their search range, the budget table
(and any cell whose budget differs), break-even, tuning curves and cost-benefit curves.

Scores are each task's own metric (MCC, or macro F1 for virus/covid); tables say which.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ablate import analysis
from ablate.importance import param_importances
from ablate.plots import (
    plot_compute_curves,
    plot_cost_benefit,
    plot_cost_vs_mcc,
    plot_tuning_curves,
)
from ablate.provenance import data_hashes, report_lines
from ablate.spec import HEADLINE_CONTRAST, Contrast
from ablate.tracking.schema import Tag, tag_column

QUESTIONS = {
    "architecture": "Do pretrained transformers beat convolutional models?",
    "pretraining": "What does pretraining itself contribute?",
    "tokenizer": "What does BPE tokenization do?",
}
SIZE_MARK = "‡"
EXTENSION_MARK = "†"
EXPOSURE_MARK = "§"
SIZE_NOTE = (f"{SIZE_MARK} the two arms' parameter counts differ by more than "
             f"{analysis.SIZE_MISMATCH:g}x: part of the difference may be model size, not design.")
EXTENSION_NOTE = (f"{EXTENSION_MARK} a convolutional model with a non-char tokenizer: ablate's own "
                  "extension (the released ConvNova reads single nucleotides only).")
EXPOSURE_TEXT = ("the external checkpoint's pretraining exposure to this study's dev/test "
                 "sequences is unknown")
EXPOSURE_NOTE = f"{EXPOSURE_MARK} {EXPOSURE_TEXT} (it was pretrained elsewhere)."
LEGEND = {SIZE_MARK: SIZE_NOTE, EXTENSION_MARK: EXTENSION_NOTE, EXPOSURE_MARK: EXPOSURE_NOTE}


@dataclass
class Report:
    folder: Path
    cells: pd.DataFrame
    sweep: str
    comparisons: pd.DataFrame = field(default_factory=pd.DataFrame)
    summary: list[str] = field(default_factory=list)
    contrasts: pd.DataFrame = field(default_factory=pd.DataFrame)
    headline: list[str] = field(default_factory=list)

    @property
    def markdown(self) -> Path:
        return self.folder / "report.md"


# --- sentences -------------------------------------------------------------------------------


def count_text(n: float) -> str:
    """A parameter count in short form: 1.69M, 12.3k, or ? when unknown."""
    try:
        n = float(n)
    except (TypeError, ValueError):
        return "?"
    if math.isnan(n):
        return "?"
    if n >= 1e9:
        return f"{n / 1e9:.3g}B"
    if n >= 1e6:
        return f"{n / 1e6:.3g}M"
    if n >= 1e3:
        return f"{n / 1e3:.3g}k"
    return f"{n:.0f}"


def marks(row) -> str:
    """The marks of a comparison or contrast row (see ``LEGEND``)."""
    out = ""
    if getattr(row, "size_mismatch", False):
        out += SIZE_MARK
    if getattr(row, "treatment_extension", False) or getattr(row, "baseline_extension", False):
        out += EXTENSION_MARK
    if getattr(row, "exposure_unknown", False):
        out += EXPOSURE_MARK
    return out


def legend(rows: pd.DataFrame) -> list[str]:
    """The one-line explanation of each mark the rows carry."""
    used = "".join(marks(r) for r in rows.itertuples())
    return [note for mark, note in LEGEND.items() if mark in used]


def _size_text(row) -> str:
    ratio = "" if pd.isna(row.size_ratio) else f", ratio {row.size_ratio:.2f}"
    mark = f" {SIZE_MARK}" if row.size_mismatch else ""
    return (f"{count_text(row.treatment_params)} vs {count_text(row.baseline_params)} "
            f"parameters{ratio}{mark}")


def _interval_text(row) -> str:
    """``95% interval [-0.66, -0.19] over 3 tasks x 3 seeds (rough: ...)``: n beside every
    interval, and no bare "95%" from fewer than ``stats.MIN_RESAMPLING_UNITS`` tasks."""
    from ablate.stats import MIN_RESAMPLING_UNITS

    ci = f"[{row.ci_low:+.3f}, {row.ci_high:+.3f}]"
    sample = getattr(row, "sample", "") or f"{row.n_tasks} task(s)"
    n_tasks = int(row.n_tasks)
    if n_tasks == 1:
        label = "interval over the seeds of its one task"
    elif n_tasks < MIN_RESAMPLING_UNITS:
        label = f"rough interval (only {n_tasks} tasks to resample, not a calibrated 95%)"
    else:
        label = "95% interval"
    return f"{label} {ci} over {sample}"


def verdict_text(row) -> str:
    """The verdict of a comparison row in words; an underpowered one says why and what
    it would take."""
    if row.verdict == "underpowered":
        if int(row.n_tasks) < 2:
            return (f"**underpowered**: {int(row.n_tasks)} task, no test possible; read the "
                    "effect and its interval")
        holm = ""
        if getattr(row, "family_size", 1) and int(row.family_size) > 1:
            holm = (f" ({min(float(row.p_holm_floor), 1.0):.3g} after Holm over "
                    f"{int(row.family_size)} comparisons)")
        return (f"**underpowered**: {int(row.n_tasks)} tasks, smallest attainable p = "
                f"{float(row.p_floor):.3g}{holm}, so no result could reach 0.05; read the "
                f"effect and its interval (at least {int(row.tasks_needed)} tasks are needed "
                "before any comparison of this family can)")
    if row.verdict == "refused":
        return "**refused**: budgets differ or the sweep has not finished"
    return f"**{row.verdict}**"


def _stats_text(row) -> str:
    p = "untested" if pd.isna(row.p_value) else f"p = {row.p_value:.3g} (Holm {row.p_holm:.3g})"
    metric = row.metric.replace("+", " / ")
    return (f"mean test score difference ({metric}) {row.mean_difference:+.3f}, "
            f"{_interval_text(row)}, Wilcoxon {p}, P(improvement) {row.prob_improvement:.2f}")


def _arm(name: str, extension: bool) -> str:
    return f"{name} {EXTENSION_MARK}" if extension else name


def _exposure_text(row) -> str:
    return f"; {EXPOSURE_MARK} {EXPOSURE_TEXT}" if row.exposure_unknown else ""


def _comparison_text(head: str, row) -> str:
    """A comparison or contrast row in words, after its ``head`` (what is compared)."""
    if row.verdict == "refused":
        return f"{head}: {verdict_text(row)}{_refused_text(row)}"
    return (f"{head}: {_stats_text(row)}; {_size_text(row)}: {verdict_text(row)}"
            f"{_exposure_text(row)}{_refused_text(row)}")


def _sentence(row) -> str:
    return _comparison_text(f"{_arm(row.treatment, bool(row.treatment_extension))} vs "
                            f"{_arm(row.baseline, bool(row.baseline_extension))} "
                            f"({_fixed(row)})", row)


def _refused_text(row) -> str:
    refused = getattr(row, "refused", "")
    return f"; left out: {refused}" if isinstance(refused, str) and refused else ""


def _contrast_sentence(row) -> str:
    return _comparison_text(f"{_arm(row.treatment, bool(row.treatment_extension))} vs "
                            f"{_arm(row.control, bool(row.baseline_extension))}", row)


def tally(rows: pd.DataFrame, family_size: int, what: str = "comparison") -> str:
    """``0 of 4 comparison(s) significant after Holm over all 20 (alpha 0.05); 4
    underpowered``: the count of each verdict, underpowered ones apart from the others."""
    counts = rows["verdict"].value_counts()
    line = (f"{int(counts.get('significant', 0))} of {len(rows)} {what}(s) significant after "
            f"Holm correction over all {family_size} {what} rows (alpha 0.05)")
    extra = [f"{int(counts[v])} {v}" for v in ("underpowered", "not significant", "refused")
             if counts.get(v, 0)]
    return line + (f"; {', '.join(extra)}." if extra else ".")


def _fixed(row) -> str:
    return ", ".join(f"{a}={getattr(row, a)}" for a in analysis.AXES
                     if a != row.axis and isinstance(getattr(row, a, None), str))


def summarise(comps: pd.DataFrame, has_replicates: bool) -> list[str]:
    """Plain-language answers to the three questions, one paragraph each."""
    lines = []
    for axis, question in QUESTIONS.items():
        lines.append(f"**{question}**")
        rows = comps[comps["axis"] == axis] if not comps.empty else comps
        if axis == "architecture":
            lines.append("Architectures are compared with pretraining and tokenizer held fixed; "
                         "the k-mer baseline is the floor, in neither group. The headline "
                         "contrast above varies all three together.")
        if not has_replicates:
            lines.append("No replicates were run (the study stopped after the search), so "
                         "there is no test-set comparison; see the dev-set budget table.")
        elif rows.empty:
            lines.append("The study has no pair of conditions along this axis with the other "
                         "two held fixed.")
        else:
            lines.append(tally(rows, len(comps)))
            lines += [f"- {_sentence(r)}" for r in rows.itertuples()]
        lines.append("")
    return lines


def summarise_contrasts(rows: pd.DataFrame, pattern: Contrast, has_replicates: bool,
                        treated: Sequence[str], controls: Sequence[str],
                        family_size: int) -> list[str]:
    """One contrast in words: its sides, then one sentence per treatment (and control)."""
    lines = [f"Each cell of [{analysis.pattern_text(pattern.treatment)}] against "
             + ("the best (by dev score, on each task) of "
                if pattern.control_choice == "best" else "each of ")
             + f"[{analysis.pattern_text(pattern.control)}] on the same task, paired by "
             "replicate seed."]
    if not has_replicates:
        lines.append("No replicates were run, so there is no test-set contrast.")
    elif not len(treated):
        lines.append(f"The study has no cell on the treatment side "
                     f"({analysis.pattern_text(pattern.treatment)}).")
    elif not len(controls):
        lines.append(f"The study has no cell on the control side "
                     f"({analysis.pattern_text(pattern.control)}).")
    elif rows.empty:
        lines.append("No task has replicates of both sides with the same seeds.")
    else:
        lines.append(tally(rows, family_size, "contrast"))
        lines += [f"- {_contrast_sentence(r)}" for r in rows.itertuples()]
    lines.append("")
    return lines


# --- rendering -------------------------------------------------------------------------------


def _markdown(frame: pd.DataFrame) -> str:
    """A Markdown table; the '|' inside cell names is escaped so it does not split columns."""
    escaped = frame.apply(
        lambda col: col.map(lambda v: v.replace("|", "\\|") if isinstance(v, str) else v)
    )
    return escaped.to_markdown(index=False, floatfmt=".4g")


def _table_html(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="")


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


def _inline(line: str) -> str:
    """One Markdown line as HTML: escaped, with **bold** and `code` rendered."""
    import re

    text = html.escape(line)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def _md_para(lines: list[str]) -> str:
    """Paragraphs, and runs of ``- `` lines as one bulleted list."""
    out, items = [], []
    for line in [*lines, ""]:
        if line.startswith("- "):
            items.append(f"<li>{_inline(line[2:])}</li>")
            continue
        if items:
            out.append(f"<ul>{''.join(items)}</ul>")
            items = []
        if line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    return "".join(out)


@dataclass
class _Section:
    """One section of both renderings: paragraphs, then optional tables, then more text."""

    title: str
    lines: list[str] = field(default_factory=list)
    tables: list[pd.DataFrame] = field(default_factory=list)
    after: list[str] = field(default_factory=list)

    def markdown(self) -> list[str]:
        out = [f"## {self.title}", "", *self.lines]
        for table in self.tables:
            out += ["", _markdown(table), ""]
        return [*out, *self.after, ""]

    def html(self) -> tuple[str, str]:
        return self.title, (_md_para(self.lines) + "".join(_table_html(t) for t in self.tables)
                            + _md_para(self.after))


def _with_marks(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    out.insert(1, "marks", [marks(r) for r in frame.itertuples()])
    for column in ("treatment_params", "baseline_params"):
        out[column] = out[column].map(count_text)
    return out


def _comparison_section(comps: pd.DataFrame) -> _Section:
    section = _Section("Comparisons")
    if comps.empty:
        section.lines = ["No replicates or no pair of conditions, so no test comparisons."]
        return section
    shown = ["comparison", "metric", "mean_difference", "ci_low", "ci_high", "sample",
             "p_value", "p_floor", "p_holm", "p_holm_floor", "verdict", "treatment_params",
             "baseline_params", "size_ratio", "refused"]
    section.lines = ["Each row pairs two conditions task by task and seed by seed on the "
                     "task's score (a model failure counts as score 0 against its arm; an "
                     "infrastructure failure drops that seed's pair). The interval is a "
                     "hierarchical bootstrap over tasks, then seeds within each task; sample "
                     "gives its size. p_floor is the smallest p the exact Wilcoxon test can give "
                     "with that many tasks, p_holm_floor the same after Holm: a row whose "
                     "p_holm_floor exceeds 0.05 is underpowered, whatever its data. Parameter "
                     "counts are the median over each arm's compared runs.", *legend(comps)]
    shown = [c for c in shown if c in comps]
    section.tables = [_with_marks(comps)[["comparison", "marks", *shown[1:]]]]
    return section


def _contrast_tables(contr: pd.DataFrame, per_task: pd.DataFrame) -> list[pd.DataFrame]:
    tables = []
    if len(contr):
        shown = ["comparison", "marks", "metric", "mean_difference", "ci_low", "ci_high",
                 "sample", "p_holm", "p_holm_floor", "verdict", "treatment_params",
                 "baseline_params", "size_ratio"]
        shown = [c for c in shown if c in contr or c == "marks"]
        tables.append(_with_marks(contr)[shown].rename(columns={"baseline_params":
                                                                "control_params"}))
    if len(per_task):
        tables.append(per_task[["task", "treatment_cell", "control_cell", "control_dev_score",
                                "seeds", "treatment_test", "control_test", "difference"]])
    return tables


def _parity_section(table: pd.DataFrame, refused: dict[str, str],
                    trials_per_cell: int | None,
                    replicates_per_cell: int | None = None) -> _Section:
    """Before any comparison: which cells are unfinished or unlike the others, and so left
    out of every comparison, and which still miss replicates."""
    section = _Section("Budget parity")
    budget = (f"{trials_per_cell} trials per cell" if trials_per_cell is not None
              else "the most common trial count (no spec given to say the budget)")
    if table.empty:
        section.lines = ["No search trials yet."]
    elif not refused:
        section.lines = [f"Every cell finished its budget ({budget}, counting completed, pruned "
                         "and model-failed trials; infrastructure failures are re-issued), and "
                         "every cell of a task had the same epoch budget."]
    else:
        section.lines = [f"**{len(refused)} of {len(table)} cell(s) are left out of every "
                         f"comparison**: their budget is unfinished or unlike the others' "
                         f"(target: {budget}). Comparisons name the tasks this removed."]
        section.tables = [pd.DataFrame({"cell": list(refused), "reason": list(refused.values())})]
    if replicates_per_cell and len(table):
        have = (table["replicates"].fillna(0).astype(int) if "replicates" in table
                else pd.Series(0, index=table.index))
        short = table[have < replicates_per_cell].assign(replicates=have)
        if len(short):
            section.after = [f"**{len(short)} cell(s) have fewer replicates than the "
                             f"{replicates_per_cell} asked for** (the replicate stage has not "
                             "finished, or replicates are still to run): their comparisons use "
                             "only the seeds both arms have. "
                             + "; ".join(f"{r.cell}: {r.replicates} of {replicates_per_cell}"
                                         for r in short.itertuples())]
    return section


def _selection_section(table: pd.DataFrame) -> _Section:
    """What selecting on a small dev set costs: per cell, the selected configuration's dev
    score minus its replicates' mean test score."""
    section = _Section("Selection on dev: the dev-to-test gap")
    if "selection_gap" not in table or table["selection_gap"].isna().all():
        section.lines = ["No replicates with test scores, so no dev-to-test gap."]
        return section
    gaps = table.dropna(subset=["selection_gap"])
    section.lines = [
        f"The configuration chosen on dev scored {gaps['selection_gap'].mean():+.3f} higher on "
        f"dev than its replicates scored on test, on average over {len(gaps)} cell(s) (median "
        f"{gaps['selection_gap'].median():+.3f}): the optimism of picking the best of a "
        "search on a small dev set, plus the dev/test shift."]
    section.tables = [gaps[["cell", "metric", "best_dev_score", "test_score", "test_ci_low",
                            "test_ci_high", "test_n", "selection_gap"]]]
    return section


def _provenance(tracking_uri: str, study: str, sweep: str) -> dict | None:
    """The sweep's provenance, or None for a sweep written before it was recorded."""
    from ablate.errors import AblateError
    from ablate.tracking.reader import provenance

    try:
        return provenance(tracking_uri, study, sweep)
    except AblateError:
        return None


def _provenance_section(origin: dict | None) -> _Section:
    section = _Section("Provenance")
    if origin is None:
        section.lines = ["This sweep recorded no provenance (it was written by an ablate that "
                         "did not)."]
        return section
    section.lines = ["What a referee needs to check this study, recorded in MLflow on the "
                     "sweep's own run (artifacts under `provenance/`: the spec as written, each "
                     "cell's search space, versions, data hashes in `data_hashes.csv`, hardware "
                     "and every configuration the searcher suggested):", *report_lines(origin)]
    return section


def _importance_section(weights: pd.DataFrame) -> _Section:
    """Which hyperparameters mattered, per cell with enough completed trials."""
    section = _Section("Which hyperparameters mattered")
    scored = weights[weights["importance"].notna()] if len(weights) else weights
    evaluator = (scored["evaluator"].iloc[0] if len(scored) else
                 "Optuna's fANOVA importance evaluator")
    few = weights[weights["importance"].isna()]["cell"].nunique() if len(weights) else 0
    if scored.empty:
        section.lines = [f"No cell has enough completed search trials for {evaluator} "
                         f"(at least 10; {few} cell(s) have fewer), so no importances."]
        return section
    section.lines = [f"{evaluator} over each cell's completed search trials (their best dev "
                     "score), rebuilt from MLflow; importances sum to 1 per cell. "
                     + (f"{few} cell(s) with fewer than 10 completed trials are left out."
                        if few else "")]
    section.tables = [scored[["cell", "parameter", "importance", "n_trials"]]]
    return section


COST_UNITS = ("price", "flops", "cpu_core_hours", "gpu_hours")


def _cost_section(benefit: pd.DataFrame, prices: dict[str, float] | None) -> _Section:
    """Cost-benefit with one unit per column: money, FLOPs, CPU core-hours, GPU-hours."""
    section = _Section("Cost-benefit")
    if benefit.empty:
        section.lines = ["No runs with costs yet."]
        return section
    table = (", ".join(f"{k}: {v:g}/h" for k, v in prices.items()) if prices
             else "none given")
    section.lines = [
        "Test score against cost per cell: its search trials, its replicates and its share of "
        "pretraining under each rule (none, per-task: divided among the tasks using the "
        "checkpoint, full). Each column holds one unit: money (each run's own price, else its "
        "device-hours at the spec's price for its device, matched by name, then by kind), "
        "FLOPs, CPU core-hours and GPU-hours, never added together. The Pareto front of each "
        f"task and rule is taken on money where every point is priced, else on FLOPs. Prices: "
        f"{table}."]
    unpriced = sorted({u for u in benefit["unpriced"] if isinstance(u, str) and u})
    if unpriced:
        section.lines.append(f"**Unpriced** (money left blank, not counted as 0): "
                             f"{'; '.join(unpriced)}.")
    assumed = sorted({u for u in benefit.get("assumed_device_type", []) if
                      isinstance(u, str) and u})
    if assumed:
        section.lines.append(f"Device kind assumed: {'; '.join(assumed)}.")
    shown = ["cell", "rule", "metric", "test_score", *COST_UNITS, "pareto", "pareto_axis"]
    section.tables = [benefit[[c for c in shown if c in benefit]]]
    return section


def _break_even_section(even: pd.DataFrame) -> _Section:
    section = _Section("Break-even of pretraining")
    section.lines = [
        "Per pretrained cell: the tasks that must share its pretraining before pretraining plus "
        "the pretrained search costs no more than what the from-scratch search spent to reach "
        "the same dev score, in money and in FLOPs (device-hours of different kinds are never "
        "compared)."]
    shown = ["architecture", "tokenizer", "pretraining", "task", "metric", "target_dev_score",
             "pretrain_price", "verdict_price", "pretrain_flops", "verdict_flops", "unpriced"]
    section.tables = [even[[c for c in shown if c in even]]]
    return section


def _equal_compute_section(at_equal: pd.DataFrame) -> _Section:
    """Each cell's best dev score at the task's common search FLOPs, beside its best at equal
    trials: a large model spends many times a small one's compute on the same trial budget."""
    section = _Section("Equal compute, beside equal trials")
    if at_equal.empty:
        section.lines = ["No search trials with FLOPs yet."]
        return section
    section.lines = [
        "Per task, the common budget is the smallest total search FLOPs among its model cells "
        "(budget_cell; the k-mer floor does not set it). Each cell's best dev score within that "
        "budget (its trials in start order) stands beside its best over all its trials; blank "
        "where even its first trial exceeds the budget. Dev scores, so selection, not test."]
    shown = ["task", "cell", "budget_flops", "budget_cell", "total_flops",
             "trials_within_budget", "trials", "best_dev_score_at_budget", "best_dev_score"]
    section.tables = [at_equal[[c for c in shown if c in at_equal]]]
    return section


def _tasks_section(table: pd.DataFrame, floor: pd.DataFrame, notes: pd.DataFrame) -> _Section:
    section = _Section("Tasks: metric, k-mer floor and caveats")
    if table.empty:
        section.lines = ["No cells."]
        return section
    rows = []
    for task, group in table.groupby("task", sort=True):
        own = floor[floor["task"] == task]
        note = notes[notes["task"] == task]
        rows.append({
            "task": task,
            "metric": "+".join(sorted(set(group["metric"]))),
            "k-mer floor (test)": ("; ".join(
                f"{c}: {s:.4g}" if pd.notna(s) else f"{c}: no replicates"
                for c, s in zip(own["cell"], own["test_score"], strict=True)) or "none run"),
            "caveat": " ".join(note["caveat"]),
            "caveat figures": " ".join(note["figures"]),
        })
    section.lines = [
        "Each task is scored with its own metric (MCC, or macro F1 for virus/covid); runs "
        "written before the task metrics were logged are scored with MCC. The k-mer baseline "
        "is the floor a model must clear on each task; it is in neither group of the "
        "transformer-vs-convolution question."]
    section.tables = [pd.DataFrame(rows)]
    return section


def _leakage_section(leaks: pd.DataFrame, uses: dict[str, str]) -> _Section:
    section = _Section("Pretraining corpora: leakage and exposure")
    if leaks.empty:
        section.lines = ["No cell starts from a pretrained model."]
        return section
    shown = leaks.assign(used_by=leaks["run_id"].map(uses).fillna(""))
    section.lines = [
        "Per pretraining run used: its corpus size, the corpus sequences removed as leaked "
        "(equal to, containing or contained in a dev/test sequence of a study task, or its "
        "reverse complement) and, per task, how many of that task's dev/test sequences the "
        "corpus held before filtering."]
    section.tables = [shown[["name", "kind", "used_by", "corpus_sequences", "leaked_removed",
                             "exposure"]]]
    if (leaks["kind"] == analysis.EXTERNAL_KIND).any():
        section.after = [f"{EXPOSURE_MARK} External checkpoints were pretrained elsewhere, on "
                         f"corpora this study did not filter: {EXPOSURE_TEXT}."]
    return section


def _edge_section(table: pd.DataFrame, has_spaces: bool) -> _Section:
    section = _Section("Hyperparameters at an edge of their search range")
    flagged = table[table["at_edge"].astype(bool)] if "at_edge" in table else table.head(0)
    if not has_spaces:
        section.lines = ["The cell runs carry no search ranges, so no edge check was made."]
    elif flagged.empty:
        section.lines = ["No cell's best configuration sits at an edge of its search range."]
    else:
        section.lines = [
            f"{len(flagged)} cell(s) have a best value within "
            f"{analysis.EDGE_MARGIN:.0%} of an end of its range (of its log width for log "
            "ranges; a low of 0 is a natural bound, not an edge): the best may lie outside "
            "the searched range, so widen it and search again before trusting these cells."]
        section.tables = [flagged[["cell", "best_dev_score", "at_edge"]]]
    return section


def _patterns(extra: Sequence[Contrast]) -> list[Contrast]:
    """The headline contrast first, then the spec's (one per name)."""
    out = {HEADLINE_CONTRAST.name: HEADLINE_CONTRAST}
    for pattern in extra:
        out.setdefault(pattern.name, pattern)
    return list(out.values())


def _cell_view(table: pd.DataFrame) -> pd.DataFrame:
    view = table.copy()
    view["cell"] = [f"{c} {EXTENSION_MARK}" if e else c
                    for c, e in zip(view["cell"], view["extension"], strict=True)]
    view["n_params"] = view["n_params"].map(count_text)
    return view


def write_report(tracking_uri: str, study: str, out_dir: Path, sweep: str | None = None,
                 contrasts: Sequence[Contrast] = (), trials_per_cell: int | None = None,
                 replicates_per_cell: int | None = None,
                 prices: dict[str, float] | None = None) -> Report:
    """Query MLflow for a study's latest sweep (or ``sweep``) and write every report file.

    ``contrasts`` are the study's own (``StudySpec.contrasts``); ``HEADLINE_CONTRAST`` is
    always computed and stated first. ``trials_per_cell`` (the spec's budget) lets the report
    tell an unfinished sweep from a finished one; cells whose budget is unfinished or unlike
    the others' are listed first and left out of every comparison; with
    ``replicates_per_cell`` (the spec's replicate count) cells still missing replicates are
    listed there too (their comparisons use the seeds both arms have). ``prices`` (the spec's
    price table) prices runs that logged no price of their own.
    """
    sweep = sweep or analysis.latest_sweep(tracking_uri, study)[1]
    all_runs = analysis.runs(tracking_uri, study, sweep)
    trial_runs = analysis.search_trials(all_runs)
    reps = analysis.replicates(all_runs)
    table = analysis.cells(trial_runs, all_runs if len(reps) else None, cell_runs=all_runs,
                           trials_per_cell=trials_per_cell)
    parity = analysis.budget_parity(table, trials_per_cell=trials_per_cell)
    table["budget_equal"] = table["cell"].map(parity)
    refused = analysis.refused_cells(table, trials_per_cell=trials_per_cell)
    table["refused"] = table["cell"].map(refused).fillna("")
    comps = analysis.comparisons(reps, refused=refused) if len(reps) else pd.DataFrame()
    patterns = _patterns(contrasts)
    contr = analysis.contrasts(reps, table, patterns, refused=refused)
    per_task = analysis.contrast_tasks(reps, table, patterns)
    linked = all_runs.assign(link=analysis._column(all_runs, analysis.PRETRAIN_RUN, None))
    pre_ids = list(linked["link"].dropna().unique())
    costs = analysis.pretrain_costs(tracking_uri, pre_ids, prices=prices)
    leaks = analysis.leakage(analysis.pretraining_runs(tracking_uri, pre_ids))
    uses = {link: ", ".join(sorted(set(group[tag_column(Tag.PRETRAINING)].dropna())))
            for link, group in linked.dropna(subset=["link"]).groupby("link")}
    benefit = analysis.cost_benefit(all_runs, costs, prices=prices)
    even = analysis.break_even(trial_runs, costs, prices=prices)
    curves = analysis.tuning_curves(trial_runs)
    spent = analysis.compute_curves(trial_runs, prices=prices)
    at_equal = analysis.equal_compute(trial_runs)
    floor = analysis.kmer_floor(table)
    notes = analysis.caveats(all_runs)
    weights = param_importances(trial_runs, all_runs)
    origin = _provenance(tracking_uri, study, sweep)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_table = table.copy()
    csv_table["best_params"] = csv_table["best_params"].map(lambda p: json.dumps(p, sort_keys=True))
    csv_table.to_csv(out / "cells.csv", index=False)
    reps.to_csv(out / "replicates.csv", index=False)
    comps.to_csv(out / "comparisons.csv", index=False)
    contr.to_csv(out / "contrasts.csv", index=False)
    per_task.to_csv(out / "contrast_tasks.csv", index=False)
    benefit.to_csv(out / "cost_benefit.csv", index=False)
    even.to_csv(out / "break_even.csv", index=False)
    at_equal.to_csv(out / "equal_compute.csv", index=False)
    weights.to_csv(out / "importance.csv", index=False)
    if origin is not None:
        data_hashes(origin).to_csv(out / "data_hashes.csv", index=False)
    spent.to_csv(out / "compute_curves.csv", index=False)
    leaks.to_csv(out / "leakage.csv", index=False)
    plots = [out / "cost_vs_mcc.png"]
    plot_cost_vs_mcc(table, plots[0])
    if curves:
        plots.append(out / "tuning_curves.png")
        plot_tuning_curves(curves, plots[-1])
    if len(spent):
        plots.append(out / "compute_curves.png")
        plot_compute_curves(spent, plots[-1])
    if len(benefit) and benefit["test_score"].notna().any():
        plots.append(out / "cost_benefit.png")
        plot_cost_benefit(benefit, plots[-1])
    friedman_line = _friedman(reps, out, plots)

    has_reps = bool(len(reps))
    summary = summarise(comps, has_replicates=has_reps)
    blocks = []
    for pattern in patterns:
        rows = contr[contr["contrast"] == pattern.name] if len(contr) else contr
        tasks = per_task[per_task["contrast"] == pattern.name]
        section = _Section(("Headline: " if pattern is HEADLINE_CONTRAST else "Contrast: ")
                           + pattern.name)
        section.lines = summarise_contrasts(
            rows, pattern, has_reps, analysis.matching_cells(reps, table, pattern.treatment),
            analysis.matching_cells(reps, table, pattern.control), len(contr))
        section.tables = _contrast_tables(rows, tasks)
        if len(rows):
            section.after = [f"Holm over the {len(contr)} contrast rows (one family, apart from "
                             "the single-axis comparisons).", *legend(rows)]
        blocks.append(section)
    headline = blocks[0].lines
    data_tags = analysis._column(all_runs, tag_column(Tag.DATA), "").dropna().unique()
    synthetic = any(str(v).startswith("synthetic") for v in data_tags)
    budget_note = ("All cells had the same budget." if all(parity.values()) else
                   "**Budgets differ**: cells marked False in budget_equal are left out of "
                   "every comparison (listed under Budget parity).")
    shown = ["cell", "family", "metric", "budget_trials", "completed", "pruned",
             "model_failed", "failed", "running", "max_epochs", "budget_equal",
             "best_dev_score", "n_params", "device_hours", "wall_seconds", "flops"]
    shown += [c for c in ("replicates", "replicate_model_failures", "replicate_failures",
                          "collapsed", "test_score", "test_ci_low", "test_ci_high", "test_n",
                          "selection_gap") if c in table]
    extension = [EXTENSION_NOTE] if table["extension"].any() else []
    budget = _Section("Budget per cell", [budget_note, *extension], [_cell_view(table)[shown]])
    questions = _Section("The three questions", [*summary, friedman_line])
    sections = [_parity_section(table, refused, trials_per_cell, replicates_per_cell),
                blocks[0], questions,
                *blocks[1:], _comparison_section(comps), _selection_section(table),
                _tasks_section(table, floor, notes), _leakage_section(leaks, uses),
                _edge_section(table, bool(analysis.search_spaces(all_runs))), budget]
    sections.insert(sections.index(budget), _importance_section(weights))
    sections += [_equal_compute_section(at_equal), _cost_section(benefit, prices)]
    if len(even):
        sections.append(_break_even_section(even))
    sections.append(_provenance_section(origin))

    lines = [f"# Study `{study}`", "",
             f"Sweep `{sweep}` in `{tracking_uri}`. Configurations are selected on dev; test is "
             "evaluated once per replicate of each cell's best configuration. Scores are each "
             "task's own metric (the metric column says which).", ""]
    if synthetic:
        lines += ["**Data: synthetic GUE-shaped sequences with planted motifs, not real GUE.**",
                  ""]
    for section in sections:
        lines += section.markdown()
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    (out / "report.md").write_text("\n".join(lines) + "\n")

    rendered = [s.html() for s in sections] + [("Plots", "".join(_image(p) for p in plots))]
    title = f"ablate study {study}" + (" (synthetic data)" if synthetic else "")
    (out / "report.html").write_text(_html(title, rendered))
    return Report(folder=out, cells=table, sweep=sweep, comparisons=comps, summary=summary,
                  contrasts=contr, headline=headline)


def _friedman(reps: pd.DataFrame, out: Path, plots: list[Path]) -> str:
    """Friedman test over all conditions (tasks as blocks), with a critical-difference plot."""
    from ablate.stats import friedman, plot_critical_difference

    usable = reps[~reps["failed"]].copy()
    if usable.empty:
        return ""
    usable["condition"] = usable[analysis.AXES].agg("/".join, axis=1)
    scores = usable.pivot_table(index="task", columns="condition", values="test_score").dropna()
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
