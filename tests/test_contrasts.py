"""Contrasts between cell patterns, and the report they head, on replicate tables shaped like
MLflow's search_runs output and on a real MLflow store."""

from __future__ import annotations

import html
import json

import numpy as np
import pandas as pd
import pytest

from ablate import analysis
from ablate.spec import HEADLINE_CONTRAST, CellPattern, Contrast
from ablate.stats import paired_comparison
from ablate.tracking.schema import (
    SCHEMA_VERSION,
    Family,
    MetricName,
    Outcome,
    Stage,
    Tag,
    cell_tags,
    metric_column,
    tag_column,
)

CELL, ARCH, PRE, TOK, TASK = (tag_column(t) for t in (Tag.CELL, Tag.ARCHITECTURE,
                                                      Tag.PRETRAINING, Tag.TOKENIZER, Tag.TASK))
STAGE, OUTCOME = tag_column(Tag.STAGE), tag_column(Tag.OUTCOME)


def replicate_runs(values, dev=None):
    """values: {(arch, pre, tok): {task: {seed: test score}}}; dev: {cell: best dev score}."""
    rows = []
    for (arch, pre, tok), per_task in values.items():
        for task, per_seed in per_task.items():
            cell = f"{arch}|{pre}|{tok}|{task}"
            for seed, score in per_seed.items():
                rows.append({
                    CELL: cell, ARCH: arch, PRE: pre, TOK: tok, TASK: task,
                    STAGE: Stage.REPLICATE, OUTCOME: Outcome.COMPLETED,
                    tag_column(Tag.SCHEMA_VERSION): "3",
                    tag_column(Tag.REPLICATE_SEED): str(seed),
                    metric_column(MetricName.TEST_SCORE): score,
                    metric_column(MetricName.TEST_MCC): score,
                    metric_column(MetricName.BEST_DEV_SCORE): (dev or {}).get(cell, score),
                    metric_column(MetricName.N_PARAMS): 1e6,
                })
    return pd.DataFrame(rows)


def cell_table(dev):
    """A budget table with just what contrasts read: axes, family and best dev score."""
    rows = []
    for cell, score in dev.items():
        arch, pre, tok, task = cell.split("|")
        rows.append({"cell": cell, "architecture": arch, "pretraining": pre, "tokenizer": tok,
                     "task": task, "family": analysis.family_of(arch), "best_dev_score": score})
    return pd.DataFrame(rows)


TREATED = ("transformer", "mlm:small", "bpe")
CNN, NOVA, KMER = ("cnn", "none", "char"), ("convnova", "none", "char"), ("kmer", "none", "char")
TEST = {
    TREATED: {"t1": {0: 0.70, 1: 0.72}, "t2": {0: 0.60, 1: 0.64}, "t3": {0: 0.50, 1: 0.52}},
    CNN: {"t1": {0: 0.55, 1: 0.57}, "t2": {0: 0.58, 1: 0.60}, "t3": {0: 0.40, 1: 0.41, 2: 0.9}},
    NOVA: {"t1": {0: 0.65, 1: 0.66}, "t2": {0: 0.50, 1: 0.52}, "t3": {0: 0.45, 1: 0.47}},
    KMER: {"t1": {0: 0.99, 1: 0.99}, "t2": {0: 0.99, 1: 0.99}, "t3": {0: 0.99, 1: 0.99}},
}
# On dev, ConvNova wins t1, the CNN wins t2 and t3; the k-mer floor is best but in no group.
DEV = {"cnn|none|char|t1": 0.5, "convnova|none|char|t1": 0.6, "cnn|none|char|t2": 0.7,
       "convnova|none|char|t2": 0.4, "cnn|none|char|t3": 0.6, "convnova|none|char|t3": 0.5,
       "transformer|mlm:small|bpe|t1": 0.7, "transformer|mlm:small|bpe|t2": 0.6,
       "transformer|mlm:small|bpe|t3": 0.5, "kmer|none|char|t1": 0.9,
       "kmer|none|char|t2": 0.9, "kmer|none|char|t3": 0.9}


