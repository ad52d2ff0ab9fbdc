"""Reading a study back from MLflow: its sweeps (the latest one, or one named by id), a
sweep's runs as a DataFrame, pretrainings, and a sweep's provenance (its ``Stage.SWEEP`` run;
see ``ablate.provenance``).

A sweep is one launch of a study, continued by every ``--resume``; it is the study's *latest*
when it is the most recently opened sweep whose search started (``search_started``): a launch
that stopped before its Tuner started (during pretraining, say) holds no trial and is neither
resumed nor reported unless named.

Runs written before the schema carried a version (version 1) use the same tag and metric
names, so they are read as they are; a store written by a newer ``ablate`` is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ablate.errors import AblateError
from ablate.tracking.schema import (
    ENDED_BY_TRIAL,
    PRETRAIN_EXPERIMENT,
    RESULT_TAGS,
    SCHEMA_VERSION,
    Outcome,
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


# --- the sweeps of a study -------------------------------------------------------------------


class SweepState:
    """How a sweep stands, derived from its runs (``SweepInfo.state``)."""

    RUNNING = "running"  # its cell runs are open: a driver is at work, or was killed outright
    FINISHED = "finished"
    INTERRUPTED = "interrupted"  # stopped by a signal: its runs ended KILLED
    FAILED = "failed"
    NEVER_STARTED = "never started"  # its search's Tuner never started: no trial ran


@dataclass
class SweepInfo:
    """One sweep of a study as the tracking store holds it: its cell runs and its provenance
    run (``Stage.SWEEP``; absent in sweeps written before provenance was recorded)."""

    sweep: str
    experiment_id: str
    opened: int  # ms since the epoch: when its first launch opened it
    cell_runs: list[Any] = field(default_factory=list)
    sweep_run: Any | None = None
    search_started: bool = False
    latest: bool = False
    # filled by ``list_sweeps`` only (they need the trial runs)
    trials_done: int | None = None  # trials counted against the budget
    trials_running: int | None = None
    last_activity: int | None = None  # ms: the latest start or end of any of its runs
    # a sweep opened before Tag.BUDGET: its budget as its recorded spec gives it, if it has one
    spec_budget: dict[str, int] | None = None

    @property
    def tags(self) -> dict[str, str]:
        """The sweep run's tags, else a cell run's."""
        run = self.sweep_run or (self.cell_runs[0] if self.cell_runs else None)
        return dict(run.data.tags) if run is not None else {}

    @property
    def schema_version(self) -> int:
        runs = self.cell_runs or ([self.sweep_run] if self.sweep_run is not None else [])
        return max((schema_version(r.data.tags) for r in runs), default=1)

    @property
    def fingerprint(self) -> str | None:
        """The spec fingerprint recorded when the sweep was opened (None before ablate
        recorded one; see ``ablate.provenance.spec_fingerprint``)."""
        return self.tags.get(Tag.SPEC_FINGERPRINT) if self.sweep_run is not None else None

    @property
    def budget(self) -> dict[str, int] | None:
        """``{"cells", "trials_per_cell", "replicates"}`` as recorded when it was opened."""
        text = self.tags.get(Tag.BUDGET) if self.sweep_run is not None else None
        return json.loads(text) if text else None

    @property
    def trials_budget(self) -> int | None:
        """Search trials its budget asks for in all (cells x trials per cell), if known."""
        budget = self.budget or self.spec_budget
        return budget["cells"] * budget["trials_per_cell"] if budget else None

    @property
    def state(self) -> str:
        if not self.search_started:
            return SweepState.NEVER_STARTED
        cells = [r.info.status for r in self.cell_runs]
        if "RUNNING" in cells:
            return SweepState.RUNNING
        statuses = [*cells, *([self.sweep_run.info.status] if self.sweep_run else [])]
        if "KILLED" in statuses:
            return SweepState.INTERRUPTED
        if "FAILED" in statuses:
            return SweepState.FAILED
        return SweepState.FINISHED

    def label(self) -> str:
        """``<id>`` with ``(latest)`` or ``(never started)`` where it applies."""
        note = "latest" if self.latest else (
            SweepState.NEVER_STARTED if not self.search_started else "")
        return f"{self.sweep} ({note})" if note else self.sweep


def study_experiment(client: Any, tracking_uri: str, study: str) -> str:
    """The id of a study's MLflow experiment; a clear error where it has none."""
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        raise AblateError(
            f"study {study!r} has no MLflow experiment at {tracking_uri}; run `ablate run` first "
            "or pass the --tracking-uri the study used"
        )
    return experiment.experiment_id


