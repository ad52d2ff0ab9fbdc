"""Statistics for comparing ablation cells: intervals, paired tests, ranks and cost trade-offs.

Every function but one is pure: arrays or DataFrames in, a small frozen dataclass, array or
DataFrame out; :func:`plot_critical_difference` draws and writes an image file. Statistical
tests and the bootstrap come from SciPy; the few numerics written here by hand (Holm's
step-down, the expected-maximum tuning curve, the Pareto mask, the break-even count and the
critical-difference drawing) are marked where they occur, with the reason.

Typical use, for one axis of the study (say pretrained vs from scratch, same architecture and
tokenizer): build a (tasks x replicates) array of test MCC per condition, call
:func:`paired_comparison` for each comparison, then :func:`comparison_table` to adjust the
p-values for multiplicity (Holm) and label each row "significant" or "not significant". Across
three or more conditions, :func:`friedman` and :func:`plot_critical_difference` give the
rank-based picture.
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

BootstrapMethod = Literal["BCa", "percentile", "basic"]
ZeroMethod = Literal["zsplit", "wilcox", "pratt"]
AmortisationRule = Literal["none", "per-task", "full"]
AMORTISATION_RULES: tuple[str, ...] = ("none", "per-task", "full")


@dataclass(frozen=True)
class Interval:
    """A sample mean with a two-sided bootstrap confidence interval.

    Attributes:
        mean: The sample mean.
        low: Lower bound of the interval.
        high: Upper bound of the interval.
        method: How the bounds were obtained: ``"BCa"``, ``"percentile"`` or ``"basic"`` (SciPy's
            bootstrap), or ``"point"`` when the sample cannot vary (one value, or all values
            equal) and the interval collapses to the mean.
    """

    mean: float
    low: float
    high: float
    method: str


@dataclass(frozen=True)
class PairedResult:
    """Condition A against condition B over the same tasks (see :func:`paired_comparison`).

    Attributes:
        mean_difference: Mean over tasks of (A - B), each task's value being the mean over its
            replicates.
        ci_low: Lower bound of the bootstrap interval of ``mean_difference`` (tasks resampled).
        ci_high: Upper bound of that interval.
        confidence: Confidence level of the interval.
        statistic: Wilcoxon signed-rank statistic (NaN when the test was not run).
        p_value: Two-sided Wilcoxon p-value, unadjusted. 1.0 when every difference is zero; NaN
            when there are fewer than two tasks (``note`` says why).
        prob_improvement: Estimated P(A > B): the fraction of (task, replicate) pairs in which A
            beats B, ties counting one half.
        n_tasks: Number of tasks compared.
        n_replicates: Replicates per task (1 when per-task values were given).
        note: Empty, or why the test was skipped or degenerate.
    """

    mean_difference: float
    ci_low: float
    ci_high: float
    confidence: float
    statistic: float
    p_value: float
    prob_improvement: float
    n_tasks: int
    n_replicates: int
    note: str = ""


@dataclass(frozen=True)
class FriedmanResult:
    """Friedman test over tasks plus the Nemenyi critical difference (see :func:`friedman`).

    Attributes:
        statistic: Friedman chi-square statistic (NaN when every task ties all conditions).
        p_value: Its p-value (1.0 when every task ties all conditions).
        mean_ranks: Condition name -> mean rank over tasks, 1 = best (highest score), sorted
            from best to worst.
        critical_difference: Nemenyi CD: two conditions whose mean ranks differ by more than
            this differ significantly at level ``alpha``.
        alpha: Significance level the CD was computed for.
        n_tasks: Number of tasks (rows) used.
        note: Empty, or what was degenerate.
    """

    statistic: float
    p_value: float
    mean_ranks: dict[str, float]
    critical_difference: float
    alpha: float
    n_tasks: int
    note: str = ""


def _finite_1d(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(
            f"{name} contains NaN or infinite values; decide how collapsed runs count "
            "(e.g. as MCC 0, or excluded and reported) before computing statistics"
        )
    return array


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
    method: BootstrapMethod = "BCa",
) -> Interval:
    """Mean of ``values`` with a bootstrap confidence interval (``scipy.stats.bootstrap``).

    Args:
        values: 1-D sample (e.g. test MCC of the N seed replicates of one cell). Must be finite.
        confidence: Two-sided confidence level, in (0, 1).
        n_resamples: Number of bootstrap resamples.
        seed: Seed of the resampling generator; the same seed gives the same interval.
        method: SciPy's interval method. ``"BCa"`` (default, SciPy's own default) corrects the
            percentile interval for bias and skew, which matters for MCC near its bounds.
            ``"percentile"`` and ``"basic"`` are the plain alternatives. When BCa cannot be
            computed (its jackknife degenerates on some tiny samples and SciPy returns NaN), the
            percentile interval is used instead and ``Interval.method`` says so.

    Returns:
        ``Interval(mean, low, high, method)``. With one value, or all values equal, the
        resamples cannot vary: the interval is the point itself and ``method == "point"``.
        Note that with few replicates (3-5 seeds) any bootstrap interval is too narrow; read it
        as a description of the spread, not as exact coverage.
    """
    from scipy import stats

    sample = _finite_1d(values, "values")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    mean = float(np.mean(sample))
    if sample.size == 1 or np.ptp(sample) == 0.0:
        return Interval(mean=mean, low=mean, high=mean, method="point")

    def run(chosen: str) -> tuple[float, float]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # degenerate BCa warns, and then we fall back
            result = stats.bootstrap(
                (sample,),
                np.mean,
                n_resamples=n_resamples,
                confidence_level=confidence,
                method=chosen,
                rng=np.random.default_rng(seed),
            )
        return float(result.confidence_interval.low), float(result.confidence_interval.high)

    used: str = method
    low, high = run(method)
    if not (np.isfinite(low) and np.isfinite(high)):
        used = "percentile"
        low, high = run(used)
    return Interval(mean=mean, low=low, high=high, method=used)


def paired_comparison(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
    zero_method: ZeroMethod = "zsplit",
) -> PairedResult:
    """Compare condition A with condition B on the same tasks (and the same seeds).

    Args:
        a: Condition A's test scores, aligned with ``b``: either one value per task (shape
            ``(n_tasks,)``, e.g. the mean MCC over seeds) or one value per task and replicate
            (shape ``(n_tasks, n_replicates)``; replicate i must use the same seed in A and B).
            Must be finite.
        b: Condition B's scores, same shape as ``a``.
        confidence: Confidence level of the interval of the mean difference.
        n_resamples: Bootstrap resamples for that interval.
        seed: Seed of the bootstrap.
        zero_method: How the Wilcoxon test treats tasks where A and B tie exactly (passed to
            ``scipy.stats.wilcoxon``). ``"zsplit"`` (default) keeps ties in the ranking and
            splits their ranks between both signs, as Demšar (2006) recommends for comparing
            classifiers: a tie is evidence of no difference, so 5 wins and 25 ties should not look
            as convincing as 5 wins out of 5 (with ``"wilcox"`` that case gives p < 0.05; with
            ``"zsplit"`` p = 0.12). Up to 13 tasks SciPy permutes signs exhaustively and the
            choice matters little; beyond (GUE has 28 tasks) it matters most. ``"wilcox"``
            drops ties; ``"pratt"`` ranks them, then drops their ranks.

    Returns:
        A :class:`PairedResult`. Per task, the value of a condition is the mean over its
        replicates; the difference per task is A - B. ``mean_difference`` and its bootstrap
        interval (tasks resampled, :func:`bootstrap_ci`) summarise those differences. The p-value
        is the two-sided Wilcoxon signed-rank test across tasks (SciPy's ``method="auto"``: exact
        up to 50 tasks without ties, exhaustive permutations up to 13 tasks with ties, normal
        approximation otherwise). ``prob_improvement`` is the fraction of matched
        (task, replicate) pairs with A > B, ties counting 1/2; with per-task inputs it is the
        fraction of tasks A wins. The p-value is unadjusted: adjust across comparisons with
        :func:`holm_correction` or :func:`comparison_table`.
    """
    from scipy import stats

    a_arr = np.asarray(a, dtype=float)
    b_arr = np.asarray(b, dtype=float)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"a and b must be aligned, got shapes {a_arr.shape} and {b_arr.shape}")
    if a_arr.ndim == 1:
        a_arr, b_arr = a_arr[:, None], b_arr[:, None]
    if a_arr.ndim != 2 or a_arr.size == 0:
        raise ValueError("a and b must have shape (n_tasks,) or (n_tasks, n_replicates)")
    if not (np.all(np.isfinite(a_arr)) and np.all(np.isfinite(b_arr))):
        raise ValueError(
            "a or b contains NaN or infinite values; decide how collapsed runs count "
            "(e.g. as MCC 0) before comparing"
        )
    n_tasks, n_replicates = a_arr.shape
    differences = a_arr.mean(axis=1) - b_arr.mean(axis=1)
    interval = bootstrap_ci(differences, confidence=confidence, n_resamples=n_resamples, seed=seed)
    wins = np.where(a_arr > b_arr, 1.0, np.where(a_arr == b_arr, 0.5, 0.0))

    note = ""
    statistic, p_value = math.nan, math.nan
    if n_tasks < 2:
        note = "fewer than two tasks: no test"
    elif np.all(differences == 0.0):
        p_value = 1.0
        note = "all differences are zero"
    else:
        result = stats.wilcoxon(
            differences, zero_method=zero_method, alternative="two-sided", method="auto"
        )
        statistic, p_value = float(result.statistic), float(result.pvalue)
    return PairedResult(
        mean_difference=interval.mean,
        ci_low=interval.low,
        ci_high=interval.high,
        confidence=confidence,
        statistic=statistic,
        p_value=p_value,
        prob_improvement=float(wins.mean()),
        n_tasks=int(n_tasks),
        n_replicates=int(n_replicates),
        note=note,
    )


def holm_correction(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (controls the family-wise error rate).

    Args:
        p_values: Unadjusted p-values in [0, 1]. NaN entries (comparisons that could not be
            tested) pass through as NaN and do not count toward the number of tests m.

    Returns:
        Adjusted p-values in the input order. Reject hypothesis i at level alpha when
        ``adjusted[i] <= alpha``.
    """
    # Written by hand: SciPy 1.17 offers only Benjamini-Hochberg/Yekutieli
    # (scipy.stats.false_discovery_control), which control the FDR, not Holm's FWER step-down.
    p = np.asarray(p_values, dtype=float).reshape(-1)
    valid = ~np.isnan(p)
    if np.any((p[valid] < 0.0) | (p[valid] > 1.0)):
        raise ValueError("p-values must lie in [0, 1]")
    adjusted = np.full(p.shape, np.nan)
    tested = np.flatnonzero(valid)
    order = tested[np.argsort(p[tested], kind="stable")]
    m = order.size
    scaled = (m - np.arange(m)) * p[order]  # (m - i + 1) * p_(i), i = 1..m
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted


def comparison_table(results: Mapping[str, PairedResult], *, alpha: float = 0.05) -> pd.DataFrame:
    """One row per comparison, with Holm-adjusted p-values and a plain-words verdict.

    Args:
        results: Comparison name (e.g. ``"DNABERT-2/BPE: pretrained vs scratch"``) -> its
            :class:`PairedResult`. All comparisons in one call form one family for Holm.
        alpha: Family-wise significance level.

    Returns:
        A DataFrame with the fields of :class:`PairedResult` plus ``comparison``, ``p_holm``
        and ``verdict`` (``"significant"``, ``"not significant"``, or ``"not tested"`` when the
        p-value is NaN).
    """
    import pandas as pd

    rows = [{"comparison": name, **asdict(result)} for name, result in results.items()]
    table = pd.DataFrame(rows, columns=["comparison", *PairedResult.__dataclass_fields__])
    table["p_holm"] = holm_correction(table["p_value"].to_numpy(dtype=float))
    table["verdict"] = [
        "not tested" if math.isnan(p) else ("significant" if p <= alpha else "not significant")
        for p in table["p_holm"]
    ]
    return table


def friedman(scores: pd.DataFrame, *, alpha: float = 0.05) -> FriedmanResult:
    """Friedman test of k >= 3 conditions over tasks, with mean ranks and the Nemenyi CD.

    Args:
        scores: Rows = tasks, columns = conditions (names used as labels), values = score
            (higher is better, e.g. mean test MCC). Must be complete and finite; drop or fill
            incomplete tasks first.
        alpha: Significance level of the critical difference.

    Returns:
        A :class:`FriedmanResult`. Ranks are taken within each task with the best score ranked
        1 and ties sharing the average rank. The test is ``scipy.stats.friedmanchisquare``. The
        critical difference is Nemenyi's ``CD = q_alpha * sqrt(k (k + 1) / (6 N))`` with
        ``q_alpha = studentized_range.ppf(1 - alpha, k, inf) / sqrt(2)`` (Demšar, 2006).

    Raises:
        ValueError: fewer than three conditions (compare two with :func:`paired_comparison`),
            fewer than two tasks, or missing values.
    """
    from scipy import stats

    k, n = scores.shape[1], scores.shape[0]
    if k < 3:
        raise ValueError(
            f"the Friedman test needs at least 3 conditions, got {k}; "
            "compare two conditions with paired_comparison"
        )
    if n < 2:
        raise ValueError(f"the Friedman test needs at least 2 tasks, got {n}")
    values = scores.to_numpy(dtype=float)
    if not np.all(np.isfinite(values)):
        bad = [
            str(task)
            for task, row in zip(scores.index, values, strict=True)
            if not np.all(np.isfinite(row))
        ]
        raise ValueError(f"scores are missing or not finite for tasks: {', '.join(bad)}")
    ranks = stats.rankdata(-values, axis=1)
    mean_ranks = dict(zip(map(str, scores.columns), ranks.mean(axis=0).tolist(), strict=True))
    mean_ranks = dict(sorted(mean_ranks.items(), key=lambda item: item[1]))
    q_alpha = stats.studentized_range.ppf(1.0 - alpha, k, np.inf) / math.sqrt(2.0)
    cd = float(q_alpha * math.sqrt(k * (k + 1) / (6.0 * n)))

    note = ""
    if np.all(np.ptp(values, axis=1) == 0.0):
        statistic, p_value = math.nan, 1.0
        note = "every task ties all conditions"
    else:
        result = stats.friedmanchisquare(*values.T)
        statistic, p_value = float(result.statistic), float(result.pvalue)
    return FriedmanResult(
        statistic=statistic,
        p_value=p_value,
        mean_ranks=mean_ranks,
        critical_difference=cd,
        alpha=alpha,
        n_tasks=int(n),
        note=note,
    )