def test_headline_contrast_takes_the_best_control_by_dev_per_task_paired_by_seed():
    reps = analysis.replicates(replicate_runs(TEST))
    table = cell_table(DEV)
    pairs = analysis.contrast_pairs(reps, table, [HEADLINE_CONTRAST])
    assert dict(zip(pairs["task"], pairs["control_cell"], strict=True)) == {
        "t1": "convnova|none|char|t1", "t2": "cnn|none|char|t2", "t3": "cnn|none|char|t3"}
    (row,) = analysis.contrasts(reps, table, [HEADLINE_CONTRAST]).itertuples()
    assert row.contrast == HEADLINE_CONTRAST.name
    assert row.treatment == "transformer/mlm:small/bpe"
    assert row.control == "best by dev of [convolutional, from scratch]"
    # Seed 2 exists for the t3 CNN only: pairing by seed leaves it out.
    a = np.array([[0.70, 0.72], [0.60, 0.64], [0.50, 0.52]])
    b = np.array([[0.65, 0.66], [0.58, 0.60], [0.40, 0.41]])
    expected = paired_comparison(a, b)
    assert row.mean_difference == pytest.approx(expected.mean_difference)
    assert row.p_value == pytest.approx(expected.p_value)
    assert (row.ci_low, row.ci_high) == (pytest.approx(expected.ci_low),
                                         pytest.approx(expected.ci_high))
    assert row.n_tasks == 3 and row.n_replicates == 2 and row.p_holm == pytest.approx(
        expected.p_value)
    assert row.control_cells == ("t1: convnova|none|char|t1; t2: cnn|none|char|t2; "
                                 "t3: cnn|none|char|t3")
    per_task = analysis.contrast_tasks(reps, table, [HEADLINE_CONTRAST]).set_index("task")
    assert per_task.loc["t3", "seeds"] == 2
    assert per_task.loc["t3", "difference"] == pytest.approx(0.51 - 0.405)


def test_contrast_against_each_control_and_holm_over_all_rows():
    reps = analysis.replicates(replicate_runs(TEST))
    each = Contrast(name="each", treatment=CellPattern(architecture="transformer"),
                    control=CellPattern(family="convolutional"), control_choice="each")
    floor = Contrast(name="floor", treatment=CellPattern(family="transformer"),
                     control=CellPattern(family=Family.BASELINE))
    table = analysis.contrasts(reps, cell_table(DEV), [HEADLINE_CONTRAST, each, floor])
    assert table["contrast"].tolist() == [HEADLINE_CONTRAST.name, "each", "each", "floor"]
    assert set(table.loc[table["contrast"] == "each", "control"]) == {
        "cnn/none/char", "convnova/none/char"}
    cnn = table[table["control"] == "cnn/none/char"].iloc[0]
    direct = paired_comparison(np.array([[0.70, 0.72], [0.60, 0.64], [0.50, 0.52]]),
                               np.array([[0.55, 0.57], [0.58, 0.60], [0.40, 0.41]]))
    assert cnn.mean_difference == pytest.approx(direct.mean_difference)
    # One Holm family over the four rows, as comparison_table adjusts it.
    assert cnn.p_holm >= cnn.p_value
    assert table.iloc[-1].mean_difference < 0  # the floor beats the transformer here
    # No control cell on the side: no rows, and no error.
    none = Contrast(name="none", treatment=CellPattern(family="transformer"),
                    control=CellPattern(architecture="unet"))
    assert analysis.contrasts(reps, cell_table(DEV), [none]).empty


def test_an_external_checkpoint_in_a_contrast_is_marked_as_unknown_exposure():
    values = {("dnabert2", "external:dnabert2", "bpe"): TEST[TREATED],
              ("dnabert2", "none", "bpe"): TEST[NOVA], NOVA: TEST[NOVA]}
    reps = analysis.replicates(replicate_runs(values))
    (row,) = analysis.contrasts(reps, pd.DataFrame(), [HEADLINE_CONTRAST]).itertuples()
    # Its random-init twin is a transformer from scratch, so not a control; ConvNova is.
    assert row.treatment == "dnabert2/external:dnabert2/bpe"
    assert row.control_cells.startswith("t1: convnova|none|char|t1")
    assert row.exposure_unknown and not row.size_mismatch


