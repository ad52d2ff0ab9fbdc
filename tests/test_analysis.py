"""The analysis layer on hand-built run tables shaped like MLflow's search_runs output."""

import json

import numpy as np
import pandas as pd
import pytest

from ablate import analysis
from ablate.stats import paired_comparison
from ablate.tracking.schema import (
    MetricName,
    Outcome,
    Stage,
    Tag,
    metric_column,
    param_column,
    tag_column,
)

CELL, ARCH, PRE, TOK, TASK = (tag_column(t) for t in (Tag.CELL, Tag.ARCHITECTURE,
                                                      Tag.PRETRAINING, Tag.TOKENIZER, Tag.TASK))
STAGE, OUTCOME = tag_column(Tag.STAGE), tag_column(Tag.OUTCOME)
PRETRAIN_RUN = tag_column(Tag.PRETRAIN_RUN_ID)
BEST_DEV_MCC = metric_column(MetricName.BEST_DEV_MCC)
DEVICE_HOURS = metric_column(MetricName.DEVICE_HOURS)
FLOPS = metric_column(MetricName.FLOPS)


def trial_rows(cell_axes, outcomes, scores, hours, max_epochs=4, start=0):
    arch, pre, tok, task = cell_axes
    rows = []
    for i, (outcome, score, hour) in enumerate(zip(outcomes, scores, hours, strict=True)):
        rows.append({
            CELL: f"{arch}|{pre}|{tok}|{task}", ARCH: arch, PRE: pre, TOK: tok, TASK: task,
            STAGE: Stage.TRIAL, OUTCOME: outcome, tag_column(Tag.TRIAL_ID): f"{arch}{pre}{i}",
            param_column("max_epochs"): str(max_epochs), param_column("learning_rate"): "0.001",
            BEST_DEV_MCC: score, DEVICE_HOURS: hour,
            metric_column(MetricName.WALL_SECONDS): hour * 3600, FLOPS: 1e9,
            "start_time": pd.Timestamp("2026-01-01") + pd.Timedelta(minutes=start + i),
        })
    return rows


def test_budget_table_counts_outcomes_and_flags_unequal_budgets():
    done, pruned = Outcome.COMPLETED, Outcome.PRUNED
    model, infra = Outcome.MODEL_FAILED, Outcome.FAILED
    rows = (trial_rows(("cnn", "none", "char", "tf/0"), [done, pruned, model, infra],
                       [0.5, 0.3, np.nan, np.nan], [0.1, 0.05, 0.01, 0.01])
            + trial_rows(("unet", "none", "char", "tf/0"), [done, done, pruned],
                         [0.6, 0.4, 0.2], [0.2, 0.2, 0.1])
            + trial_rows(("convnova", "none", "char", "tf/0"), [done, pruned, infra],
                         [0.7, 0.1, np.nan], [0.3, 0.1, 0.1]))
    table = analysis.cells(pd.DataFrame(rows), trials_per_cell=3).set_index("cell")
    cnn = table.loc["cnn|none|char|tf/0"]
    assert (cnn.trials, cnn.completed, cnn.pruned, cnn.model_failed, cnn.failed) == (4, 1, 1, 1, 1)
    # The model failure counts against the budget; the infrastructure failure does not.
    assert cnn.budget_trials == 3 and cnn.finished
    assert cnn.best_dev_mcc == 0.5 and cnn.device_hours == pytest.approx(0.17)
    assert cnn.best_params["learning_rate"] == "0.001"
    assert not table.loc["convnova|none|char|tf/0"].finished  # 2 of 3 counted
    parity = analysis.budget_parity(table.reset_index(), trials_per_cell=3)
    assert parity == {"cnn|none|char|tf/0": True, "unet|none|char|tf/0": True,
                      "convnova|none|char|tf/0": False}
    refused = analysis.refused_cells(table.reset_index(), trials_per_cell=3)
    assert refused == {"convnova|none|char|tf/0": "unfinished: 2 of 3 trials"}