def _cliques(ranks: np.ndarray, cd: float) -> list[tuple[int, int]]:
    """Maximal runs (i, j) of rank-sorted conditions whose rank spread is at most ``cd``."""
    groups: list[tuple[int, int]] = []
    for i in range(ranks.size):
        j = int(np.searchsorted(ranks, ranks[i] + cd, side="right")) - 1
        if j > i and (not groups or j > groups[-1][1]):
            groups.append((i, j))
    return groups


def plot_critical_difference(
    result: FriedmanResult, path: str | os.PathLike[str], *, title: str | None = None
) -> Path:
    """Draw a critical-difference diagram (Demšar, 2006) of a :class:`FriedmanResult`.

    Args:
        result: The output of :func:`friedman`.
        path: Where to write the figure; the format follows the suffix (PNG when none). The
            file is written atomically (temporary file, then rename).
        title: Optional title above the diagram.

    Returns:
        The path written.

    The axis shows mean ranks with rank 1 (best) on the left. Each condition hangs from its
    rank, best half labelled on the left, the rest on the right. The bar above the axis has the
    length of the CD. Thick lines under the axis join conditions whose mean ranks differ by at
    most the CD (not significantly different by the Nemenyi test).
    """
    # The drawing is written by hand: matplotlib has no CD diagram and no well-kept library
    # draws one from precomputed ranks. Uses the Agg canvas directly, not pyplot's global state.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(result.mean_ranks)
    ranks = np.array([result.mean_ranks[name] for name in names])
    order = np.argsort(ranks, kind="stable")
    names, ranks = [names[i] for i in order], ranks[order]
    k, cd = len(names), result.critical_difference
    groups = _cliques(ranks, cd)
    n_left = (k + 1) // 2
    row, group_row = 0.35, 0.18
    first_label = -0.35 - group_row * len(groups)

    fig = Figure(figsize=(8.0, 1.6 + 0.35 * n_left + 0.18 * len(groups)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_axis_off()
    line = {"color": "black", "linewidth": 1.0}
    ax.plot([1, k], [0, 0], **line)
    for tick in np.arange(1.0, k + 0.01, 0.5):
        major = float(tick).is_integer()
        ax.plot([tick, tick], [0, 0.1 if major else 0.05], **line)
        if major:
            ax.text(tick, 0.15, f"{int(tick)}", ha="center", va="bottom", fontsize=9)
    if np.isfinite(cd):
        ax.plot([1, 1 + cd], [0.55, 0.55], color="black", linewidth=1.5)
        for end in (1, 1 + cd):
            ax.plot([end, end], [0.5, 0.6], **line)
        ax.text(1 + cd / 2, 0.63, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=9)
    for g, (i, j) in enumerate(groups):
        y = -0.25 - group_row * g
        ax.plot([ranks[i] - 0.03, ranks[j] + 0.03], [y, y], color="black", linewidth=4.0)
    left_x, right_x = 1 - 0.1 * (k - 1) - 0.3, k + 0.1 * (k - 1) + 0.3
    for index, (name, rank) in enumerate(zip(names, ranks, strict=True)):
        on_left = index < n_left
        level = index if on_left else k - 1 - index
        y = first_label - row * level
        end = left_x if on_left else right_x
        ax.plot([rank, rank, end], [0, y, y], **line)
        ax.text(
            end + (-0.05 if on_left else 0.05),
            y,
            f"{name} ({rank:.2f})",
            ha="right" if on_left else "left",
            va="center",
            fontsize=9,
        )
    ax.set_xlim(left_x, right_x)
    ax.set_ylim(first_label - row * (n_left - 1) - 0.2, 1.0)
    if title:
        ax.set_title(title, fontsize=10)

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fmt = target.suffix.lstrip(".").lower() or "png"
    handle, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    try:
        fig.savefig(temp, format=fmt, dpi=150, bbox_inches="tight")
        os.replace(temp, target)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    return target


def expected_max_curve(
    values: Sequence[float] | np.ndarray,
    max_n: int | None = None,
    *,
    with_replacement: bool = False,
) -> np.ndarray:
    """Expected best score after n trials: the tuning curve of "Show your work" (Dodge et al.).

    Args:
        values: The observed trial scores of one cell (e.g. dev MCC of each search trial),
            finite. The curve treats them as exchangeable draws, which fits random search; for
            an adaptive sampler (TPE) it describes "n trials picked at random from those run".
        max_n: Last n of the curve; default ``len(values)``. Without replacement it cannot
            exceed ``len(values)``.
        with_replacement: ``False`` (default): draw n distinct trials (the question "had we run
            only n of these trials"). ``True``: draw from the empirical distribution, as in
            Dodge et al. (2019), which also allows n > len(values).

    Returns:
        Array of length ``max_n``; element n-1 is the expected maximum of n draws. With the
        scores sorted ascending, ``v_(1) <= ... <= v_(N)``, and ``F_n(i) = P(max <= v_(i))``:

        * without replacement ``F_n(i) = C(i, n) / C(N, n)`` (all n draws among the i lowest);
        * with replacement ``F_n(i) = (i / N) ** n``;

        and ``E[max_n] = sum_i v_(i) * (F_n(i) - F_n(i - 1))``. Ties are handled exactly, as
        distinct trials that happen to share a score.
    """
    # Written by hand: the closed form above is a few lines and no library ships it.
    # C(i, n) / C(N, n) is built by the stable recurrence F_n(i) = F_{n-1}(i) * (i-n+1)/(N-n+1).
    scores = np.sort(_finite_1d(values, "values"))
    size = scores.size
    last = size if max_n is None else int(max_n)
    if last < 1:
        raise ValueError(f"max_n must be at least 1, got {max_n}")
    if not with_replacement and last > size:
        raise ValueError(
            f"max_n = {last} exceeds the {size} trials observed; "
            "use with_replacement=True to extrapolate"
        )
    i = np.arange(size + 1, dtype=float)  # F_n(0) = 0, ..., F_n(N) = 1
    curve = np.empty(last)
    cdf = i / size
    for n in range(1, last + 1):
        if with_replacement:
            cdf = (i / size) ** n
        elif n > 1:
            cdf = cdf * np.clip(i - n + 1, 0.0, None) / (size - n + 1)
        curve[n - 1] = float(np.dot(scores, np.diff(cdf)))
    return curve


def amortised_cost(pretrain_cost: float, n_tasks_using: int, rule: AmortisationRule) -> float:
    """The share of a pretraining run's cost charged to one fine-tuning task.

    Args:
        pretrain_cost: Total cost of pretraining the checkpoint (any unit: device-hours, FLOPs,
            dollars), >= 0.
        n_tasks_using: Number of tasks fine-tuned from that checkpoint, >= 1.
        rule: ``"none"`` charges nothing (pretraining treated as free, e.g. a public
            checkpoint); ``"per-task"`` charges ``pretrain_cost / n_tasks_using``; ``"full"``
            charges the whole cost to every task (the cost of pretraining for this one task).

    Returns:
        The cost charged to one task.

    Raises:
        ValueError: unknown rule (the message lists the allowed rules), ``n_tasks_using < 1`` or
            negative cost.
    """
    if rule not in AMORTISATION_RULES:
        raise ValueError(
            f"unknown amortisation rule {rule!r}; allowed: {', '.join(AMORTISATION_RULES)}"
        )
    if n_tasks_using < 1:
        raise ValueError(f"n_tasks_using must be at least 1, got {n_tasks_using}")
    if not pretrain_cost >= 0.0:
        raise ValueError(f"pretrain_cost must be a non-negative number, got {pretrain_cost}")
    if rule == "none":
        return 0.0
    if rule == "per-task":
        return float(pretrain_cost) / n_tasks_using
    return float(pretrain_cost)


def pareto_front(
    cost: Sequence[float] | np.ndarray, score: Sequence[float] | np.ndarray
) -> np.ndarray:
    """Mask of the points no other point dominates (lower cost is better, higher score is).

    Args:
        cost: Cost of each point (e.g. device-hours including amortised pretraining), finite.
        score: Score of each point (e.g. mean test MCC), finite, aligned with ``cost``.

    Returns:
        Boolean array, True where the point is on the Pareto front. Point j dominates point i
        when ``cost[j] <= cost[i]`` and ``score[j] >= score[i]`` with at least one strict;
        identical points do not dominate each other, so both stay on the front.
    """
    # Written by hand: an O(n^2) comparison of a few dozen cells; no library call needed.
    c = _finite_1d(cost, "cost")
    s = _finite_1d(score, "score")
    if c.shape != s.shape:
        raise ValueError(f"cost and score must be aligned, got {c.size} and {s.size} values")
    no_worse = (c[None, :] <= c[:, None]) & (s[None, :] >= s[:, None])
    better = (c[None, :] < c[:, None]) | (s[None, :] > s[:, None])
    return ~np.any(no_worse & better, axis=1)


def break_even_tasks(
    pretrain_cost: float, finetune_cost_pretrained: float, scratch_cost_to_match: float
) -> int | None:
    """How many tasks must share a pretraining run before pretraining pays for itself.

    Args:
        pretrain_cost: One-off cost of pretraining, >= 0.
        finetune_cost_pretrained: Cost of fine-tuning the pretrained model on one task, >= 0.
        scratch_cost_to_match: Cost, per task, of training a from-scratch model to the same
            accuracy as the fine-tuned pretrained one, >= 0. All three in the same unit.

    Returns:
        The smallest integer n >= 1 with
        ``pretrain_cost / n + finetune_cost_pretrained <= scratch_cost_to_match``, i.e.
        ``ceil(pretrain_cost / (scratch_cost_to_match - finetune_cost_pretrained))`` (at least
        1). ``None`` ("never") when fine-tuning alone costs at least as much as training from
        scratch, except for free pretraining with equal costs, where n = 1.
    """
    # Written by hand: one line of arithmetic, checked against the inequality for rounding.
    costs = (pretrain_cost, finetune_cost_pretrained, scratch_cost_to_match)
    if not all(math.isfinite(x) and x >= 0.0 for x in costs):
        raise ValueError(f"costs must be finite and non-negative, got {costs}")
    margin = scratch_cost_to_match - finetune_cost_pretrained
    if margin < 0.0 or (margin == 0.0 and pretrain_cost > 0.0):
        return None
    if pretrain_cost == 0.0:
        return 1
    n = max(1, math.ceil(pretrain_cost / margin))
    while n > 1 and pretrain_cost / (n - 1) + finetune_cost_pretrained <= scratch_cost_to_match:
        n -= 1
    while pretrain_cost / n + finetune_cost_pretrained > scratch_cost_to_match:
        n += 1
    return n