# --- the report, from a real MLflow store ----------------------------------------------------

SPACE = {"params": {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
                    "dropout": {"type": "float", "low": 0.0, "high": 0.3}}}
TASKS = ("tf/0", "virus/covid")
# (architecture, pretraining, tokenizer): (family, parameters, test score per task)
STUDY = {
    ("dnabert2", "external:dnabert2", "bpe"): (Family.TRANSFORMER, 1.17e8, (0.70, 0.62)),
    ("dnabert2", "none", "bpe"): (Family.TRANSFORMER, 1.17e8, (0.40, 0.30)),
    ("convnova", "none", "char"): (Family.CONVOLUTIONAL, 1.7e6, (0.60, 0.55)),
    ("convnova", "none", "bpe"): (Family.CONVOLUTIONAL, 1.8e6, (0.58, 0.50)),
    ("kmer", "none", "kmer"): (Family.BASELINE, 4.1e3, (0.35, 0.20)),
}


def _store(tmp_path):
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    from ablate.spec import Cell
    from ablate.tracking.writer import register_external

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("headline")
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    external = register_external(client, key="dnabert2", name="dnabert2", folder=folder,
                                 device_hours=500.0)
    for (arch, pre, tok), (family, size, scores) in STUDY.items():
        for task, score in zip(TASKS, scores, strict=True):
            cell = Cell(arch, pre, tok, task)
            tags = {Tag.STUDY: "headline", Tag.SWEEP: "headline-1",
                    Tag.SCHEMA_VERSION: str(SCHEMA_VERSION), Tag.DATA: "gue:/data",
                    Tag.FAMILY: family, **cell_tags(cell)}
            if arch == "dnabert2":
                tags[Tag.EXTERNAL_CHECKPOINT] = "dnabert2"
            if pre != "none":
                tags[Tag.PRETRAIN_RUN_ID] = external
            cell_tags_only = {**tags, Tag.STAGE: Stage.CELL,
                              Tag.SEARCH_SPACE: json.dumps(SPACE)}
            if task == "virus/covid":
                cell_tags_only[Tag.CAVEAT] = "Covid variants differ by a few mutations."
            parent = client.create_run(experiment, tags=cell_tags_only).info.run_id
            # the ConvNova cells' best learning rate is the top of its range
            rate = "0.001" if arch == "convnova" else "0.0001"
            trial = client.create_run(experiment, tags={
                **tags, Tag.STAGE: Stage.TRIAL, Tag.TRIAL_ID: f"{cell.name}-0",
                Tag.OUTCOME: Outcome.COMPLETED, Tag.PARENT_RUN: parent}).info.run_id
            client.log_batch(trial, params=[Param("max_epochs", "2"),
                                            Param("learning_rate", rate),
                                            Param("dropout", "0.0")],
                             metrics=[Metric(MetricName.BEST_DEV_SCORE, score, 0, 2),
                                      Metric(MetricName.BEST_DEV_MCC, score, 0, 2),
                                      Metric(MetricName.N_PARAMS, size, 0, 2),
                                      Metric(MetricName.DEVICE_HOURS, 0.01, 0, 2)])
            client.set_terminated(trial)
            for seed in (0, 1):
                replicate = client.create_run(experiment, tags={
                    **tags, Tag.STAGE: Stage.REPLICATE, Tag.TRIAL_ID: f"{cell.name}-r{seed}",
                    Tag.OUTCOME: Outcome.COMPLETED, Tag.REPLICATE_SEED: str(seed),
                    Tag.PARENT_RUN: parent}).info.run_id
                client.log_batch(replicate, metrics=[
                    Metric(MetricName.TEST_SCORE, score + 0.01 * seed, 0, 2),
                    Metric(MetricName.TEST_MCC, score + 0.01 * seed - 0.05, 0, 2),
                    Metric(MetricName.BEST_DEV_SCORE, score, 0, 2),
                    Metric(MetricName.N_PARAMS, size, 0, 2),
                    Metric(MetricName.DEVICE_HOURS, 0.01, 0, 2)])
                client.set_terminated(replicate)
            client.set_terminated(parent)
    return uri