def _has_trials(client: Any, experiment_id: str, sweep: str) -> bool:
    found = client.search_runs(
        [experiment_id],
        filter_string=f"{tag_filter(Tag.STAGE, Stage.TRIAL)} and {tag_filter(Tag.SWEEP, sweep)}",
        max_results=1,
    )
    return bool(found)


def sweep_records(client: Any, experiment_id: str) -> list[SweepInfo]:
    """Every sweep of a study's experiment, newest first (by when it was opened), with
    ``search_started`` and ``latest`` set.

    A sweep's search started when its sweep run carries ``Tag.SEARCH_STARTED`` (written as its
    Tuner starts fitting) or, for sweeps written before that tag, when it has a trial run."""
    groups: dict[str, SweepInfo] = {}
    for stage in (Stage.CELL, Stage.SWEEP):
        for run in find_runs(client, experiment_id, tag_filter(Tag.STAGE, stage)):
            sweep = run.data.tags.get(Tag.SWEEP)
            if not sweep:
                continue
            started = run.info.start_time or 0
            info = groups.setdefault(sweep, SweepInfo(sweep, experiment_id, started))
            info.opened = min(info.opened, started)
            if stage == Stage.CELL:
                info.cell_runs.append(run)
            elif info.sweep_run is None or started < (info.sweep_run.info.start_time or 0):
                info.sweep_run = run  # the first, if a concurrent launch wrote two
    records = sorted(groups.values(), key=lambda r: (r.opened or 0, r.sweep), reverse=True)
    for record in records:
        marked = record.sweep_run is not None and Tag.SEARCH_STARTED in record.sweep_run.data.tags
        record.search_started = marked or _has_trials(client, experiment_id, record.sweep)
    latest = next((r for r in records if r.search_started), None)
    if latest is not None:
        latest.latest = True
    return records


def known_sweeps_text(records: list[SweepInfo], limit: int = 8) -> str:
    """The sweeps of a study in a sentence, newest first, for error messages."""
    if not records:
        return "it has none"
    shown = ", ".join(r.label() for r in records[:limit])
    more = f" and {len(records) - limit} more" if len(records) > limit else ""
    return f"its sweeps, newest first: {shown}{more} (`ablate sweeps` lists them)"


def resolve_sweep(tracking_uri: str, study: str, sweep: str | None = None) -> SweepInfo:
    """The sweep named ``sweep``, or the study's latest: the newest whose search started.

    An unknown id, a study with no sweep, or one none of whose launches started its search
    is an ``AblateError`` that lists the study's sweeps."""
    client = client_for(tracking_uri)
    records = sweep_records(client, study_experiment(client, tracking_uri, study))
    if sweep is not None:
        for record in records:
            if record.sweep == sweep:
                return record
        raise AblateError(
            f"study {study!r} at {tracking_uri} has no sweep {sweep!r}; "
            f"{known_sweeps_text(records)}"
        )
    if not records:
        raise AblateError(f"study {study!r} at {tracking_uri} has no cell runs yet")
    for record in records:
        if record.latest:
            return record
    raise AblateError(
        f"no sweep of study {study!r} at {tracking_uri} has started its search (each launch "
        f"stopped before its Tuner started, in preparation or pretraining); "
        f"{known_sweeps_text(records)}. Run `ablate run` again without --resume (finished "
        "pretrainings are reused, a killed one continues)"
    )


def latest_sweep_run(tracking_uri: str, study: str) -> Any:
    """The most recent cell run of the study's latest sweep (the newest whose search started):
    its tags name the sweep and its schema.

    Only cell runs stand for a sweep: its provenance run (``Stage.SWEEP``, written before its
    trials) never does, and a launch that never started its Tuner is passed over."""
    record = resolve_sweep(tracking_uri, study)
    return max(record.cell_runs, key=lambda r: r.info.start_time or 0)


def latest_sweep(tracking_uri: str, study: str) -> tuple[str, str]:
    """(experiment id, sweep id) of the study's latest sweep in this tracking store: the most
    recently opened one whose search started."""
    record = resolve_sweep(tracking_uri, study)
    check_readable(record.schema_version, f"sweep {record.sweep}")
    return record.experiment_id, record.sweep


def _counted(run: Any) -> bool:
    return run.data.tags.get(Tag.OUTCOME) in ENDED_BY_TRIAL


