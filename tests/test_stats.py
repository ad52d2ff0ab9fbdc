"""Statistics: checked against cases computed by hand, and against SciPy where it applies."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from ablate.stats import (
    AMORTISATION_RULES,
    FriedmanResult,
    PairedResult,
    _cliques,
    amortised_cost,
    bootstrap_ci,
    break_even_tasks,
    comparison_table,
    expected_max_curve,
    friedman,
    hierarchical_bootstrap,
    holm_correction,
    min_attainable_p,
    paired_comparison,
    pareto_front,
    plot_critical_difference,
    tasks_needed,
)

# --- bootstrap -------------------------------------------------------------------------------


def test_bootstrap_is_reproducible_and_contains_the_mean() -> None:
    values = [0.41, 0.52, 0.47, 0.60, 0.38, 0.55, 0.49]
    first = bootstrap_ci(values, n_resamples=2000, seed=3)
    again = bootstrap_ci(values, n_resamples=2000, seed=3)
    assert first == again
    assert first.method == "BCa"
    assert first.mean == pytest.approx(np.mean(values))
    assert first.low < first.mean < first.high
    assert min(values) <= first.low and first.high <= max(values)


def test_bootstrap_percentile_option_and_wider_at_higher_confidence() -> None:
    values = np.arange(10.0)
    narrow = bootstrap_ci(values, confidence=0.5, method="percentile", n_resamples=2000)
    wide = bootstrap_ci(values, confidence=0.99, method="percentile", n_resamples=2000)
    assert narrow.method == "percentile"
    assert wide.low < narrow.low < narrow.high < wide.high


@pytest.mark.parametrize("values", [[0.7], [0.3, 0.3, 0.3, 0.3]])
def test_bootstrap_degenerate_sample_gives_the_point(values: list[float]) -> None:
    interval = bootstrap_ci(values)
    assert (interval.low, interval.mean, interval.high) == (values[0],) * 3
    assert interval.method == "point"


@pytest.mark.parametrize("values", [[], [0.1, float("nan")], [[0.1, 0.2]]])
def test_bootstrap_rejects_bad_input(values: list) -> None:
    with pytest.raises(ValueError):
        bootstrap_ci(values)


# --- paired comparison -----------------------------------------------------------------------


def test_paired_comparison_known_sample() -> None:
    b = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    a = b + np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    result = paired_comparison(a, b, n_resamples=2000)
    assert isinstance(result, PairedResult)
    assert result.mean_difference == pytest.approx(3.0)
    assert result.p_value == pytest.approx(0.0625)  # exact two-sided: 2 / 2**5
    assert result.statistic == 0.0
    assert result.prob_improvement == 1.0
    assert (result.n_tasks, result.n_replicates, result.note) == (5, 1, "")
    assert result.ci_low < 3.0 < result.ci_high


def test_paired_comparison_over_replicates() -> None:
    a = np.array([[1.0, 2.0], [3.0, 3.0]])
    b = np.array([[0.0, 2.0], [4.0, 1.0]])
    result = paired_comparison(a, b, n_resamples=500)
    # matched pairs: 1>0 win, 2=2 half, 3<4 loss, 3>1 win -> 2.5 / 4
    assert result.prob_improvement == pytest.approx(0.625)
    # per-task means: A = (1.5, 3.0), B = (1.0, 2.5) -> differences (0.5, 0.5)
    assert result.mean_difference == pytest.approx(0.5)
    assert (result.n_tasks, result.n_replicates) == (2, 2)


def test_paired_comparison_ties_count_with_zsplit() -> None:
    # 25 tied tasks and 5 wins: dropping the ties ("wilcox") looks significant, zsplit does not
    diffs = np.r_[np.zeros(25), [1.0, 2.0, 3.0, 4.0, 5.0]]
    zsplit = paired_comparison(diffs, np.zeros(30), n_resamples=200)
    wilcox = paired_comparison(diffs, np.zeros(30), n_resamples=200, zero_method="wilcox")
    expected = sps.wilcoxon(diffs, zero_method="zsplit")
    assert zsplit.p_value == pytest.approx(expected.pvalue)
    assert wilcox.p_value < 0.05 < 0.1 < zsplit.p_value
    assert zsplit.prob_improvement == pytest.approx((25 * 0.5 + 5) / 30)


def test_paired_comparison_degenerate_cases() -> None:
    same = paired_comparison([0.4, 0.5, 0.6], [0.4, 0.5, 0.6])
    assert same.p_value == 1.0 and same.note == "all differences are zero"
    assert same.prob_improvement == 0.5
    assert (same.ci_low, same.ci_high) == (0.0, 0.0)
    single = paired_comparison([0.7], [0.5])
    assert math.isnan(single.p_value) and "fewer than two tasks" in single.note
    assert single.mean_difference == pytest.approx(0.2)
    with pytest.raises(ValueError, match="aligned"):
        paired_comparison([0.1, 0.2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        paired_comparison([0.1, float("nan")], [0.1, 0.2])


# --- multiplicity ----------------------------------------------------------------------------


def test_holm_known_vector() -> None:
    np.testing.assert_allclose(holm_correction([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(holm_correction([0.5, 0.9]), [1.0, 1.0])
    assert holm_correction([]).size == 0


def test_holm_nan_passes_through_and_does_not_count() -> None:
    adjusted = holm_correction([0.01, float("nan"), 0.04])
    np.testing.assert_allclose(adjusted, [0.02, np.nan, 0.04])
    with pytest.raises(ValueError):
        holm_correction([0.5, 1.5])


def test_comparison_table_labels_rows() -> None:
    def result(p: float) -> PairedResult:
        return PairedResult(0.1, 0.0, 0.2, 0.95, 1.0, p, 0.6, 28, 3)

    table = comparison_table(
        {
            "pretrained vs scratch": result(0.01),
            "bpe vs char": result(0.04),
            "bpe vs kmer": result(float("nan")),
            "cnn vs unet": result(0.03),
        }
    )
    np.testing.assert_allclose(table["p_holm"], [0.03, 0.06, np.nan, 0.06])
    assert table["verdict"].tolist() == [
        "significant",
        "not significant",
        "not tested",
        "not significant",
    ]
    assert table["comparison"].iloc[0] == "pretrained vs scratch"


# --- Friedman and critical difference -------------------------------------------------------


def _table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "A": [0.90, 0.80, 0.70, 0.60, 0.50],
            "B": [0.50, 0.85, 0.40, 0.30, 0.50],
            "C": [0.10, 0.20, 0.30, 0.65, 0.10],
        },
        index=["t1", "t2", "t3", "t4", "t5"],
    )


def test_friedman_matches_scipy_and_hand_ranks() -> None:
    scores = _table()
    result = friedman(scores)
    expected = sps.friedmanchisquare(scores["A"], scores["B"], scores["C"])
    assert result.statistic == pytest.approx(expected.statistic)
    assert result.p_value == pytest.approx(expected.pvalue)
    # ranks per task (1 = best): t1 1,2,3; t2 2,1,3; t3 1,2,3; t4 2,3,1; t5 1.5,1.5,3
    assert result.mean_ranks == pytest.approx({"A": 7.5 / 5, "B": 9.5 / 5, "C": 13 / 5})
    assert list(result.mean_ranks) == ["A", "B", "C"]
    assert result.n_tasks == 5


def test_critical_difference_matches_nemenyi_table() -> None:
    rng = np.random.default_rng(0)
    scores = pd.DataFrame(rng.random((10, 3)), columns=["x", "y", "z"])
    result = friedman(scores, alpha=0.05)
    # Demšar (2006), Table 5a: q_0.05 = 2.343 for k = 3
    assert result.critical_difference == pytest.approx(2.343 * math.sqrt(3 * 4 / 60), rel=1e-3)


def test_friedman_degenerate_and_bad_inputs() -> None:
    tied = friedman(pd.DataFrame({"a": [0.5, 0.6], "b": [0.5, 0.6], "c": [0.5, 0.6]}))
    assert tied.p_value == 1.0 and math.isnan(tied.statistic) and tied.note
    assert tied.mean_ranks == {"a": 2.0, "b": 2.0, "c": 2.0}
    with pytest.raises(ValueError, match="at least 3 conditions"):
        friedman(_table()[["A", "B"]])
    with pytest.raises(ValueError, match="t2"):
        friedman(_table().replace(0.85, np.nan))


def test_cliques_join_conditions_within_cd() -> None:
    assert _cliques(np.array([1.0, 1.5, 2.8, 3.0]), 1.0) == [(0, 1), (2, 3)]
    assert _cliques(np.array([1.0, 1.5, 2.0, 2.4]), 1.0) == [(0, 2), (1, 3)]
    assert _cliques(np.array([1.0, 2.5, 4.0]), 1.0) == []


def test_plot_critical_difference_writes_png(tmp_path) -> None:
    ranks = {"DNABERT-2": 1.6, "ConvNova": 1.9, "CNN": 3.1, "U-Net": 3.4, "scratch-BERT": 5.0}
    result = FriedmanResult(12.0, 0.01, ranks, 1.2, 0.05, 28)
    path = plot_critical_difference(result, tmp_path / "figs" / "cd.png", title="GUE")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 1024
    assert [p.name for p in path.parent.iterdir()] == ["cd.png"]


# --- tuning curves ---------------------------------------------------------------------------


def test_expected_max_hand_cases() -> None:
    np.testing.assert_allclose(expected_max_curve([0.0, 1.0]), [0.5, 1.0])
    # n = 2 from {1, 2, 3}: pairs {1,2} {1,3} {2,3} -> maxima 2, 3, 3 -> 8 / 3
    np.testing.assert_allclose(expected_max_curve([3.0, 1.0, 2.0]), [2.0, 8 / 3, 3.0])
    np.testing.assert_allclose(
        expected_max_curve([0.0, 1.0], with_replacement=True, max_n=3), [0.5, 0.75, 0.875]
    )
    np.testing.assert_allclose(expected_max_curve([0.4]), [0.4])
    np.testing.assert_allclose(expected_max_curve([0.2] * 4), [0.2] * 4)


def test_expected_max_matches_enumeration_with_ties() -> None:
    values = np.array([0.3, 0.1, 0.3, 0.7, 0.2, 0.7, 0.5])
    for n, got in enumerate(expected_max_curve(values), start=1):
        combos = list(itertools.combinations(values, n))
        assert got == pytest.approx(np.mean([max(c) for c in combos]))
    with_rep = expected_max_curve(values[:4], with_replacement=True)
    for n, got in enumerate(with_rep, start=1):
        draws = list(itertools.product(values[:4], repeat=n))
        assert got == pytest.approx(np.mean([max(d) for d in draws]))


def test_expected_max_limits() -> None:
    assert expected_max_curve([0.1, 0.2, 0.3], max_n=2).shape == (2,)
    with pytest.raises(ValueError, match="with_replacement"):
        expected_max_curve([0.1, 0.2], max_n=3)
    with pytest.raises(ValueError):
        expected_max_curve([0.1, 0.2], max_n=0)


# --- cost ------------------------------------------------------------------------------------


def test_amortised_cost_rules() -> None:
    assert amortised_cost(100.0, 4, "none") == 0.0
    assert amortised_cost(100.0, 4, "per-task") == 25.0
    assert amortised_cost(100.0, 4, "full") == 100.0
    with pytest.raises(ValueError) as error:
        amortised_cost(100.0, 4, "half")  # type: ignore[arg-type]
    assert all(rule in str(error.value) for rule in AMORTISATION_RULES)
    with pytest.raises(ValueError, match="n_tasks_using"):
        amortised_cost(100.0, 0, "per-task")
    with pytest.raises(ValueError):
        amortised_cost(-1.0, 2, "full")


def test_pareto_front_small_set() -> None:
    cost = [1.0, 2.0, 3.0, 2.0, 1.0, 1.0]
    score = [0.5, 0.7, 0.6, 0.7, 0.5, 0.4]
    # (3, .6) is beaten by (2, .7); (1, .4) by (1, .5); duplicates do not dominate each other
    assert pareto_front(cost, score).tolist() == [True, True, False, True, True, False]
    assert pareto_front([5.0], [0.1]).tolist() == [True]
    with pytest.raises(ValueError):
        pareto_front([1.0, 2.0], [0.5])


def test_break_even_tasks() -> None:
    # 100 / n + 2 <= 12  <=>  n >= 10
    assert break_even_tasks(100.0, 2.0, 12.0) == 10
    assert 100.0 / 10 + 2.0 <= 12.0 < 100.0 / 9 + 2.0
    assert break_even_tasks(101.0, 2.0, 12.0) == 11
    assert break_even_tasks(5.0, 1.0, 100.0) == 1
    assert break_even_tasks(0.3, 0.0, 0.1) == 3  # 0.3 / 0.1 is 2.999... in floating point
    assert break_even_tasks(100.0, 12.0, 10.0) is None
    assert break_even_tasks(100.0, 10.0, 10.0) is None
    assert break_even_tasks(0.0, 10.0, 10.0) == 1
    with pytest.raises(ValueError):
        break_even_tasks(-1.0, 1.0, 2.0)


# --- power: what a handful of tasks can and cannot tell ---------------------------------------


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_min_attainable_p_is_scipys_exact_p_when_every_task_agrees(n: int) -> None:
    differences = np.arange(1.0, n + 1.0)  # every task improves
    exact = sps.wilcoxon(differences, method="exact").pvalue
    assert min_attainable_p(n) == pytest.approx(exact)
    assert min_attainable_p(3) == 0.25 and min_attainable_p(1) == 1.0


def test_five_tasks_that_all_improve_are_underpowered_not_insignificant() -> None:
    b = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    result = paired_comparison(b + 0.1, b, n_resamples=500)
    assert result.p_value == pytest.approx(0.0625) and result.p_floor == pytest.approx(0.0625)
    table = comparison_table({"all improve": result})
    row = table.iloc[0]
    assert row["verdict"] == "underpowered"
    assert row["tasks_needed"] == 6  # 2 / 2**6 = 0.03125 <= 0.05
    # Seven tasks that all improve can reach 0.05 alone, and do.
    seven = paired_comparison(np.arange(7) + 1.0, np.arange(7.0), n_resamples=500)
    assert comparison_table({"seven": seven}).iloc[0]["verdict"] == "significant"


def test_holm_floor_is_the_family_size_times_the_raw_floor() -> None:
    # gue_short's shape: 20 comparisons over 3 tasks; a 4-task one that could reach 0.05 alone
    # cannot within a family of 20.
    three = PairedResult(-0.36, -0.66, -0.19, 0.95, 0.0, 0.25, 0.0, 3, 3)
    table = comparison_table({f"c{i}": three for i in range(20)})
    assert table["p_holm_floor"].iloc[0] == pytest.approx(1.0)  # 20 x 0.25, capped
    assert set(table["verdict"]) == {"underpowered"}
    assert table["tasks_needed"].iloc[0] == tasks_needed(20) == 10  # 20 x 2/2**10 <= 0.05
    six = PairedResult(0.2, 0.1, 0.3, 0.95, 0.0, 1 / 32, 1.0, 6, 3)
    pair = comparison_table({"a": six, "b": six})
    np.testing.assert_allclose(pair["p_holm_floor"], [2 / 32, 2 / 32])
    assert set(pair["verdict"]) == {"underpowered"}  # 0.0625 > 0.05 even at the floor


def test_one_task_interval_uses_its_seeds() -> None:
    # replicate differences +0.1, -0.3, +0.4 on one task: the interval spans them, not a point
    a = np.array([[0.6, 0.2, 0.9]])
    b = np.array([[0.5, 0.5, 0.5]])
    result = paired_comparison(a, b, n_resamples=4000)
    assert result.mean_difference == pytest.approx(0.2 / 3)
    assert result.ci_low < 0.0 < result.ci_high
    assert result.ci_low >= -0.3 - 1e-12 and result.ci_high <= 0.4 + 1e-12
    assert result.sample == "1 task x 3 seeds" and "seeds only" in result.interval_note
    assert comparison_table({"one": result}).iloc[0]["verdict"] == "underpowered"


def test_hierarchical_bootstrap_resamples_tasks_then_seeds() -> None:
    diffs = np.array([[0.1, 0.1, 0.1], [0.3, 0.3, 0.3]])
    interval = hierarchical_bootstrap(diffs, n_resamples=2000)
    assert interval.mean == pytest.approx(0.2)
    assert interval.low == pytest.approx(0.1) and interval.high == pytest.approx(0.3)
    # A missing pair (NaN) leaves that seed out of its task only.
    ragged = hierarchical_bootstrap(np.array([[0.1, np.nan], [0.3, 0.5]]), n_resamples=2000)
    assert ragged.mean == pytest.approx((0.1 + 0.4) / 2)
    assert 0.1 - 1e-12 <= ragged.low < ragged.high <= 0.5 + 1e-12
    with pytest.raises(ValueError, match="finite"):
        hierarchical_bootstrap(np.array([[np.nan, np.nan], [0.1, 0.2]]))


def test_missing_replicates_drop_a_pair_not_the_task() -> None:
    a = np.array([[0.7, np.nan, 0.7], [0.6, 0.6, 0.6], [0.5, 0.5, 0.5]])
    b = np.array([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]])
    result = paired_comparison(a, b, n_resamples=500)
    assert (result.n_tasks, result.n_pairs) == (3, 8)
    assert result.mean_difference == pytest.approx((0.2 + 0.1 + 0.0) / 3)
    assert result.sample == "3 tasks x up to 3 seeds (8 pairs)"
    assert "not a calibrated 95%" in result.interval_note
