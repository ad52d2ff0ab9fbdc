"""Render a study: ``report.md``, a self-contained ``report.html``, CSV tables and PNG plots.

An unfinished sweep says so first, in one line naming each cell short of its budget. The
report then opens with budget parity and the headline contrast (each pretrained transformer
with its own tokenizer against the best convolutional model from scratch, task by task), then
a plain-language answer
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
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ablate import analysis
from ablate.data import reference
from ablate.importance import param_importances
from ablate.plots import (
    condition_colours,
    condition_labels,
    plot_compute_curves,
    plot_cost_benefit,
    plot_cost_vs_mcc,
    plot_forest,
    plot_tuning_curves,
)
from ablate.provenance import data_hashes, report_lines
from ablate.spec import HEADLINE_CONTRAST, Contrast
from ablate.tracking.reader import SweepInfo, SweepState
from ablate.tracking.schema import Stage, Tag, tag_column

QUESTIONS = {
    "architecture": "Do pretrained transformers beat convolutional models?",
    "pretraining": "What does pretraining itself contribute?",
    "tokenizer": "What does BPE tokenization do?",
}
ANSWERS = "Answers"
SHORT_QUESTIONS = {
    "architecture": "Architecture (transformer vs convolution)",
    "pretraining": "Pretraining",
    "tokenizer": "Tokenizer (BPE vs single nucleotides or k-mers)",
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
    unfinished: list[str] = field(default_factory=list)  # the top line of an unfinished sweep

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


# --- the answers at the top -----------------------------------------------------------------


def _verdict_short(row) -> str:
    if row.verdict == "underpowered":
        if int(row.n_tasks) < 2:
            return "underpowered (one task: no test possible)"
        return (f"underpowered ({int(row.n_tasks)} tasks: no p below "
                f"{float(row.p_floor):.3g} is attainable)")
    if row.verdict == "significant":
        return f"significant after Holm (p = {row.p_holm:.3g})"
    if row.verdict == "not significant":
        return f"not significant after Holm (p = {row.p_holm:.3g})"
    return str(row.verdict)


def _direction(row, treatment: str, baseline: str) -> str:
    if row.ci_low > 0:
        return f"{treatment} scores higher"
    if row.ci_high < 0:
        return f"{baseline} scores higher"
    return "the interval includes no difference"


def _effect_text(row) -> str:
    return (f"{row.mean_difference:+.3f} [{row.ci_low:+.3f}, {row.ci_high:+.3f}] over "
            f"{row.sample}")


def _answer_label(row, axis: str) -> str:
    if axis in QUESTIONS:
        return f"{row.treatment} vs {row.baseline} ({_fixed(row)})"
    return f"{row.treatment} vs {row.control}"


def answer_sentence(question: str, rows: pd.DataFrame, axis: str) -> str:
    """One sentence answering one question from its comparison rows."""
    head = f"**{question}**"
    if rows.empty:
        return f"{head} The study has no pair of conditions to answer it."
    usable = rows[rows["verdict"] != "refused"]
    if usable.empty:
        return (f"{head} Not answered: all {len(rows)} comparison(s) were refused (budgets "
                "differ or the sweep has not finished; see Budget parity).")
    metric = "/".join(sorted({m for v in usable["metric"] for m in str(v).split("+")}))
    if len(usable) == 1:
        row = next(usable.itertuples())
        label = _answer_label(row, axis)
        baseline = row.baseline if axis in QUESTIONS else "the control"
        return (f"{head} {label}: paired test-score difference ({metric}) "
                f"{_effect_text(row)}; {_direction(row, row.treatment, baseline)}; "
                f"{_verdict_short(row)}.")
    counts = usable["verdict"].value_counts()
    ordered = usable.sort_values("mean_difference")
    low, high = next(ordered.head(1).itertuples()), next(ordered.tail(1).itertuples())
    said = ", ".join(f"{int(counts[v])} {v}" for v in ("significant", "not significant",
                                                        "underpowered") if counts.get(v, 0))
    refused = len(rows) - len(usable)
    return (f"{head} {len(usable)} comparisons ({said}"
            + (f"; {refused} refused" if refused else "")
            + f"); paired test-score differences ({metric}) run from "
            f"{_answer_label(low, axis)} {_effect_text(low)} to "
            f"{_answer_label(high, axis)} {_effect_text(high)}.")


def _answer_table(rows: pd.DataFrame, axis: str) -> pd.DataFrame:
    usable = rows[rows["verdict"] != "refused"]
    return pd.DataFrame({
        "comparison": [_answer_label(r, axis) for r in usable.itertuples()],
        "marks": [marks(r) for r in usable.itertuples()],
        "difference": usable["mean_difference"].to_numpy(),
        "interval": [f"[{r.ci_low:+.3f}, {r.ci_high:+.3f}]" for r in usable.itertuples()],
        "sample": usable["sample"].to_numpy(),
        "p (Holm)": usable["p_holm"].to_numpy(),
        "verdict": usable["verdict"].to_numpy(),
    })


def _treatment_condition(row, axis: str) -> str:
    if axis not in QUESTIONS:
        return str(row.treatment)
    return "/".join(str(row.treatment) if a == axis else str(getattr(row, a))
                    for a in analysis.AXES)


def _forest_rows(rows: pd.DataFrame, axis: str) -> pd.DataFrame:
    usable = rows[rows["verdict"] != "refused"]
    return usable.assign(
        label=[_answer_label(r, axis) for r in usable.itertuples()],
        condition=[_treatment_condition(r, axis) for r in usable.itertuples()])


def _answers_section(comps: pd.DataFrame, per_task: pd.DataFrame, headline: pd.DataFrame,
                     headline_tasks: pd.DataFrame, has_replicates: bool, out: Path,
                     colours: dict) -> _Section:
    """The report's first section: one sentence per question (and the headline contrast),
    a compact table of its comparisons, then one forest plot per question."""
    section = _Section(ANSWERS)
    if not has_replicates:
        section.lines = ["No replicates were run (the study stopped after the search), so no "
                         "question has a test-set answer yet; the budget table below has the "
                         "dev scores."]
        return section
    section.lines = ["Each answer is a paired test-score difference (treatment - baseline, "
                     "task by task and seed by seed) with its interval, the sample behind it "
                     "and its verdict after Holm's correction; details, parameter counts and "
                     "caveats follow below."]
    questions = [(axis, SHORT_QUESTIONS[axis] + ": " + QUESTIONS[axis],
                  comps[comps["axis"] == axis] if len(comps) else comps, per_task)
                 for axis in QUESTIONS]
    questions.insert(0, ("headline", "The headline contrast: " + HEADLINE_CONTRAST.name, headline,
                         headline_tasks))
    for axis, question, rows, _ in questions:
        if axis == "headline" and rows.empty:
            continue
        section.lines.append(f"- {answer_sentence(question, rows, axis)}")
    used = pd.concat([comps, headline], ignore_index=True) if len(comps) or len(headline) \
        else comps
    section.lines += ["", *legend(used)] if len(used) else []
    for axis, question, rows, tasks in questions:
        if rows.empty or (rows["verdict"] == "refused").all():
            continue
        part = _Section(question, level=3)
        part.tables = [_answer_table(rows, axis)]
        path = out / f"forest_{axis}.png"
        plot_forest(_forest_rows(rows, axis), tasks, path, question, colours)
        part.figures = [(path, "Forest plot. Diamond: the pooled paired difference and its "
                               "interval; dots: each task, with its interval over its seeds "
                               "(a point where a task has one seed); at the right: the pooled "
                               "value and the verdict.")]
        section.parts.append(part)
    return section


def _reference_section(table: pd.DataFrame) -> _Section | None:
    """Published scores beside the study's own, for the tasks the study has (real GUE)."""
    rows = reference.reference_scores(table["task"]) if len(table) else []
    if not rows:
        return None
    section = _Section("Published reference scores")
    shown = []
    for row in rows:
        cells = table[table["task"] == row["task"]]
        best = (cells.dropna(subset=["test_score"]).sort_values("test_score", ascending=False)
                .head(1) if "test_score" in cells else cells.head(0))
        entry = {"task": row["task"],
                 "metric": "+".join(sorted(set(cells["metric"]))),
                 "study best (test)": (float(best["test_score"].iloc[0]) if len(best)
                                       else float("nan")),
                 "study best cell": best["cell"].iloc[0] if len(best) else "no replicates"}
        for model in reference.MODELS:
            entry[f"{model.name} (published)"] = row.get(model.name, float("nan"))
        shown.append(entry)
    params = table["n_params"].dropna() if "n_params" in table else pd.Series(dtype=float)
    epochs = sorted({int(e) for e in table.get("max_epochs", pd.Series(dtype=float)).dropna()})
    tokenizers = ", ".join(sorted(set(table["tokenizer"])))
    pretraining = ", ".join(sorted(set(table["pretraining"])))
    size = (f"{count_text(params.min())} to {count_text(params.max())} parameters"
            if len(params) else "parameter counts unknown")
    section.lines = [
        f"Published test scores from the {reference.SOURCE} (MCC, printed there x 100 and "
        "divided by 100 here), beside this study's best cell by mean test score on each task. "
        "They are not a like-for-like comparison; where this setup differs:",
        *[f"- {m.name}: {m.setup}." for m in reference.MODELS],
        f"- This study: {size}; at most {', '.join(map(str, epochs)) or '?'} epoch(s) per "
        f"trial after a search of its own; tokenizers {tokenizers}; pretraining {pretraining}.",
    ]
    section.tables = [pd.DataFrame(shown)]
    section.after = [f"Source: {reference.CITATION}"]
    return section