def test_best_configuration_comes_from_completed_trials_only():
    # A pruned trial's dev score was measured at a lower fidelity and it was never replicated.
    rows = trial_rows(("cnn", "none", "char", "tf/0"),
                      [Outcome.PRUNED, Outcome.COMPLETED, Outcome.COMPLETED],
                      [0.9, 0.5, 0.6], [0.1, 0.1, 0.1])
    rows[0][param_column("learning_rate")] = "0.1"
    rows[2][param_column("learning_rate")] = "0.0003"
    (row,) = analysis.cells(pd.DataFrame(rows)).itertuples()
    assert row.best_dev_mcc == 0.6 and row.best_params["learning_rate"] == "0.0003"
    assert row.best_trial == "cnnnone2"


def test_epoch_budgets_may_differ_between_tasks_not_within_one():
    done = Outcome.COMPLETED
    rows = (trial_rows(("cnn", "none", "char", "a"), [done, done], [0.5, 0.4], [0.1, 0.1], 4)
            + trial_rows(("unet", "none", "char", "a"), [done, done], [0.5, 0.4], [0.1, 0.1], 4)
            + trial_rows(("cnn", "none", "char", "b"), [done, done], [0.5, 0.4], [0.1, 0.1], 9)
            + trial_rows(("unet", "none", "char", "b"), [done, done], [0.5, 0.4], [0.1, 0.1], 9)
            + trial_rows(("tf", "none", "char", "b"), [done, done], [0.5, 0.4], [0.1, 0.1], 3))
    parity = analysis.budget_parity(analysis.cells(pd.DataFrame(rows)))
    assert parity == {"cnn|none|char|a": True, "cnn|none|char|b": True, "tf|none|char|b": False,
                      "unet|none|char|a": True, "unet|none|char|b": True}


def replicate_frame(values):
    """values: {(arch, pre, tok): {task: [mcc per seed]}} -> runs shaped like MLflow's."""
    rows = []
    for (arch, pre, tok), per_task in values.items():
        for task, mccs in per_task.items():
            for seed, mcc in enumerate(mccs):
                rows.append({
                    CELL: f"{arch}|{pre}|{tok}|{task}", ARCH: arch, PRE: pre, TOK: tok,
                    TASK: task, STAGE: Stage.REPLICATE,
                    tag_column(Tag.REPLICATE_SEED): str(seed), OUTCOME: Outcome.COMPLETED,
                    metric_column(MetricName.TEST_MCC): mcc, BEST_DEV_MCC: mcc,
                    DEVICE_HOURS: 0.5, FLOPS: 2e9,
                })
    return pd.DataFrame(rows)


def test_comparisons_pair_tasks_and_seeds_and_apply_holm():
    scratch = {"t1": [0.50, 0.52], "t2": [0.40, 0.42], "t3": [0.60, 0.58], "t4": [0.3, 0.3],
               "t5": [0.7, 0.72]}
    pretrained = {t: [v + 0.05 * (i + 1) for v in m] for i, (t, m) in enumerate(scratch.items())}
    runs = replicate_frame({("cnn", "none", "char"): scratch,
                            ("cnn", "mlm:small", "char"): pretrained})
    reps = analysis.replicates(runs)
    assert len(reps) == 20 and not reps["collapsed"].any()
    table = analysis.comparisons(reps)
    (row,) = table.itertuples()
    assert (row.axis, row.treatment, row.baseline) == ("pretraining", "mlm:small", "none")
    expected = paired_comparison(np.array(list(pretrained.values())),
                                 np.array(list(scratch.values())))
    assert row.mean_difference == pytest.approx(0.15)  # mean of 0.05, 0.10, ..., 0.25
    assert row.p_value == pytest.approx(expected.p_value) == pytest.approx(0.0625)
    assert row.p_holm == pytest.approx(0.0625)  # a family of one
    # Five tasks that all improve: p = 2 / 2**5 is the smallest the test can give, above 0.05.
    assert row.prob_improvement == 1.0 and row.verdict == "underpowered"
    assert row.p_floor == pytest.approx(0.0625) and row.sample == "5 tasks x 2 seeds"


