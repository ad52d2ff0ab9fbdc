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