# --- rendering -------------------------------------------------------------------------------


def _markdown(frame: pd.DataFrame) -> str:
    """A Markdown table; the '|' inside cell names is escaped so it does not split columns."""
    escaped = frame.apply(
        lambda col: col.map(lambda v: v.replace("|", "\\|") if isinstance(v, str) else v)
    )
    return escaped.to_markdown(index=False, floatfmt=".4g")


_BREAKS = re.compile(r"([|_/,;+])")
_LONG_RUN = re.compile(r"([0-9A-Za-z]{12})(?=[0-9A-Za-z])")


def _breakable(text: str) -> str:
    """Escaped HTML text with a line-break opportunity after each '|', '_', '/', ',', ';' and
    '+' of a long run, and every 12 characters of a long unbroken word (a run id), so long
    cell names and column names wrap inside narrow columns."""
    if len(text) <= 14:
        return text
    return _BREAKS.sub(r"\1<wbr>", _LONG_RUN.sub(r"\1<wbr>", text))


def _table_html(frame: pd.DataFrame) -> str:
    body = frame.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="",
                         border=0)
    body = re.sub(r">([^<]+)<", lambda m: ">" + _breakable(m.group(1)) + "<", body)
    wide = " wide" if len(frame.columns) >= WIDE_TABLE else ""
    return f'<div class="table-wrap{wide}">{body}</div>'


