"""Which hyperparameters mattered: fANOVA importances per cell, rebuilt from MLflow.

A cell's search is an Optuna study, but the study itself lives only in the driver that ran it.
Its completed trials are in MLflow, though: each trial run's params hold the values it trained
with (as strings) and ``metrics.best_dev_score`` its result; the cell run's
``Tag.SEARCH_SPACE`` holds the ranges it was drawn from. ``param_importances`` rebuilds an
in-memory Optuna study per cell from them (``optuna.trial.create_trial``) and asks Optuna's
``FanovaImportanceEvaluator`` (seeded, so the numbers are reproducible) how much of the score's
variance each hyperparameter explains.

Only trials that ran to their own end (``ablate.outcome=completed``) count: a trial ASHA stopped
early carries a truncated score, which would make a short-lived configuration look bad.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ablate.tracking.schema import (
    MetricName,
    Outcome,
    Stage,
    Tag,
    metric_column,
    param_column,
    tag_column,
)

if TYPE_CHECKING:
    import optuna
    import pandas as pd

MIN_TRIALS = 10
COLUMNS = ["cell", "parameter", "importance", "evaluator", "n_trials", "note"]


def evaluator_name(seed: int) -> str:
    """How the importances were computed, as the output's ``evaluator`` column names it."""
    return f"optuna.importance.FanovaImportanceEvaluator(seed={seed})"


def space_sections(search_space: str | Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Every searched hyperparameter of a ``Tag.SEARCH_SPACE`` (JSON or parsed): name -> its
    range (``{"type": "float"|"int"|"categorical", "low", "high", "log", "choices"}``), the
    training ``params`` and the ``model_params`` together."""
    space = json.loads(search_space) if isinstance(search_space, str) else dict(search_space)
    ranges: dict[str, Mapping[str, Any]] = {}
    for section in ("params", "model_params"):
        ranges.update(space.get(section) or {})
    return ranges


def distribution(spec: Mapping[str, Any]) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution a hyperparameter was drawn from (as ``CellSearcher`` draws it)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    kind = spec["type"]
    if kind == "float":
        return FloatDistribution(float(spec["low"]), float(spec["high"]),
                                 log=bool(spec.get("log")))
    if kind == "int":
        return IntDistribution(int(spec["low"]), int(spec["high"]), log=bool(spec.get("log")))
    if kind == "categorical":
        return CategoricalDistribution(list(spec["choices"]))
    raise ValueError(f"unknown hyperparameter type {kind!r}")


def typed_value(text: Any, spec: Mapping[str, Any]) -> Any:
    """A param as MLflow stores it (a string) turned back into the value its range holds.

    A categorical value is matched to the choice whose string it is (``"64"`` -> ``64``,
    ``"cosine"`` -> ``"cosine"``). Raises ``ValueError`` for a value the range cannot hold.
    """
    kind = spec["type"]
    if kind == "float":
        return float(text)
    if kind == "int":
        number = float(text)
        if not number.is_integer():
            raise ValueError(f"{text!r} is not an integer")
        return int(number)
    for choice in spec.get("choices") or []:
        if str(choice) == str(text) or choice == text:
            return choice
    raise ValueError(f"{text!r} is not one of {spec.get('choices')}")


def typed_params(params: Mapping[str, Any], search_space: str | Mapping[str, Any]
                 ) -> dict[str, Any]:
    """The searched hyperparameters among a run's params, typed by their ranges (params the
    space does not search, such as ``seed`` or ``preset``, are left out)."""
    ranges = space_sections(search_space)
    return {name: typed_value(params[name], spec) for name, spec in ranges.items()
            if name in params and params[name] is not None}


def _cell_study(group: pd.DataFrame, ranges: Mapping[str, Mapping[str, Any]]
                ) -> tuple[optuna.Study, int]:
    """An in-memory Optuna study of a cell's completed trials; and how many were left out
    because a value lay outside the recorded ranges (a space edited between runs)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {name: distribution(spec) for name, spec in ranges.items()}
    study = optuna.create_study(direction="maximize")
    skipped = 0
    for _, row in group.iterrows():
        value = float(row[metric_column(MetricName.BEST_DEV_SCORE)])
        try:
            params = {name: typed_value(row[param_column(name)], spec)
                      for name, spec in ranges.items()}
            trial = optuna.trial.create_trial(params=params, distributions=dists, value=value)
        except (KeyError, TypeError, ValueError):
            skipped += 1
            continue
        study.add_trial(trial)
    return study, skipped


