"""fANOVA hyperparameter importances per cell, rebuilt from MLflow-shaped run tables."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from ablate.importance import evaluator_name, param_importances, typed_params, typed_value
from ablate.tracking.schema import (
    MetricName,
    Outcome,
    Stage,
    Tag,
    metric_column,
    param_column,
    tag_column,
)

SPACE = {
    "params": {
        "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True,
                          "choices": None},
        "dropout": {"type": "float", "low": 0.0, "high": 0.3, "log": False, "choices": None},
        "batch_size": {"type": "categorical", "low": None, "high": None, "log": False,
                       "choices": [16, 32, 64, 128]},
        "schedule": {"type": "categorical", "choices": ["linear", "cosine"]},
    },
    "model_params": {"k": {"type": "int", "low": 3, "high": 6, "log": False}},
}
STAGE, CELL, OUTCOME = (tag_column(t) for t in (Tag.STAGE, Tag.CELL, Tag.OUTCOME))
SCORE = metric_column(MetricName.BEST_DEV_SCORE)


def cell_frame(*cells: str, space: dict | None = SPACE) -> pd.DataFrame:
    return pd.DataFrame([{STAGE: Stage.CELL, CELL: c,
                          tag_column(Tag.SEARCH_SPACE): json.dumps(space) if space else None}
                         for c in cells])


def trial_frame(cell: str, n: int, score, *, seed: int = 0,
                outcome: str = Outcome.COMPLETED) -> pd.DataFrame:
    """``n`` random configurations of ``SPACE`` as MLflow strings, scored by ``score``."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        values = {"learning_rate": float(10 ** rng.uniform(-5, -1)),
                  "dropout": float(rng.uniform(0, 0.3)),
                  "batch_size": int(rng.choice([16, 32, 64, 128])),
                  "schedule": str(rng.choice(["linear", "cosine"])),
                  "k": int(rng.integers(3, 7))}
        rows.append({STAGE: Stage.TRIAL, CELL: cell, OUTCOME: outcome,
                     **{param_column(k): str(v) for k, v in values.items()},
                     param_column("seed"): "0", SCORE: score(values)})
    return pd.DataFrame(rows)


def learning_rate_only(values: dict) -> float:
    return 1.0 - (math.log10(values["learning_rate"]) + 3.0) ** 2 / 4.0


def test_the_one_parameter_the_score_depends_on_matters_most():
    trials = trial_frame("a", 40, learning_rate_only)
    table = param_importances(trials, cell_frame("a"), seed=0)
    assert list(table.columns) == ["cell", "parameter", "importance", "evaluator", "n_trials",
                                   "note"]
    assert set(table["parameter"]) == {"learning_rate", "dropout", "batch_size", "schedule",
                                       "k"}
    assert (table["n_trials"] == 40).all()
    assert (table["evaluator"] == evaluator_name(0)).all()
    assert "FanovaImportanceEvaluator" in evaluator_name(0)
    top = table.sort_values("importance", ascending=False).iloc[0]
    assert top["parameter"] == "learning_rate" and top["importance"] > 0.5
    assert table["importance"].sum() == pytest.approx(1.0)
    # Seeded: the same numbers every time.
    pd.testing.assert_frame_equal(table, param_importances(trials, cell_frame("a"), seed=0))


def test_another_parameter_when_the_score_follows_it():
    """The same configurations scored by batch size alone: now batch size matters most."""
    trials = trial_frame("a", 40, lambda v: {16: 0.1, 32: 0.2, 64: 0.9, 128: 0.3}[
        v["batch_size"]])
    table = param_importances(trials, cell_frame("a"))
    assert table.sort_values("importance").iloc[-1]["parameter"] == "batch_size"


def test_cells_with_too_few_completed_trials_are_listed_with_a_note():
    completed = trial_frame("few", 8, learning_rate_only)
    pruned = trial_frame("few", 6, learning_rate_only, seed=1, outcome=Outcome.PRUNED)
    enough = trial_frame("enough", 12, learning_rate_only, seed=2)
    trials = pd.concat([completed, pruned, enough, trial_frame(
        "enough", 3, learning_rate_only, seed=3, outcome=Outcome.FAILED)], ignore_index=True)
    table = param_importances(trials, cell_frame("few", "enough", "never-ran"))
    few = table[table["cell"] == "few"]
    assert len(few) == 1 and few["parameter"].iloc[0] == ""
    assert math.isnan(few["importance"].iloc[0])
    assert few["n_trials"].iloc[0] == 8  # pruned trials (truncated scores) never count
    assert "fewer than 10" in few["note"].iloc[0]
    assert (table[table["cell"] == "enough"]["n_trials"] == 12).all()
    never = table[table["cell"] == "never-ran"]
    assert len(never) == 1 and never["n_trials"].iloc[0] == 0
    assert len(param_importances(trials, cell_frame("few", "enough"), min_trials=5)
               .query("cell == 'few' and parameter != ''")) == 5


def test_a_cell_without_a_recorded_space_is_noted():
    trials = trial_frame("a", 12, learning_rate_only)
    table = param_importances(trials, cell_frame("a", space=None))
    assert len(table) == 1 and "no search space" in table["note"].iloc[0]


def test_values_outside_the_recorded_ranges_are_left_out_and_counted():
    trials = trial_frame("a", 14, learning_rate_only)
    trials.loc[:1, param_column("batch_size")] = "512"  # not a choice of the recorded space
    table = param_importances(trials, cell_frame("a"))
    assert (table["n_trials"] == 12).all()
    assert table["note"].str.contains("2 trials outside").all()


def test_params_are_typed_by_their_ranges():
    assert typed_value("64", SPACE["params"]["batch_size"]) == 64
    assert typed_value("cosine", SPACE["params"]["schedule"]) == "cosine"
    assert typed_value("0.001", SPACE["params"]["learning_rate"]) == pytest.approx(1e-3)
    assert typed_value("4", SPACE["model_params"]["k"]) == 4
    with pytest.raises(ValueError):
        typed_value("48", SPACE["params"]["batch_size"])
    with pytest.raises(ValueError):
        typed_value("4.5", SPACE["model_params"]["k"])
    params = {"learning_rate": "0.01", "k": "5", "seed": "0", "preset": "tiny"}
    assert typed_params(params, json.dumps(SPACE)) == {"learning_rate": 0.01, "k": 5}


@pytest.mark.integration
def test_importances_of_a_real_search():
    """Every cell of a real tiny study (10 completed trials each), read back from MLflow."""
    from ablate.analysis import runs
    from tests.tiny_study import TRIALS_PER_CELL, tiny_study

    study = tiny_study()
    frame = runs(study.tracking_uri, study.name)
    table = param_importances(frame, frame)
    spaces = {r[CELL]: json.loads(r[tag_column(Tag.SEARCH_SPACE)])
              for _, r in frame[frame[STAGE] == Stage.CELL].iterrows()}
    assert set(table["cell"]) == set(spaces) and len(spaces) == study.cells
    for cell, group in table.groupby("cell"):
        names = {*spaces[cell]["params"], *spaces[cell]["model_params"]}
        assert set(group["parameter"]) == names
        assert (group["n_trials"] == TRIALS_PER_CELL).all()
        assert group["importance"].between(0, 1).all()
        assert group["importance"].sum() == pytest.approx(1.0)