def _image(path: Path, caption: str = "") -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    img = f'<img src="data:image/png;base64,{data}" alt="{html.escape(caption or path.stem)}">'
    text = f"<figcaption>{_inline(caption)}</figcaption>" if caption else ""
    return f'<figure id="fig-{html.escape(path.stem)}">{img}{text}</figure>'


WIDE_TABLE = 12  # columns from which a table is set smaller, to fit the page
STYLE = """
body{font:15px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",sans-serif;
  color:#1f2328;background:#fff;max-width:1180px;margin:0 auto;padding:1.2em 2em 4em}
h1{font-size:1.75em;margin:.4em 0 .2em}
h2{font-size:1.3em;margin:2.2em 0 .6em;padding-bottom:.25em;border-bottom:1px solid #d8dee4}
h3{font-size:1.05em;margin:1.6em 0 .4em}
p,li{max-width:80em}
ul{padding-left:1.5em}
li{margin:.4em 0}
code{font-size:.9em;background:#f2f4f7;padding:.05em .3em;border-radius:4px;
  overflow-wrap:anywhere}
nav.toc{font-size:.9em;background:#f6f8fa;border:1px solid #d8dee4;border-radius:6px;
  padding:.4em 1em;margin:1em 0}
nav.toc ol{columns:2;margin:.3em 0;padding-left:1.4em}
nav.toc li{margin:.1em 0}
section#answers{background:#f5f9ff;border:1px solid #c9dcf5;border-radius:8px;
  padding:.2em 1.4em 1em;margin-top:1.2em}
section#answers h2{margin-top:.8em}
.table-wrap{max-width:100%;overflow-x:auto;margin:.8em 0 1.2em}
table{border-collapse:collapse;font-size:12.5px;line-height:1.35;max-width:100%}
th,td{border:1px solid #d0d7de;padding:3px 7px;vertical-align:top;text-align:left;
  overflow-wrap:break-word}
td:first-child{min-width:9em}
.wide table{font-size:11px}
.wide th,.wide td{padding:2px 4px}
.wide td:first-child{min-width:7em}
th{background:#eef1f5;font-weight:600}
td{font-variant-numeric:tabular-nums}
tbody tr:nth-child(even){background:#f8f9fb}
figure{margin:1em 0 1.6em}
figure img{display:block;max-width:100%;height:auto;border:1px solid #eaeef2}
figcaption{font-size:.88em;color:#57606a;margin-top:.3em;max-width:80em}
.note{color:#57606a;font-size:.92em}
"""


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"


