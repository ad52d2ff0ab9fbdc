"""Reading a study back from MLflow: its latest sweep, its runs as a DataFrame, pretrainings.

Runs written before the schema carried a version (version 1) use the same tag and metric
names, so they are read as they are; a store written by a newer ``ablate`` is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ablate.errors import AblateError
from ablate.tracking.schema import (
    PRETRAIN_EXPERIMENT,
    SCHEMA_VERSION,
    Stage,
    Tag,
    tag_column,
    tag_filter,
)

if TYPE_CHECKING:
    import pandas as pd


def client_for(tracking_uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri)


def find_runs(client: Any, experiment_id: str, filter_string: str) -> list[Any]:
    """All runs of an experiment matching a filter, following pagination."""
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=filter_string, max_results=1000, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def schema_version(tags: dict[str, str]) -> int:
    """The schema version a run was written with (1: before runs carried one)."""
    return int(tags.get(Tag.SCHEMA_VERSION, 1))


def check_readable(version: int, what: str) -> None:
    if version > SCHEMA_VERSION:
        raise AblateError(
            f"{what} was written with tracking schema {version}, newer than this ablate's "
            f"({SCHEMA_VERSION}); upgrade ablate to read it"
        )


def latest_sweep_run(tracking_uri: str, study: str) -> Any:
    """The most recent cell run of the study: its tags name the sweep and its schema."""
    client = client_for(tracking_uri)
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        raise AblateError(
            f"study {study!r} has no MLflow experiment at {tracking_uri}; run `ablate run` first "
            "or pass the --tracking-uri the study used"
        )
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=tag_filter(Tag.STAGE, Stage.CELL),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise AblateError(f"study {study!r} at {tracking_uri} has no cell runs yet")
    return runs[0]


def latest_sweep(tracking_uri: str, study: str) -> tuple[str, str]:
    """(experiment id, sweep id) of the study's most recent launch in this tracking store."""
    run = latest_sweep_run(tracking_uri, study)
    sweep = run.data.tags[Tag.SWEEP]
    check_readable(schema_version(run.data.tags), f"sweep {sweep}")
    return run.info.experiment_id, sweep


def runs(tracking_uri: str, study: str, sweep: str | None = None) -> pd.DataFrame:
    """Every run of a sweep (default: the latest) as a DataFrame: cells, trials, replicates.

    Columns as ``mlflow.search_runs`` gives them: ``tags.<Tag>``, ``params.<name>``,
    ``metrics.<name>`` (see ``ablate.tracking.schema`` for the names).
    """
    import mlflow

    experiment_id, latest = latest_sweep(tracking_uri, study)
    mlflow.set_tracking_uri(tracking_uri)
    frame = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=tag_filter(Tag.SWEEP, sweep or latest),
        output_format="pandas",
        max_results=200_000,
    )
    column = tag_column(Tag.SCHEMA_VERSION)
    if column in frame and frame[column].notna().any():
        check_readable(int(frame[column].dropna().astype(int).max()), f"sweep {sweep or latest}")
    return frame


def find_finished_pretraining(client: Any, key: str) -> Any | None:
    """The most recent FINISHED pretraining run with this key, if any."""
    experiment = client.get_experiment_by_name(PRETRAIN_EXPERIMENT)
    if experiment is None:
        return None
    found = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"{tag_filter(Tag.PRETRAIN_KEY, key)} and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return found[0] if found else None