def test_report_states_the_headline_first_with_sizes_floor_edges_and_exposure(tmp_path):
    from ablate.report import EXPOSURE_TEXT, write_report

    uri = _store(tmp_path)
    extra = Contrast(name="BPE ConvNova vs char ConvNova",
                     treatment=CellPattern(architecture="convnova", tokenizer="bpe"),
                     control=CellPattern(architecture="convnova", tokenizer="char"))
    report = write_report(uri, "headline", tmp_path / "out", contrasts=[extra])
    markdown = (tmp_path / "out" / "report.md").read_text()
    # The headline contrast comes before the single-axis questions, and is answered.
    headline = markdown.index("## Headline: " + HEADLINE_CONTRAST.name)
    assert headline < markdown.index("## The three questions")
    (row,) = report.contrasts[report.contrasts["contrast"] == HEADLINE_CONTRAST.name].itertuples()
    assert row.treatment == "dnabert2/external:dnabert2/bpe"
    assert row.mean_difference == pytest.approx(0.085)  # (0.10 + 0.07) / 2
    assert row.control_cells == ("tf/0: convnova|none|char|tf/0; "
                                 "virus/covid: convnova|none|char|virus/covid")
    assert row.size_mismatch and row.exposure_unknown and row.metric == "f1_macro+mcc"
    sentence = next(line for line in report.headline if line.startswith("- "))
    assert "117M vs 1.7M parameters" in sentence and "‡" in sentence
    assert EXPOSURE_TEXT in sentence
    # Two tasks cannot give p below 0.5: the sentence says underpowered, with n beside the
    # interval, never a bare "not significant" or "95%".
    assert "**underpowered**: 2 tasks, smallest attainable p = 0.5" in sentence
    assert "over 2 tasks x 2 seeds" in sentence and "not a calibrated 95%" in sentence
    assert row.verdict == "underpowered" and row.sample == "2 tasks x 2 seeds"
    cells = pd.read_csv(tmp_path / "out" / "cells.csv").set_index("cell")
    tf = cells.loc["convnova|none|char|tf/0"]
    assert tf.test_n == 2 and tf.test_ci_low <= tf.test_score <= tf.test_ci_high
    assert tf.selection_gap == pytest.approx(tf.best_dev_score - tf.test_score)
    assert markdown.index("## Budget parity") < headline
    assert "## Contrast: BPE ConvNova vs char ConvNova" in markdown
    # The pretraining comparison pairs the checkpoint with its own random-init twin.
    comps = report.comparisons
    external = comps[comps["treatment"] == "external:dnabert2"]
    assert external["architecture"].tolist() == ["dnabert2"]
    assert external["exposure_unknown"].all()
    # The k-mer floor is in no architecture comparison, and shown per task.
    assert not (comps["axis"].eq("architecture") & (comps["treatment"].eq("kmer")
                                                     | comps["baseline"].eq("kmer"))).any()
    assert "kmer\\|none\\|kmer\\|tf/0: 0.355" in markdown
    assert "Covid variants differ by a few mutations." in markdown
    assert "f1_macro" in markdown
    # ConvNova with BPE is labelled ablate's own extension.
    assert "convnova\\|none\\|bpe\\|tf/0 †" in markdown
    # Edges: ConvNova's best learning rate is the top of its range; dropout 0 is natural.
    edges = pd.read_csv(tmp_path / "out" / "cells.csv").set_index("cell")["at_edge"]
    assert edges["convnova|none|char|tf/0"] == "learning_rate=0.001 at high edge [1e-05, 0.001]"
    assert edges.drop([c for c in edges.index if c.startswith("convnova")]).isna().all()
    assert "## Hyperparameters at an edge of their search range" in markdown
    # Leakage: the external checkpoint's exposure is unknown.
    leaks = pd.read_csv(tmp_path / "out" / "leakage.csv")
    assert leaks["exposure"].tolist() == ["unknown"]
    benefit = pd.read_csv(tmp_path / "out" / "cost_benefit.csv")
    assert "baseline" in set(benefit["family"])
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.index(HEADLINE_CONTRAST.name) < page.index("The three questions")
    assert html.escape(EXPOSURE_TEXT) in page
    assert "data:image/png;base64," in page and 'src="http' not in page
