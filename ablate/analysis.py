"""Read a study back from MLflow as DataFrames: the trials, and one row per cell.

``trials()`` and ``cells()`` are the public entry points for notebook users; the report is built
from the same functions.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ablate.errors import AblateError

TAG = "tags.ablate."
CELL_COLUMNS = ["architecture", "pretraining", "tokenizer", "task"]


def _client(tracking_uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri)


def latest_sweep(tracking_uri: str, study: str) -> tuple[str, str]:
    """(experiment id, sweep id) of the study's most recent launch in this tracking store."""
    client = _client(tracking_uri)
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        raise AblateError(
            f"study {study!r} has no MLflow experiment at {tracking_uri}; run `ablate run` first "
            "or pass the --tracking-uri the study used"
        )
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.`ablate.stage` = 'cell'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise AblateError(f"study {study!r} at {tracking_uri} has no cell runs yet")
    return experiment.experiment_id, runs[0].data.tags["ablate.sweep"]


def trials(tracking_uri: str, study: str, sweep: str | None = None) -> pd.DataFrame:
    """One row per trial run of a sweep (default: the latest), with params, metrics and tags."""
    import mlflow

    experiment_id, latest = latest_sweep(tracking_uri, study)
    sweep = sweep or latest
    mlflow.set_tracking_uri(tracking_uri)
    frame = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.`ablate.stage` = 'trial' and tags.`ablate.sweep` = '{sweep}'",
        output_format="pandas",
        max_results=100_000,
    )
    return frame


def cells(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: trials run and their outcomes, best dev MCC and its trial, cost."""
    if runs.empty:
        return pd.DataFrame(
            columns=["cell", *CELL_COLUMNS, "trials", "completed", "pruned", "failed",
                     "best_dev_mcc", "best_trial", "best_params", "wall_seconds", "flops"]
        )
    param_cols = [c for c in runs.columns if c.startswith("params.")]
    rows = []
    for cell, group in runs.groupby(f"{TAG}cell", sort=True):
        outcome = group.get(f"{TAG}outcome", pd.Series(dtype=str)).fillna("running")
        scores = group.get("metrics.best_dev_mcc", pd.Series(dtype=float))
        best = group.loc[scores.idxmax()] if scores.notna().any() else None
        rows.append(
            {
                "cell": cell,
                **{col: group[f"{TAG}{col}"].iloc[0] for col in CELL_COLUMNS},
                "trials": len(group),
                "completed": int((outcome == "completed").sum()),
                "pruned": int((outcome == "pruned").sum()),
                "failed": int((outcome == "failed").sum()),
                "best_dev_mcc": float(scores.max()) if best is not None else float("nan"),
                "best_trial": best[f"{TAG}trial_id"] if best is not None else "",
                "best_params": (
                    {c.removeprefix("params."): best[c] for c in param_cols
                     if pd.notna(best[c])} if best is not None else {}
                ),
                "wall_seconds": float(group.get("metrics.wall_seconds", pd.Series()).sum()),
                "flops": float(group.get("metrics.flops", pd.Series()).sum()),
            }
        )
    return pd.DataFrame(rows)