def _html(title: str, sections: list[tuple[str, str]], lead: str = "") -> str:
    ids = []
    for heading, _ in sections:
        slug = "answers" if heading == ANSWERS else _slug(heading)
        while slug in ids:
            slug += "-x"
        ids.append(slug)
    toc = "".join(f'<li><a href="#{i}">{html.escape(h)}</a></li>'
                  for i, (h, _) in zip(ids, sections, strict=True))
    body = "\n".join(f'<section id="{i}"><h2>{html.escape(h)}</h2>\n{content}</section>'
                     for i, (h, content) in zip(ids, sections, strict=True))
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>{lead}"
            f"<nav class='toc'><strong>Contents</strong><ol>{toc}</ol></nav>"
            f"{body}</body></html>")


def _inline(line: str) -> str:
    """One Markdown line as HTML: escaped, with **bold** and `code` rendered."""
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


def _md_lines(lines: list[str]) -> list[str]:
    """Markdown lines with a blank line between paragraphs (a list stays one block), so a
    Markdown viewer does not run them together."""
    out: list[str] = []
    for line in lines:
        item = line.startswith("- ")
        if out and out[-1] and not (item and out[-1].startswith("- ")):
            out.append("")
        out.append(line)
    return out


@dataclass
class _Section:
    """One section of both renderings: paragraphs, then optional tables, then more text, then
    figures (path, caption)."""

    title: str
    lines: list[str] = field(default_factory=list)
    tables: list[pd.DataFrame] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    figures: list[tuple[Path, str]] = field(default_factory=list)
    parts: list[_Section] = field(default_factory=list)  # subsections, after the figures
    level: int = 2

    def markdown(self) -> list[str]:
        out = [f"{'#' * self.level} {self.title}", "", *_md_lines(self.lines)]
        for table in self.tables:
            out += ["", _markdown(table), ""]
        out += _md_lines(self.after)
        for path, caption in self.figures:
            out += ["", f"![{caption or path.stem}]({path.name})", "", f"*{caption}*"]
        out.append("")
        for part in self.parts:
            out += part.markdown()
        return out

    def html(self) -> tuple[str, str]:
        sub = "".join(f"<h{p.level}>{html.escape(p.title)}</h{p.level}>{p.html()[1]}"
                      for p in self.parts)
        return self.title, (_md_para(self.lines) + "".join(_table_html(t) for t in self.tables)
                            + _md_para(self.after)
                            + "".join(_image(p, c) for p, c in self.figures) + sub)


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
                    replicates_per_cell: int | None = None,
                    n_cells: int | None = None) -> _Section:
    """Before any comparison: which cells are unfinished or unlike the others, and so left
    out of every comparison, and which still miss replicates. ``n_cells``: the sweep's cells,
    those without a trial yet included (default: the table's)."""
    section = _Section("Budget parity")
    budget = (f"{trials_per_cell} trials per cell" if trials_per_cell is not None
              else "the most common trial count (no spec given to say the budget)")
    if table.empty and not refused:
        section.lines = ["No search trials yet."]
    elif not refused:
        section.lines = [f"Every cell finished its budget ({budget}, counting completed, pruned "
                         "and model-failed trials; infrastructure failures are re-issued), and "
                         "every cell of a task had the same epoch budget."]
    else:
        section.lines = [f"**{len(refused)} of {n_cells or len(table)} cell(s) are left out of "
                         f"every comparison**: their budget is unfinished or unlike the others' "
                         f"(target: {budget}). Comparisons name the tasks this removed."]
        section.tables = [pd.DataFrame({"cell": list(refused), "reason": list(refused.values())})]
    if replicates_per_cell and len(table):
        have = (table["replicates"].fillna(0).astype(int) if "replicates" in table
                else pd.Series(0, index=table.index))
        missing = have < replicates_per_cell
        short = table[missing].assign(replicates=have[missing])
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
    listed there too (their comparisons use the seeds both arms have). Where the sweep
    recorded the budget it was opened with (``Tag.BUDGET``), that budget is the one used.
    ``prices`` (the spec's price table) prices runs that logged no price of their own.

    An unfinished sweep (cells short of their budget or without a trial yet, replicates
    missing, or runs still open) is said so in one line at the top (``Report.unfinished``),
    cell by cell, before any comparison.
    """
    from ablate.tracking.reader import resolve_sweep

    record = resolve_sweep(tracking_uri, study, sweep)
    sweep = record.sweep
    if record.budget:
        trials_per_cell = record.budget["trials_per_cell"]
        replicates_per_cell = record.budget["replicates"]
    all_runs = analysis.runs(tracking_uri, study, sweep)
    trial_runs = analysis.search_trials(all_runs)
    reps = analysis.replicates(all_runs)
    table = analysis.cells(trial_runs, all_runs if len(reps) else None, cell_runs=all_runs,
                           trials_per_cell=trials_per_cell)
    parity = analysis.budget_parity(table, trials_per_cell=trials_per_cell)
    table["budget_equal"] = table["cell"].map(parity)
    refused = analysis.refused_cells(table, trials_per_cell=trials_per_cell)
    table["refused"] = table["cell"].map(lambda cell: refused.get(cell, ""))
    idle = _cells_without_trials(all_runs, table)
    for cell in idle:
        refused[cell] = ("unfinished: no trial yet" + (f" (0 of {trials_per_cell} trials)"
                                                       if trials_per_cell else ""))
    comps = analysis.comparisons(reps, refused=refused) if len(reps) else pd.DataFrame()
    comp_tasks = (analysis.comparison_tasks(reps, refused=refused) if len(reps)
                  else pd.DataFrame(columns=analysis.TASK_COLUMNS))
    patterns = _patterns(contrasts)
    contr = analysis.contrasts(reps, table, patterns, refused=refused)
    headline_tasks = analysis.contrast_task_differences(reps, table, [HEADLINE_CONTRAST],
                                                        refused=refused)
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
    # One colour per condition, the same in every figure.
    colours = condition_colours(condition_labels(table)) if len(table) else {}
    cell_conditions = (dict(zip(table["cell"], condition_labels(table), strict=True))
                       if len(table) else {})
    plots = [out / "cost_vs_mcc.png"]
    plot_cost_vs_mcc(table, plots[0], colours)
    if curves:
        plots.append(out / "tuning_curves.png")
        plot_tuning_curves(curves, plots[-1], colours, cell_conditions)
    if len(spent):
        plots.append(out / "compute_curves.png")
        plot_compute_curves(spent, plots[-1], colours)
    if len(benefit) and benefit["test_score"].notna().any():
        plots.append(out / "cost_benefit.png")
        plot_cost_benefit(benefit, plots[-1], colours)
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
    search = ["cell", "family", "metric", "budget_trials", "completed", "pruned",
              "model_failed", "failed", "running", "max_epochs", "budget_equal",
              "best_dev_score", "n_params"]
    spent = ["cell", "device_hours", "wall_seconds", "flops"]
    spent += [c for c in ("replicates", "replicate_model_failures", "replicate_failures",
                          "collapsed", "test_score", "test_ci_low", "test_ci_high", "test_n",
                          "selection_gap") if c in table]
    extension = [EXTENSION_NOTE] if table["extension"].any() else []
    view = _cell_view(table)
    budget = _Section("Budget per cell", [budget_note, *extension,
                                          "The search per cell, then its cost and its "
                                          "replicates' test scores (two tables, one row per "
                                          "cell in each)."], [view[search], view[spent]])
    questions = _Section("The three questions", [*summary, friedman_line])
    headline_rows = (contr[contr["contrast"] == HEADLINE_CONTRAST.name] if len(contr)
                     else contr)
    answers = _answers_section(comps, comp_tasks, headline_rows, headline_tasks, has_reps,
                               out, colours)
    sections = [answers, _parity_section(table, refused, trials_per_cell, replicates_per_cell,
                                         len(table) + len(idle)),
                blocks[0], questions,
                *blocks[1:], _comparison_section(comps), _selection_section(table),
                _tasks_section(table, floor, notes), _leakage_section(leaks, uses),
                _edge_section(table, bool(analysis.search_spaces(all_runs))), budget]
    sections.insert(sections.index(budget), _importance_section(weights))
    equal, cost = _equal_compute_section(at_equal), _cost_section(benefit, prices)
    sections += [equal, cost]
    if len(even):
        sections.append(_break_even_section(even))
    if not synthetic:
        published = _reference_section(table)
        if published is not None:
            sections.insert(sections.index(budget), published)
    sections.append(_provenance_section(origin))
    homes = {"cost_vs_mcc": (budget, "Search cost against best dev score, one panel per task."),
             "tuning_curves": (budget, "Tuning curves: expected best dev score after n "
                                       "completed trials, one panel per task."),
             "compute_curves": (equal, "Best dev score so far against cumulative search "
                                       "FLOPs, one panel per task."),
             "cost_benefit": (cost, "Cost-benefit frontier: mean test score against money and "
                                    "against FLOPs, one panel per task and unit; marker shape "
                                    "is the amortisation rule, rings and the dotted step line "
                                    "the Pareto front, the dashed line the k-mer floor."),
             "critical_difference": (questions, "Critical-difference diagram: mean rank of "
                                                "each condition over tasks (Nemenyi).")}
    for path in plots:
        home, caption = homes[path.stem]
        home.figures.append((path, caption))

    lines = [f"# Study `{study}`", "",
             f"Sweep `{sweep}` in `{tracking_uri}`. Configurations are selected on dev; test is "
             "evaluated once per replicate of each cell's best configuration. Scores are each "
             "task's own metric (the metric column says which).", ""]
    unfinished = unfinished_lines(record, table, refused, replicates_per_cell)
    if unfinished:
        lines += [*unfinished, ""]
    if synthetic:
        lines += ["**Data: synthetic GUE-shaped sequences with planted motifs, not real GUE.**",
                  ""]
    for section in sections:
        lines += section.markdown()
    (out / "report.md").write_text("\n".join(lines) + "\n")

    rendered = [s.html() for s in sections]
    lead = _md_para([f"Sweep `{sweep}` in `{tracking_uri}`. Configurations are selected on "
                     "dev; test is evaluated once per replicate of each cell's best "
                     "configuration. Scores are each task's own metric (the metric column says "
                     "which)."])
    if synthetic:
        lead += _md_para(["**Data: synthetic GUE-shaped sequences with planted motifs, not "
                          "real GUE.**"])
    if unfinished:
        rendered.insert(0, ("Unfinished sweep", _md_para(unfinished)))
    title = f"ablate study {study}" + (" (synthetic data)" if synthetic else "")
    (out / "report.html").write_text(_html(title, rendered, lead))
    return Report(folder=out, cells=table, sweep=sweep, comparisons=comps, summary=summary,
                  contrasts=contr, headline=headline, unfinished=unfinished)


def _cells_without_trials(all_runs: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    """The sweep's cells (its cell runs) with no search trial run yet, in name order."""
    if all_runs.empty:
        return []
    stage = analysis._column(all_runs, tag_column(Tag.STAGE), "")
    names = analysis._column(all_runs, tag_column(Tag.CELL), "")[stage == Stage.CELL]
    return sorted(set(names.dropna()) - set(table["cell"]))


def unfinished_lines(record: SweepInfo, table: pd.DataFrame, refused: dict[str, str],
                     replicates_per_cell: int | None, limit: int = 12) -> list[str]:
    """The report's first line where the sweep is unfinished, empty where it is not: its state
    where that is not finished, each cell short of its budget with its trials against it, and
    how many cells miss replicates."""
    short = {c: r.removeprefix("unfinished: ") for c, r in refused.items()
             if r.startswith("unfinished")}
    missing = 0
    if replicates_per_cell and len(table) and not short:
        have = (table["replicates"].fillna(0).astype(int) if "replicates" in table
                else pd.Series(0, index=table.index))
        missing = int((have < replicates_per_cell).sum())
    state = record.state
    if not short and not missing and state != SweepState.RUNNING:
        return []
    said = {SweepState.RUNNING: "its runs are still open: a driver is at work on it, or was "
                                "killed outright",
            SweepState.INTERRUPTED: "its last launch was interrupted",
            SweepState.FAILED: "its last launch failed",
            SweepState.NEVER_STARTED: "its search never started"}.get(state, "")
    parts = [f"**This sweep is unfinished**{f' ({said})' if said else ''}:"]
    if short:
        cells = [f"{c}: {why}" for c, why in sorted(short.items())]
        more = (f"; and {len(cells) - limit} more (all under Budget parity)"
                if len(cells) > limit else "")
        parts.append(f"{len(short)} cell(s) have not run their budget ({'; '.join(cells[:limit])}"
                     f"{more}); they are left out of every comparison.")
    if missing:
        parts.append(f"{missing} cell(s) have fewer replicates than the {replicates_per_cell} "
                     "asked for; their comparisons use only the seeds both arms have.")
    if not short and not missing:
        parts.append("every cell has run its budget, but its runs are still open: the numbers "
                     "below may still change.")
    if state == SweepState.NEVER_STARTED:
        parts.append("Without a started search it cannot be resumed: `ablate run STUDY.yaml` "
                     "starts a new sweep.")
    else:
        named = "" if record.latest else f" --sweep {record.sweep}"
        parts.append(f"`ablate run STUDY.yaml --resume{named}` continues it.")
    return [" ".join(parts)]


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