def test_a_model_failure_counts_against_its_arm_and_an_infrastructure_failure_does_not():
    scratch = {"t1": [0.50, 0.52, 0.51], "t2": [0.40, 0.42, 0.41], "t3": [0.60, 0.58, 0.59]}
    unstable = {"t1": [0.70, 0.71, 0.72], "t2": [0.60, 0.61, 0.62], "t3": [0.80, 0.80, 0.80]}
    runs = replicate_frame({("cnn", "none", "char"): scratch,
                            ("cnn", "mlm:small", "char"): unstable})
    hard = (runs[PRE] == "mlm:small") & (runs[TASK] == "t3")
    # On its hardest task the pretrained arm's loss became NaN in two seeds of three...
    diverged = hard & runs[tag_column(Tag.REPLICATE_SEED)].isin(["0", "1"])
    runs.loc[diverged, OUTCOME] = Outcome.MODEL_FAILED
    runs.loc[diverged, tag_column(Tag.FAILURE)] = "nan_loss"
    runs.loc[diverged, metric_column(MetricName.TEST_MCC)] = np.nan
    # ...and one scratch replicate of t1 lost its node.
    lost_node = ((runs[PRE] == "none") & (runs[TASK] == "t1")
                 & (runs[tag_column(Tag.REPLICATE_SEED)] == "2"))
    runs.loc[lost_node, OUTCOME] = Outcome.FAILED
    runs.loc[lost_node, metric_column(MetricName.TEST_MCC)] = np.nan
    reps = analysis.replicates(runs)
    assert reps["model_failed"].sum() == 2 and reps["failed"].sum() == 1
    (row,) = analysis.comparisons(reps).itertuples()
    # t3 stays in: the two failures score 0 (mean over seeds (0 + 0 + 0.8) / 3 vs 0.59); t1 is
    # compared on its two seeds with a pair.
    t1 = (0.70 + 0.71) / 2 - (0.50 + 0.52) / 2
    t2 = 0.61 - 0.41
    t3 = 0.80 / 3 - 0.59
    assert row.n_tasks == 3 and row.n_pairs == 8
    assert row.mean_difference == pytest.approx((t1 + t2 + t3) / 3)
    summary = analysis.replicate_summary(reps)
    assert summary.loc["cnn|mlm:small|char|t3", "replicate_model_failures"] == 2
    assert summary.loc["cnn|mlm:small|char|t3", "test_score"] == pytest.approx(0.8 / 3)
    assert summary.loc["cnn|none|char|t1", "test_n"] == 2


def test_cells_report_test_intervals_and_the_selection_gap():
    done = Outcome.COMPLETED
    trials = trial_rows(("cnn", "none", "char", "t1"), [done, done], [0.8, 0.6], [0.1, 0.1])
    reps = replicate_frame({("cnn", "none", "char"): {"t1": [0.60, 0.70, 0.65]}})
    table = analysis.cells(pd.DataFrame(trials), reps)
    (row,) = table.itertuples()
    assert row.test_score == pytest.approx(0.65) and row.test_n == 3
    assert 0.60 <= row.test_ci_low < 0.65 < row.test_ci_high <= 0.70
    assert row.selection_gap == pytest.approx(0.8 - 0.65)


def test_comparisons_refuse_cells_with_unequal_or_unfinished_budgets():
    scratch = {"t1": [0.5, 0.5], "t2": [0.4, 0.4], "t3": [0.6, 0.6]}
    pretrained = {"t1": [0.6, 0.6], "t2": [0.5, 0.5], "t3": [0.7, 0.7]}
    reps = analysis.replicates(replicate_frame({("cnn", "none", "char"): scratch,
                                                ("cnn", "mlm:small", "char"): pretrained}))
    refused = {"cnn|mlm:small|char|t2": "budget differs: 1 trials x 4 epochs"}
    (row,) = analysis.comparisons(reps, refused=refused).itertuples()
    assert row.n_tasks == 2 and "t2: cnn|mlm:small|char|t2 (budget differs" in row.refused
    everything = {f"cnn|{p}|char|{t}": "unfinished: 1 trial(s) still running"
                  for p in ("none", "mlm:small") for t in scratch}
    (row,) = analysis.comparisons(reps, refused=everything).itertuples()
    assert row.verdict == "refused" and row.n_tasks == 0 and row.refused.count("unfinished") == 6