def list_sweeps(tracking_uri: str, study: str) -> list[SweepInfo]:
    """Every sweep of a study, newest first, with its trials counted: ``trials_done`` (trials
    that count against the budget: completed, pruned, model-failed), ``trials_running`` (search
    trial runs still open, lost ones aside) and ``last_activity``."""
    client = client_for(tracking_uri)
    experiment_id = study_experiment(client, tracking_uri, study)
    records = sweep_records(client, experiment_id)
    for record in records:
        trials = find_runs(
            client,
            experiment_id,
            f"{tag_filter(Tag.STAGE, Stage.TRIAL)} and {tag_filter(Tag.SWEEP, record.sweep)}",
        )
        live = [r for r in trials if r.data.tags.get(Tag.OUTCOME) != Outcome.LOST]
        record.trials_done = sum(_counted(r) for r in live)
        record.trials_running = sum(r.info.status == "RUNNING" and Tag.OUTCOME not in
                                    r.data.tags for r in live)
        runs = [*record.cell_runs, *trials, *([record.sweep_run] if record.sweep_run else [])]
        times = [t for r in runs for t in (r.info.start_time, r.info.end_time) if t]
        record.last_activity = max(times, default=None)
        if record.budget is None and record.sweep_run is not None:
            spec = read_artifact_json(
                client, record.sweep_run.info.run_id, f"{PROVENANCE_DIR}/spec_resolved.json"
            )
            if spec:
                record.spec_budget = {
                    "cells": len(record.cell_runs),
                    "trials_per_cell": int(spec["budget"]["trials_per_cell"]),
                    "replicates": len(spec.get("replicates") or []),
                }
    return records


def runs(tracking_uri: str, study: str, sweep: str | None = None) -> pd.DataFrame:
    """Every run of a sweep (default: the latest) as a DataFrame: cells, trials, replicates.

    Columns as ``mlflow.search_runs`` gives them: ``tags.<Tag>``, ``params.<name>``,
    ``metrics.<name>`` (see ``ablate.tracking.schema`` for the names).
    """
    import mlflow

    record = resolve_sweep(tracking_uri, study, sweep)
    check_readable(record.schema_version, f"sweep {record.sweep}")
    mlflow.set_tracking_uri(tracking_uri)
    frame = mlflow.search_runs(
        experiment_ids=[record.experiment_id],
        filter_string=tag_filter(Tag.SWEEP, record.sweep),
        output_format="pandas",
        max_results=200_000,
    )
    column = tag_column(Tag.SCHEMA_VERSION)
    if column in frame and frame[column].notna().any():
        check_readable(int(frame[column].dropna().astype(int).max()), f"sweep {record.sweep}")
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
    text = path.read_text()
    if path.suffix == ".json":
        return json.loads(text)
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return text


def _download(client: Any, run_id: str, path: str, folder: str) -> str:
    """``client.download_artifacts`` without MLflow's progress bar (a few small files)."""
    import os

    bar = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        return client.download_artifacts(run_id, path, folder)
    finally:
        if bar is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bar


def read_artifact_json(client: Any, run_id: str, path: str) -> Any | None:
    """One JSON artifact of a run, parsed; None where the run has no such file."""
    import tempfile
    from pathlib import Path

    folder, _, name = path.rpartition("/")
    if name not in {Path(a.path).name for a in client.list_artifacts(run_id, folder or None)}:
        return None
    with tempfile.TemporaryDirectory(prefix="ablate-artifact-") as tmp:
        return json.loads(Path(_download(client, run_id, path, tmp)).read_text())


def read_provenance(client: Any, run_id: str) -> dict[str, Any]:
    """A sweep run's ``provenance/`` artifacts, parsed: each file by its stem (``spec``: the
    spec's text; ``search_spaces``, ``environment``, ``data``, ``hardware``: dicts;
    ``fingerprint``: the spec fingerprint's hash and parts; ``suggestions``: a list of dicts,
    or None before the sweep's end) and ``resumes``: one dict per resume (``number``,
    ``changes`` and the parts that changed)."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="ablate-provenance-") as tmp:
        if not client.list_artifacts(run_id, PROVENANCE_DIR):
            return {"suggestions": None, "resumes": []}
        root = Path(_download(client, run_id, PROVENANCE_DIR, tmp))
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
    record = resolve_sweep(tracking_uri, study, sweep)
    sweep, run = record.sweep, record.sweep_run
    client = client_for(tracking_uri)
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
