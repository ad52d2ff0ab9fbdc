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
            paired replicates.
        ci_low: Lower bound of the interval of ``mean_difference``: a hierarchical bootstrap
            (tasks resampled, then seeds within each task), so the seeds count even with one
            task.
        ci_high: Upper bound of that interval.
        confidence: Nominal confidence level of the interval. With fewer than
            ``MIN_RESAMPLING_UNITS`` tasks it is a description of the spread, not a calibrated
            interval (``interval_note`` says so).
        statistic: Wilcoxon signed-rank statistic (NaN when the test was not run).
        p_value: Two-sided Wilcoxon p-value over tasks, unadjusted. 1.0 when every difference
            is zero; NaN when there are fewer than two tasks (``note`` says why).
        prob_improvement: Estimated P(A > B): the fraction of (task, replicate) pairs in which A
            beats B, ties counting one half.
        n_tasks: Number of tasks compared.
        n_replicates: Paired replicates per task (the most any task has; see ``n_pairs``).
        note: Empty, or why the test was skipped or degenerate.
        n_pairs: Number of (task, seed) pairs behind the interval.
        p_floor: The smallest two-sided p-value the exact test can give with ``n_tasks``
            tasks (:func:`min_attainable_p`); 1.0 when no test is possible.
        interval_note: Empty, or why the interval should not be read as a calibrated 95%.
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
    n_pairs: int = 0
    p_floor: float = 1.0
    interval_note: str = ""

    @property
    def sample(self) -> str:
        """The resampling units in words: ``3 tasks x 3 seeds``."""
        return sample_text(self.n_tasks, self.n_replicates, self.n_pairs)


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


MIN_RESAMPLING_UNITS = 5  # below this many tasks an interval is a description, not a 95% CI
UNDERPOWERED = "underpowered"


def sample_text(n_tasks: int, n_seeds: int, n_pairs: int | None = None) -> str:
    """The sample behind an interval in words: ``3 tasks x 3 seeds`` (``9 pairs`` when the
    tasks have unequal numbers of paired seeds)."""
    tasks = f"{n_tasks} task{'s' if n_tasks != 1 else ''}"
    seeds = f"{n_seeds} seed{'s' if n_seeds != 1 else ''}"
    if n_pairs is not None and n_pairs and n_pairs != n_tasks * n_seeds:
        return f"{tasks} x up to {seeds} ({n_pairs} pairs)"
    return f"{tasks} x {seeds}"


def min_attainable_p(n_tasks: int) -> float:
    """The smallest two-sided p-value the exact Wilcoxon signed-rank test can give on
    ``n_tasks`` paired differences: every difference of one sign, ``2 / 2**n`` (0.5 with 2
    tasks, 0.25 with 3, 0.125 with 4, 0.0625 with 5). 1.0 below two tasks, where no test
    runs. Ties (zero differences kept by ``zsplit``) only raise it.
    """
    if n_tasks < 2:
        return 1.0
    return float(2.0 ** (1 - n_tasks))


def tasks_needed(family_size: int, alpha: float = 0.05) -> int:
    """The fewest tasks with which a comparison can reach ``alpha`` after Holm over
    ``family_size`` comparisons: the smallest n with ``family_size * 2 / 2**n <= alpha``.
    That is only the floor: detecting an effect needs more tasks than this."""
    m = max(int(family_size), 1)
    return max(2, math.ceil(1 + math.log2(m / alpha) - 1e-12))