def test_collapsed_replicates_are_counted():
    runs = replicate_frame({("cnn", "none", "char"): {"t1": [0.5, 0.01, np.nan]}})
    reps = analysis.replicates(runs)
    assert reps["collapsed"].tolist() == [False, True, True]


def test_amortisation_charges_pretraining_per_rule():
    runs = pd.concat([
        replicate_frame({("cnn", "mlm:small", "char"): {"t1": [0.6], "t2": [0.7]},
                         ("cnn", "none", "char"): {"t1": [0.5], "t2": [0.6]}}),
    ])
    runs[PRETRAIN_RUN] = np.where(runs[PRE] == "none", None, "run1")
    costs = {"run1": analysis.PretrainCost("run1", device_hours=10.0, flops=1e12)}  # GPU
    table = analysis.cost_benefit(runs, costs).set_index(["cell", "rule"])
    pre = "cnn|mlm:small|char|t1"
    assert table.loc[(pre, "none"), "pretrain_gpu_hours"] == 0
    assert table.loc[(pre, "per-task"), "pretrain_gpu_hours"] == 5.0  # used by 2 tasks
    assert table.loc[(pre, "per-task"), "pretrain_flops"] == 5e11
    assert table.loc[(pre, "full"), "pretrain_gpu_hours"] == 10.0
    # The replicate's 0.5 h ran on CPU (no device type: counted as CPU, and said so); the
    # pretraining's 10 h on a GPU. They are never added.
    assert table.loc[(pre, "full"), ["cpu_core_hours", "gpu_hours"]].tolist() == [0.5, 10.0]
    assert table.loc[(pre, "full"), "flops"] == 1e12 + 2e9
    assert table.loc[(pre, "full"), "assumed_device_type"] == (
        "1 fine-tuning runs without a device type counted as cpu")
    assert table.loc[("cnn|none|char|t1", "full"), "pretrain_gpu_hours"] == 0
    # Nothing is priced: money is NaN, the gaps are named, the front is on FLOPs.
    assert table["price"].isna().all()
    assert table.loc[(pre, "none"), "unpriced"] == "cpu"
    assert table.loc[(pre, "full"), "unpriced"] == "cpu; pretraining run1 (gpu)"
    assert set(table["pareto_axis"]) == {"flops"}
    # Under "none" the pretrained cell costs the same and scores better: on the front.
    assert table.loc[(pre, "none"), "pareto"]
    assert not table.loc[("cnn|none|char|t1", "none"), "pareto"]
    # Priced: money adds up across devices, and the front is on money.
    priced = analysis.cost_benefit(runs, costs, prices={"cpu": 0.1, "gpu": 2.0}).set_index(
        ["cell", "rule"])
    assert priced.loc[(pre, "full"), "price"] == pytest.approx(0.5 * 0.1 + 10 * 2.0)
    assert priced.loc[(pre, "per-task"), "pretrain_price"] == pytest.approx(10.0)
    assert set(priced["pareto_axis"]) == {"price"} and (priced["unpriced"] == "").all()
    # Under "full" the pretrained cell costs 20.05 against 0.05: both on the front.
    assert priced.loc[(pre, "full"), "pareto"] and priced.loc[("cnn|none|char|t1", "full"),
                                                              "pareto"]