def _completed(trial_runs: pd.DataFrame) -> pd.DataFrame:
    """Search trials that ran to their own end and have a finite best dev score."""
    import pandas as pd

    def column(name: str) -> pd.Series:
        return (trial_runs[name] if name in trial_runs
                else pd.Series(None, index=trial_runs.index, dtype=object))

    score = pd.to_numeric(column(metric_column(MetricName.BEST_DEV_SCORE)), errors="coerce")
    keep = ((column(tag_column(Tag.STAGE)) == Stage.TRIAL)
            & (column(tag_column(Tag.OUTCOME)) == Outcome.COMPLETED)
            & score.map(lambda v: v is not None and math.isfinite(v)))
    return trial_runs[keep]


def _search_spaces(cell_runs: pd.DataFrame) -> dict[str, str]:
    """Cell name -> its ``Tag.SEARCH_SPACE`` JSON (cell runs among ``cell_runs``)."""
    stage, cell, space = (tag_column(t) for t in (Tag.STAGE, Tag.CELL, Tag.SEARCH_SPACE))
    if cell_runs is None or cell_runs.empty or space not in cell_runs:
        return {}
    own = cell_runs[cell_runs[stage] == Stage.CELL] if stage in cell_runs else cell_runs
    return {name: text for name, text in zip(own[cell], own[space], strict=True)
            if isinstance(name, str) and isinstance(text, str) and text}


def param_importances(trial_runs: pd.DataFrame, cell_runs: pd.DataFrame, *,
                      min_trials: int = MIN_TRIALS, seed: int = 0) -> pd.DataFrame:
    """Per cell, how much each searched hyperparameter mattered to its best dev score.

    ``trial_runs`` are a sweep's runs (``ablate.analysis.runs``, or its search trials); only
    search trials that completed count. ``cell_runs`` holds the cell runs (the sweep's runs will
    do), whose ``Tag.SEARCH_SPACE`` gives each hyperparameter's distribution. For every cell
    with at least ``min_trials`` completed trials, an in-memory Optuna study is rebuilt from them
    and Optuna's ``FanovaImportanceEvaluator(seed=seed)`` computes each hyperparameter's share
    of the score's variance (normalised to sum to 1 over the cell's hyperparameters; one that
    was not searched, a single choice, gets 0).

    Returns one row per cell and hyperparameter (columns ``cell``, ``parameter``,
    ``importance``, ``evaluator``, ``n_trials``, ``note``), the most important first within a
    cell. A cell with too few completed trials, or without a recorded search space, gets one
    row with an empty ``parameter``, no importance and a ``note`` saying why.
    """
    import optuna
    import pandas as pd

    evaluator = evaluator_name(seed)
    cell_col = tag_column(Tag.CELL)
    spaces = _search_spaces(cell_runs)
    done = _completed(trial_runs) if not trial_runs.empty else trial_runs
    staged = (trial_runs[trial_runs[tag_column(Tag.STAGE)] == Stage.TRIAL]
              if tag_column(Tag.STAGE) in trial_runs else trial_runs.iloc[0:0])
    names = sorted({*staged.get(cell_col, pd.Series(dtype=object)).dropna(), *spaces})
    rows: list[dict[str, Any]] = []

    def note_row(cell: str, n: int, note: str) -> None:
        rows.append({"cell": cell, "parameter": "", "importance": math.nan,
                     "evaluator": evaluator, "n_trials": n, "note": note})

    for cell in names:
        group = done[done[cell_col] == cell] if cell_col in done else done.iloc[0:0]
        if cell not in spaces:
            note_row(cell, len(group), "no search space recorded on the cell run")
            continue
        ranges = space_sections(spaces[cell])
        if not ranges:
            note_row(cell, len(group), "the cell searched no hyperparameters")
            continue
        if len(group) < min_trials:
            note_row(cell, len(group), f"{len(group)} completed trials, fewer than "
                                       f"{min_trials}: importances not computed")
            continue
        study, skipped = _cell_study(group, ranges)
        n = len(study.trials)
        if n < min_trials:
            note_row(cell, n, f"{n} completed trials within the recorded ranges "
                              f"({skipped} outside), fewer than {min_trials}")
            continue
        importances = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed),
            normalize=True)
        note = f"{skipped} trials outside the recorded ranges left out" if skipped else ""
        for name, value in importances.items():
            rows.append({"cell": cell, "parameter": name, "importance": float(value),
                         "evaluator": evaluator, "n_trials": n, "note": note})
    return pd.DataFrame(rows, columns=COLUMNS)
