"""Reading a study back from MLflow: its latest sweep, its runs as a DataFrame, pretrainings,
and a sweep's provenance (its ``Stage.SWEEP`` run; see ``ablate.provenance``).

Runs written before the schema carried a version (version 1) use the same tag and metric
names, so they are read as they are; a store written by a newer ``ablate`` is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ablate.errors import AblateError
from ablate.tracking.schema import (
    ENDED_BY_TRIAL,
    PRETRAIN_EXPERIMENT,
    RESULT_TAGS,
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
    """The most recent cell run of the study: its tags name the sweep and its schema.

    Only cell runs are looked at, so a sweep's provenance run (``Stage.SWEEP``, written
    before its trials) never stands for the sweep."""
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


def _latest_pretraining(client: Any, key: str, status: str) -> Any | None:
    """The most recent pretraining run with this key whose status matches ``status`` (an
    MLflow filter on ``attributes.status``), if any."""
    experiment = client.get_experiment_by_name(PRETRAIN_EXPERIMENT)
    if experiment is None:
        return None
    found = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"{tag_filter(Tag.PRETRAIN_KEY, key)} and attributes.status {status}",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return found[0] if found else None


def find_finished_pretraining(client: Any, key: str) -> Any | None:
    """The most recent FINISHED pretraining run with this key, if any."""
    return _latest_pretraining(client, key, "= 'FINISHED'")


def find_unfinished_pretraining(client: Any, key: str) -> Any | None:
    """The most recent pretraining run with this key that did not finish (killed, failed or
    still marked running), if any: a resumed pretraining goes on recording into it."""
    return _latest_pretraining(client, key, "!= 'FINISHED'")


# --- a sweep's provenance run (Stage.SWEEP) ---------------------------------------------------

PROVENANCE_DIR = "provenance"  # the artifact folder of a sweep run (see ablate.provenance)


def ended_trial_results(
    client: Any, experiment_id: str, sweep: str
) -> dict[str, tuple[str, dict[str, Any]]]:
    """The outcome and last result (metrics and result tags, as MLflow holds them) of every
    trial of a sweep whose run ended by the trial's own doing (completed, pruned or its model
    failed), keyed by Tune trial id.

    A driver killed between a trial's end and Tune's next save of its state leaves Tune
    believing the trial still runs; on resume the trainable hands this result back instead of
    training again (see ``ablate.training.train_trial``).
    """
    ended = {}
    for outcome in ENDED_BY_TRIAL:
        for run in find_runs(
            client,
            experiment_id,
            f"{tag_filter(Tag.SWEEP, sweep)} and {tag_filter(Tag.OUTCOME, outcome)}",
        ):
            tags = run.data.tags
            result: dict[str, Any] = dict(run.data.metrics)
            result.update({field: tags[tag] for field, tag in RESULT_TAGS.items() if tag in tags})
            if Tag.TRIAL_ID in tags:
                ended[tags[Tag.TRIAL_ID]] = (outcome, result)
    return ended


def find_sweep_run(client: Any, experiment_id: str, sweep: str) -> Any | None:
    """The provenance run (``Stage.SWEEP``) of a sweep, if it has one (the first, if a
    concurrent launch wrote two)."""
    found = find_runs(
        client,
        experiment_id,
        f"{tag_filter(Tag.STAGE, Stage.SWEEP)} and {tag_filter(Tag.SWEEP, sweep)}",
    )
    return min(found, key=lambda r: r.info.start_time or 0) if found else None


def _parse_artifact(path: Any) -> Any:
    import json

    text = path.read_text()
    if path.suffix == ".json":
        return json.loads(text)
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return text


def read_provenance(client: Any, run_id: str) -> dict[str, Any]:
    """A sweep run's ``provenance/`` artifacts, parsed: each file by its stem (``spec``: the
    spec's text; ``search_spaces``, ``environment``, ``data``, ``hardware``: dicts;
    ``suggestions``: a list of dicts, or None before the sweep's end) and ``resumes``: one dict
    per resume (``number``, ``changes`` and the parts that changed)."""
    import os
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="ablate-provenance-") as tmp:
        if not client.list_artifacts(run_id, PROVENANCE_DIR):
            return {"suggestions": None, "resumes": []}
        bar = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # a few small files
        try:
            root = Path(client.download_artifacts(run_id, PROVENANCE_DIR, tmp))
        finally:
            if bar is None:
                os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
            else:
                os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bar
        info: dict[str, Any] = {"suggestions": None, "resumes": []}
        for path in sorted(root.iterdir()):
            if path.is_file():
                info[path.stem] = _parse_artifact(path)
            elif path.is_dir() and path.name.startswith("resume-"):
                resume = {p.stem: _parse_artifact(p) for p in sorted(path.iterdir()) if p.is_file()}
                info["resumes"].append({"number": int(path.name.removeprefix("resume-")), **resume})
    info["resumes"].sort(key=lambda r: r["number"])
    return info


def provenance(tracking_uri: str, study: str, sweep: str | None = None) -> dict[str, Any]:
    """The provenance of a sweep (default: the study's latest): ``run_id``, ``sweep``,
    ``status``, ``tags`` and the parsed artifacts of ``read_provenance``."""
    experiment_id, latest = latest_sweep(tracking_uri, study)
    sweep = sweep or latest
    client = client_for(tracking_uri)
    run = find_sweep_run(client, experiment_id, sweep)
    if run is None:
        raise AblateError(
            f"sweep {sweep} of study {study!r} has no provenance run (stage "
            f"{Stage.SWEEP!r}); it was written by an ablate that did not record provenance"
        )
    return {
        "run_id": run.info.run_id,
        "sweep": sweep,
        "status": run.info.status,
        "tags": dict(run.data.tags),
        **read_provenance(client, run.info.run_id),
    }