def test_break_even_from_search_trajectories():
    scratch = trial_rows(("cnn", "none", "char", "t1"), [Outcome.COMPLETED] * 3, [0.3, 0.5, 0.6],
                         [1.0, 1.0, 1.0])
    pretrained = trial_rows(("cnn", "mlm:s", "char", "t1"), [Outcome.COMPLETED] * 2, [0.6, 0.55],
                            [0.5, 0.5])
    frame = pd.DataFrame(scratch + pretrained)  # every trial 1e9 FLOPs, on CPU
    frame[PRETRAIN_RUN] = np.where(frame[PRE] == "none", None, "p")
    costs = {"p": analysis.PretrainCost("p", device_hours=5.0, flops=4e9, device_type="gpu",
                                        device_name="NVIDIA A100-SXM4-80GB")}
    prices = {"A100": 2.5, "cpu": 2.0}
    (row,) = analysis.break_even(frame, costs, prices=prices).itertuples()
    # FLOPs: pretrained reached 0.6 after 1e9; scratch needed 3e9. 4e9/n + 1e9 <= 3e9 -> n = 2.
    assert (row.pretrained_flops, row.scratch_flops, row.pretrain_flops) == (1e9, 3e9, 4e9)
    assert (row.break_even_tasks_flops, row.verdict_flops) == (2, "after 2 tasks")
    # Money: 0.5 h and 3 h of CPU at 2.0; 5 A100-hours at 2.5. 12.5/n + 1 <= 6 -> n = 3.
    assert (row.pretrained_price, row.scratch_price, row.pretrain_price) == (1.0, 6.0, 12.5)
    assert (row.break_even_tasks_price, row.verdict_price, row.unpriced) == (3, "after 3 tasks",
                                                                             "")
    # Without a price for the GPU the money verdict says so; FLOPs still answer.
    (row,) = analysis.break_even(frame, costs, prices={"cpu": 2.0}).itertuples()
    assert row.verdict_price == "unpriced" and pd.isna(row.break_even_tasks_price)
    assert row.unpriced == "pretraining p (gpu NVIDIA A100-SXM4-80GB)"
    assert row.verdict_flops == "after 2 tasks"
    frame.loc[frame[PRE] == "mlm:s", BEST_DEV_MCC] = [0.9, 0.1]
    (row,) = analysis.break_even(frame, costs, prices=prices).itertuples()
    assert row.verdict_flops == row.verdict_price == "scratch never matched"
    assert pd.isna(row.break_even_tasks_flops) and np.isnan(row.scratch_flops)


def test_tuning_curves_are_monotone_and_end_at_the_best():
    rows = trial_rows(("cnn", "none", "char", "t1"), [Outcome.COMPLETED] * 4, [0.1, 0.4, 0.2, 0.3],
                      [1, 1, 1, 1])
    (curve,) = analysis.tuning_curves(pd.DataFrame(rows)).values()
    assert curve[0] == pytest.approx(0.25) and curve[-1] == pytest.approx(0.4)
    assert np.all(np.diff(curve) >= 0)
    # A pruned trial's truncated score stays out: the curve is over completed trials only.
    rows += trial_rows(("cnn", "none", "char", "t1"), [Outcome.PRUNED], [0.9], [1], start=4)
    (curve,) = analysis.tuning_curves(pd.DataFrame(rows)).values()
    assert len(curve) == 4 and curve[-1] == pytest.approx(0.4)


# --- scores, sizes, families -----------------------------------------------------------------

N_PARAMS = metric_column(MetricName.N_PARAMS)
TEST_SCORE = metric_column(MetricName.TEST_SCORE)
BEST_DEV_SCORE = metric_column(MetricName.BEST_DEV_SCORE)
CHECKPOINT = tag_column(Tag.EXTERNAL_CHECKPOINT)