def hierarchical_bootstrap(
    differences: np.ndarray,
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> Interval:
    """Percentile interval of the mean over tasks of each task's mean paired difference,
    resampling tasks with replacement and then, within each drawn task, its seeds.

    Args:
        differences: (n_tasks, n_seeds) array of paired differences A - B, one per task and
            replicate seed; NaN where a pair is missing (that seed is left out of that task
            only). Every task needs at least one finite pair.
        confidence: Two-sided level of the percentile interval.
        n_resamples: Number of bootstrap resamples.
        seed: Seed of the resampling generator.

    Returns:
        ``Interval(mean, low, high, method)`` with ``method="hierarchical"``, or ``"point"``
        when nothing can vary (one task and one seed, or all differences equal). With one task
        the interval is over its seeds alone; with a handful of tasks it describes the spread
        more than it covers at its nominal level.
    """
    # Written by hand: SciPy's bootstrap resamples one level only, and no well-kept library
    # offers the two-level (tasks, then seeds) resampling of paired differences.
    diffs = np.asarray(differences, dtype=float)
    if diffs.ndim == 1:
        diffs = diffs[:, None]
    if diffs.ndim != 2 or diffs.size == 0:
        raise ValueError(f"differences must be a (tasks, seeds) array, got shape {diffs.shape}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    finite = np.isfinite(diffs)
    counts = finite.sum(axis=1)
    if np.any(counts == 0):
        raise ValueError("every task needs at least one finite paired difference")
    task_means = np.nanmean(np.where(finite, diffs, np.nan), axis=1)
    mean = float(task_means.mean())
    values = diffs[finite]
    if values.size == 1 or np.ptp(values) == 0.0:
        return Interval(mean=mean, low=mean, high=mean, method="point")
    # Each task's finite differences, left-aligned and padded, so seeds are drawn by position.
    n_tasks, width = diffs.shape[0], int(counts.max())
    packed = np.zeros((n_tasks, width))
    for row in range(n_tasks):
        packed[row, : counts[row]] = diffs[row, finite[row]]
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // max(n_tasks * width, 1))
    for begin in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - begin)
        tasks = rng.integers(0, n_tasks, size=(size, n_tasks))
        # A uniform position among each drawn task's own seeds, `width` draws per task; only
        # the first `count` of them are averaged, so a task with fewer seeds draws fewer.
        positions = np.floor(rng.random((size, n_tasks, width))
                             * counts[tasks][..., None]).astype(int)
        drawn = packed[tasks[..., None], positions]
        used = np.arange(width)[None, None, :] < counts[tasks][..., None]
        per_task = (drawn * used).sum(axis=2) / counts[tasks]
        means[begin : begin + size] = per_task.mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Interval(mean=mean, low=float(low), high=float(high), method="hierarchical")


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
            ``(n_tasks,)``, e.g. the mean MCC over seeds; must be finite) or one value per task
            and replicate (shape ``(n_tasks, n_replicates)``; replicate i must use the same seed
            in A and B). In the 2-D form NaN marks a missing replicate (an infrastructure
            failure, never scored): that pair is left out of its task only, and a task with no
            pair left is left out. A model failure is not missing: score it (e.g. MCC 0) first.
        b: Condition B's scores, same shape as ``a``.
        confidence: Nominal confidence level of the interval of the mean difference.
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
        A :class:`PairedResult`. Per task, the value of a condition is the mean over its paired
        replicates; the difference per task is A - B. ``mean_difference`` is their mean over
        tasks, and its interval a hierarchical bootstrap (:func:`hierarchical_bootstrap`: tasks,
        then seeds within each task), so one task with three seeds still gets an interval over
        its seeds. The p-value is the two-sided Wilcoxon signed-rank test across tasks (SciPy's
        ``method="auto"``: exact up to 50 tasks without ties, exhaustive permutations up to 13
        tasks with ties, normal approximation otherwise); ``p_floor`` is the smallest it could
        have been with that many tasks. ``prob_improvement`` is the fraction of matched
        (task, replicate) pairs with A > B, ties counting 1/2. The p-value is unadjusted:
        adjust across comparisons with :func:`comparison_table`.
    """
    from scipy import stats

    a_arr = np.asarray(a, dtype=float)
    b_arr = np.asarray(b, dtype=float)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"a and b must be aligned, got shapes {a_arr.shape} and {b_arr.shape}")
    if a_arr.ndim == 1:
        if not (np.all(np.isfinite(a_arr)) and np.all(np.isfinite(b_arr))):
            raise ValueError(
                "a or b contains NaN or infinite values; decide how failed and collapsed runs "
                "count (e.g. as MCC 0) before comparing"
            )
        a_arr, b_arr = a_arr[:, None], b_arr[:, None]
    if a_arr.ndim != 2 or a_arr.size == 0:
        raise ValueError("a and b must have shape (n_tasks,) or (n_tasks, n_replicates)")
    if np.any(np.isinf(a_arr)) or np.any(np.isinf(b_arr)):
        raise ValueError("a or b contains infinite values")
    paired = np.isfinite(a_arr) & np.isfinite(b_arr)
    dropped = int((~paired.any(axis=1)).sum())
    keep = paired.any(axis=1)
    if not keep.any():
        raise ValueError("a and b share no finite (task, replicate) pair")
    a_arr, b_arr, paired = a_arr[keep], b_arr[keep], paired[keep]
    n_tasks = int(a_arr.shape[0])
    n_pairs = int(paired.sum())
    n_replicates = int(paired.sum(axis=1).max())
    pair_diffs = np.where(paired, a_arr - b_arr, np.nan)
    differences = np.nanmean(pair_diffs, axis=1)
    interval = hierarchical_bootstrap(pair_diffs, confidence=confidence,
                                      n_resamples=n_resamples, seed=seed)
    wins = np.where(a_arr > b_arr, 1.0, np.where(a_arr == b_arr, 0.5, 0.0))[paired]

    notes = [f"{dropped} task(s) without a paired replicate left out"] if dropped else []
    statistic, p_value = math.nan, math.nan
    if n_tasks < 2:
        notes.insert(0, "fewer than two tasks: no test")
    elif np.all(differences == 0.0):
        p_value = 1.0
        notes.insert(0, "all differences are zero")
    else:
        result = stats.wilcoxon(
            differences, zero_method=zero_method, alternative="two-sided", method="auto"
        )
        statistic, p_value = float(result.statistic), float(result.pvalue)
    interval_note = ""
    if interval.method == "point":
        interval_note = "no spread to resample: the interval is the point itself"
    elif n_tasks == 1:
        interval_note = (f"one task: the interval is over its {n_replicates} seeds only and "
                         "says nothing about other tasks")
    elif n_tasks < MIN_RESAMPLING_UNITS:
        interval_note = (f"only {n_tasks} tasks to resample: the interval describes their "
                         f"spread, it is not a calibrated {confidence:.0%} interval")
    return PairedResult(
        mean_difference=interval.mean,
        ci_low=interval.low,
        ci_high=interval.high,
        confidence=confidence,
        statistic=statistic,
        p_value=p_value,
        prob_improvement=float(wins.mean()),
        n_tasks=n_tasks,
        n_replicates=n_replicates,
        note="; ".join(notes),
        n_pairs=n_pairs,
        p_floor=min_attainable_p(n_tasks),
        interval_note=interval_note,
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
    """One row per comparison, with Holm-adjusted p-values and a verdict in plain words.

    Args:
        results: Comparison name (e.g. ``"DNABERT-2/BPE: pretrained vs scratch"``) -> its
            :class:`PairedResult`. All comparisons in one call form one family for Holm.
        alpha: Family-wise significance level.

    Returns:
        A DataFrame with the fields of :class:`PairedResult` plus ``comparison``, ``sample``
        (``3 tasks x 3 seeds``), ``p_holm``, ``p_holm_floor``, ``family_size``,
        ``tasks_needed`` and ``verdict``:

        * ``"significant"``: ``p_holm <= alpha``;
        * ``"underpowered"``: not significant, and it could not have been: even with every
          comparison of the family at its smallest attainable p (:func:`min_attainable_p`),
          this row's Holm-adjusted p (``p_holm_floor``, Holm being monotone in each p-value)
          stays above ``alpha``. The effect and its interval still inform; ``tasks_needed``
          is the fewest tasks with which a family of this size could reach ``alpha``;
        * ``"not significant"``: it could have been, and was not;
        * ``"not tested"``: the p-value is NaN (one task). A one-task row is also
          underpowered: it gets ``"underpowered"``.
    """
    import pandas as pd

    rows = [{"comparison": name, **asdict(result), "sample": result.sample}
            for name, result in results.items()]
    table = pd.DataFrame(rows, columns=["comparison", *PairedResult.__dataclass_fields__,
                                        "sample"])
    p = table["p_value"].to_numpy(dtype=float)
    table["p_holm"] = holm_correction(p)
    tested = ~np.isnan(p)
    table["p_floor"] = [min_attainable_p(int(n)) for n in table["n_tasks"]]
    floors = np.where(tested, table["p_floor"].to_numpy(dtype=float), np.nan)
    table["p_holm_floor"] = holm_correction(floors)
    family = int(tested.sum())
    table["family_size"] = family
    table["tasks_needed"] = tasks_needed(family, alpha)
    verdicts = []
    for p_holm, floor, n in zip(table["p_holm"], table["p_holm_floor"], table["n_tasks"],
                                strict=True):
        if math.isnan(p_holm):
            verdicts.append(UNDERPOWERED if n < 2 else "not tested")
        elif p_holm <= alpha:
            verdicts.append("significant")
        elif floor > alpha:
            verdicts.append(UNDERPOWERED)
        else:
            verdicts.append("not significant")
    table["verdict"] = verdicts
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
