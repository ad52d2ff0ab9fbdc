"""The analysis layer on hand-built run tables shaped like MLflow's search_runs output."""

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
    done, pruned, failed = Outcome.COMPLETED, Outcome.PRUNED, Outcome.FAILED
    rows = (trial_rows(("cnn", "none", "char", "tf/0"), [done, pruned, failed],
                       [0.5, 0.3, np.nan], [0.1, 0.05, 0.01])
            + trial_rows(("unet", "none", "char", "tf/0"), [done, done, pruned],
                         [0.6, 0.4, 0.2], [0.2, 0.2, 0.1])
            + trial_rows(("convnova", "none", "char", "tf/0"), [done, pruned],
                         [0.7, 0.1], [0.3, 0.1]))
    table = analysis.cells(pd.DataFrame(rows)).set_index("cell")
    cnn = table.loc["cnn|none|char|tf/0"]
    assert (cnn.trials, cnn.completed, cnn.pruned, cnn.failed) == (3, 1, 1, 1)
    assert cnn.best_dev_mcc == 0.5 and cnn.device_hours == pytest.approx(0.16)
    assert cnn.best_params["learning_rate"] == "0.001"
    parity = analysis.budget_parity(table.reset_index())
    assert parity == {"cnn|none|char|tf/0": True, "unet|none|char|tf/0": True,
                      "convnova|none|char|tf/0": False}  # 2 trials where the others got 3


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
    assert row.prob_improvement == 1.0 and row.verdict == "not significant"


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
    costs = {"run1": analysis.PretrainCost("run1", device_hours=10.0, flops=1e12)}
    table = analysis.cost_benefit(runs, costs).set_index(["cell", "rule"])
    pre = "cnn|mlm:small|char|t1"
    assert table.loc[(pre, "none"), "pretrain_device_hours"] == 0
    assert table.loc[(pre, "per-task"), "pretrain_device_hours"] == 5.0  # used by 2 tasks
    assert table.loc[(pre, "full"), "pretrain_device_hours"] == 10.0
    assert table.loc[(pre, "full"), "device_hours"] == 10.5  # + its replicate's 0.5
    assert table.loc[("cnn|none|char|t1", "full"), "pretrain_device_hours"] == 0
    # Under "none" the pretrained cell is cheaper-or-equal and better: on the front.
    assert table.loc[(pre, "none"), "pareto"]
    assert not table.loc[("cnn|none|char|t1", "none"), "pareto"]


def test_break_even_from_search_trajectories():
    scratch = trial_rows(("cnn", "none", "char", "t1"), [Outcome.COMPLETED] * 3, [0.3, 0.5, 0.6],
                         [1.0, 1.0, 1.0])
    pretrained = trial_rows(("cnn", "mlm:s", "char", "t1"), [Outcome.COMPLETED] * 2, [0.6, 0.55],
                            [0.5, 0.5])
    frame = pd.DataFrame(scratch + pretrained)
    frame[PRETRAIN_RUN] = np.where(frame[PRE] == "none", None, "p")
    costs = {"p": analysis.PretrainCost("p", device_hours=5.0, flops=0.0)}
    (row,) = analysis.break_even(frame, costs).itertuples()
    # Pretrained reached 0.6 after 0.5 h; scratch needed 3 h. 5/n + 0.5 <= 3 -> n = 2.
    assert (row.pretrained_cost, row.scratch_cost, row.break_even_tasks) == (0.5, 3.0, 2)
    costs["p"] = analysis.PretrainCost("p", device_hours=5.0, flops=0.0)
    frame.loc[frame[PRE] == "mlm:s", BEST_DEV_MCC] = [0.9, 0.1]
    (row,) = analysis.break_even(frame, costs).itertuples()
    assert row.verdict == "scratch never matched" and row.break_even_tasks is None


def test_tuning_curves_are_monotone_and_end_at_the_best():
    rows = trial_rows(("cnn", "none", "char", "t1"), [Outcome.COMPLETED] * 4, [0.1, 0.4, 0.2, 0.3],
                      [1, 1, 1, 1])
    (curve,) = analysis.tuning_curves(pd.DataFrame(rows)).values()
    assert curve[0] == pytest.approx(0.25) and curve[-1] == pytest.approx(0.4)
    assert np.all(np.diff(curve) >= 0)