def scored_frame(values, n_params=None, checkpoints=()):
    """values: {(arch, pre, tok): {task: [score per seed]}} -> replicate runs of schema 3, whose
    MCC is the score minus 0.1 on every run (so a test on MCC and one on the score differ)."""
    runs = replicate_frame(values)
    scores = runs[metric_column(MetricName.TEST_MCC)].to_numpy()
    runs[TEST_SCORE] = scores
    runs[BEST_DEV_SCORE] = scores
    runs[metric_column(MetricName.TEST_MCC)] = scores - 0.1
    runs[tag_column(Tag.SCHEMA_VERSION)] = "3"
    runs[N_PARAMS] = [float((n_params or {}).get(arch, 1e6)) for arch in runs[ARCH]]
    runs[CHECKPOINT] = [arch if arch in checkpoints else None for arch in runs[ARCH]]
    return runs


def test_cells_select_on_the_task_score_and_say_which_metric():
    done = Outcome.COMPLETED
    covid = trial_rows(("cnn", "none", "char", "virus/covid"), [done, done], [0.5, 0.4], [1, 1])
    frame = pd.DataFrame(covid)
    frame[BEST_DEV_SCORE] = [0.3, 0.6]  # macro F1 prefers the second trial, MCC the first
    frame[N_PARAMS] = [2e6, 3e6]
    frame[tag_column(Tag.SCHEMA_VERSION)] = "3"
    (row,) = analysis.cells(frame).itertuples()
    assert (row.best_trial, row.best_dev_score, row.best_dev_mcc) == ("cnnnone1", 0.6, 0.4)
    assert row.metric == "f1_macro" and row.n_params == 3e6
    # A run of schema 2 has only the MCC names: its score is MCC, whatever the task.
    old = pd.DataFrame(covid)
    old[tag_column(Tag.SCHEMA_VERSION)] = "2"
    (row,) = analysis.cells(old).itertuples()
    assert (row.best_trial, row.best_dev_score, row.metric) == ("cnnnone0", 0.5, "mcc")
    tf = analysis.cells(pd.DataFrame(trial_rows(("cnn", "none", "char", "tf/0"), [done], [0.2],
                                                [1])).assign(**{BEST_DEV_SCORE: 0.25}))
    assert tf["metric"].tolist() == ["mcc"] and tf["best_dev_score"].tolist() == [0.25]


def test_comparisons_use_the_score_and_give_both_arms_sizes():
    scratch = {"t1": [0.50, 0.52], "t2": [0.40, 0.42], "t3": [0.60, 0.58]}
    better = {t: [v + 0.1 for v in m] for t, m in scratch.items()}
    runs = scored_frame({("transformer", "none", "char"): better,
                         ("cnn", "none", "char"): scratch,
                         ("kmer", "none", "char"): scratch,
                         ("transformer", "none", "bpe"): better,
                         ("convnova", "none", "bpe"): scratch},
                        n_params={"transformer": 1.2e7, "cnn": 1e7, "convnova": 2e6,
                                  "kmer": 4096})
    reps = analysis.replicates(runs)
    assert reps["test_score"].sub(reps["test_mcc"]).round(6).eq(0.1).all()
    table = analysis.comparisons(reps).set_index("comparison")
    arch = table[table["axis"] == "architecture"]
    # The k-mer baseline is in neither group of the transformer-vs-convolution question.
    assert set(zip(arch["treatment"], arch["baseline"], strict=True)) == {
        ("transformer", "cnn"), ("transformer", "convnova")}
    cnn = arch[arch["baseline"] == "cnn"].iloc[0]
    assert cnn.mean_difference == pytest.approx(0.1) and cnn.metric == "mcc"
    assert (cnn.treatment_params, cnn.baseline_params) == (1.2e7, 1e7)
    assert cnn.size_ratio == pytest.approx(1.2) and not cnn.size_mismatch
    nova = arch[arch["baseline"] == "convnova"].iloc[0]
    assert nova.size_ratio == pytest.approx(6.0) and nova.size_mismatch
    # ConvNova reading BPE tokens is ablate's own extension; the transformer arm is not.
    assert nova.baseline_extension and not nova.treatment_extension
    assert not table["exposure_unknown"].any()


def test_external_checkpoint_is_paired_with_its_own_random_init_twin():
    scores = {"t1": [0.5, 0.6], "t2": [0.4, 0.5]}
    lifted = {t: [v + 0.2 for v in m] for t, m in scores.items()}
    runs = scored_frame({("dnabert2", "external:dnabert2", "bpe"): lifted,
                         ("dnabert2", "none", "bpe"): scores,
                         ("transformer", "none", "bpe"): scores,
                         ("transformer", "mlm:small", "bpe"): lifted,
                         ("cnn", "none", "bpe"): scores},
                        n_params={"dnabert2": 1.17e8, "transformer": 1.2e7},
                        checkpoints=("dnabert2",))
    reps = analysis.replicates(runs)
    assert set(reps.loc[reps["architecture"] == "dnabert2", "external_checkpoint"]) == {
        "dnabert2"}
    table = analysis.comparisons(reps)
    external = table[table["treatment"] == "external:dnabert2"]
    (row,) = external.itertuples()
    assert (row.axis, row.baseline, row.architecture) == ("pretraining", "none", "dnabert2")
    assert row.exposure_unknown and row.treatment_params == 1.17e8
    # No comparison sets the checkpoint against another architecture's from-scratch cell.
    pre = table[table["axis"] == "pretraining"]
    assert set(zip(pre["architecture"], pre["treatment"], strict=True)) == {
        ("dnabert2", "external:dnabert2"), ("transformer", "mlm:small")}
    assert table.loc[table["treatment"] != "external:dnabert2", "exposure_unknown"].eq(
        False).all()


def test_kmer_floor_and_cost_benefit_include_the_baseline():
    rows = (trial_rows(("kmer", "none", "char", "t1"), [Outcome.COMPLETED], [0.3], [0.01])
            + trial_rows(("cnn", "none", "char", "t1"), [Outcome.COMPLETED], [0.5], [0.1]))
    trial_runs = pd.DataFrame(rows)
    reps = replicate_frame({("kmer", "none", "char"): {"t1": [0.28, 0.30]},
                            ("cnn", "none", "char"): {"t1": [0.5, 0.52]}})
    all_runs = pd.concat([trial_runs, reps], ignore_index=True)
    table = analysis.cells(trial_runs, all_runs)
    assert dict(zip(table["architecture"], table["family"], strict=True)) == {
        "kmer": "baseline", "cnn": "convolutional"}
    (floor,) = analysis.kmer_floor(table).itertuples()
    assert (floor.task, floor.cell, floor.test_score) == ("t1", "kmer|none|char|t1",
                                                         pytest.approx(0.29))
    benefit = analysis.cost_benefit(all_runs, {})
    kmer = benefit[benefit["architecture"] == "kmer"]
    assert len(kmer) == 3 and set(kmer["family"]) == {"baseline"}
    assert kmer["test_score"].iloc[0] == pytest.approx(0.29)


# --- edges of the search ranges --------------------------------------------------------------

SPACE = {
    "params": {
        "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
        "dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
        "batch_size": {"type": "categorical", "choices": [16, 32, 64]},
        "activation": {"type": "categorical", "choices": ["gelu", "relu"]},
        "epochs": {"type": "int", "low": 2, "high": 10},
        "warmup_ratio": {"type": "categorical", "choices": [0.0, 0.05, 0.1]},
    },
    "model_params": {"hidden_size": {"type": "categorical", "choices": [64, 128, 256]}},
}


def test_edge_flags_use_log_width_and_skip_natural_bounds():
    best = {"learning_rate": "0.0003", "dropout": "0.0", "weight_decay": "0.099",
            "batch_size": "32", "activation": "relu", "epochs": "6", "warmup_ratio": "0.0",
            "hidden_size": "64"}
    # 3e-4 is within 5% of [1e-5, 1e-2] on a linear scale but mid-range on the log scale;
    # dropout and warm-up at 0 are natural bounds.
    flags = analysis.edge_flags(best, SPACE)
    assert [(f.parameter, f.side) for f in flags] == [("weight_decay", "high"),
                                                      ("hidden_size", "low")]
    best.update(learning_rate="0.0095", batch_size="64", epochs="10", dropout="0.49",
                warmup_ratio="0.1", hidden_size="128")
    flags = analysis.edge_flags(best, json.dumps(SPACE))
    assert {f.parameter: f.side for f in flags} == {
        "learning_rate": "high", "dropout": "high", "weight_decay": "high",
        "batch_size": "high", "epochs": "high", "warmup_ratio": "high"}
    assert str(flags[0]) == "learning_rate=0.0095 at high edge [1e-05, 0.01]"
    assert analysis.edge_flags({"learning_rate": "1.2e-5"}, SPACE)[0].side == "low"
    assert analysis.edge_flags(best, None) == []


def test_cells_list_parameters_at_an_edge_from_the_cell_runs():
    rows = trial_rows(("cnn", "none", "char", "t1"), [Outcome.COMPLETED] * 2, [0.3, 0.5],
                      [1, 1])
    frame = pd.DataFrame(rows)
    frame[param_column("learning_rate")] = ["0.001", "0.01"]
    cell_run = pd.DataFrame([{CELL: "cnn|none|char|t1", STAGE: Stage.CELL,
                              tag_column(Tag.SEARCH_SPACE): json.dumps(SPACE)}])
    (row,) = analysis.cells(frame, cell_runs=cell_run).itertuples()
    assert row.at_edge == "learning_rate=0.01 at high edge [1e-05, 0.01]"
    assert analysis.cells(frame)["at_edge"].tolist() == [""]


# --- what the report discloses ---------------------------------------------------------------


def test_caveats_per_task_from_cell_runs():
    cell_runs = pd.DataFrame([
        {CELL: "cnn|none|char|t1", TASK: "t1", STAGE: Stage.CELL,
         tag_column(Tag.CAVEAT): "Test labels are 90% one class.",
         metric_column(analysis.CAVEAT_PREFIX + "majority_share"): 0.9},
        {CELL: "unet|none|char|t1", TASK: "t1", STAGE: Stage.CELL,
         tag_column(Tag.CAVEAT): "Test labels are 90% one class."},
        {CELL: "cnn|none|char|t2", TASK: "t2", STAGE: Stage.CELL},
    ])
    (row,) = analysis.caveats(cell_runs).itertuples()
    assert (row.task, row.caveat) == ("t1", "Test labels are 90% one class.")
    assert row.figures == analysis.CAVEAT_PREFIX + "majority_share = 0.9"


def test_leakage_reads_pretraining_runs_from_mlflow(tmp_path):
    from mlflow import MlflowClient

    from ablate.tracking.writer import register_external, register_pretraining

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(uri)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"0")
    exposure = analysis.EXPOSURE_PREFIX
    own = register_pretraining(
        client, key="k1", name="small", architecture="transformer", tokenizer="char",
        device_type="cpu", params={}, model_folder=folder,
        metrics={MetricName.LEAKED_REMOVED: 12.0, MetricName.CORPUS_SEQUENCES: 1000.0,
                 exposure + "tf/0/dev": 3.0, exposure + "tf/0/test": 1.0,
                 exposure + "prom/prom_300_all": 0.0})
    external = register_external(client, key="k2", name="dnabert2", folder=folder,
                                 device_hours=100.0)
    table = analysis.leakage(analysis.pretraining_runs(uri, [own, external])).set_index("name")
    assert table.loc["small", "leaked_removed"] == 12 and table.loc["small", "kind"] == "ablate"
    assert table.loc["small", "corpus_sequences"] == 1000
    assert table.loc["small", "exposure"] == "prom/prom_300_all: 0; tf/0: 3 dev, 1 test"
    assert table.loc["dnabert2", "kind"] == "external"
    assert table.loc["dnabert2", "exposure"] == "unknown"
    assert pd.isna(table.loc["dnabert2", "leaked_removed"])
