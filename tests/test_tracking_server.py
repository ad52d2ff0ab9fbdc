"""The tracking server of ``cluster/mlflow/docker-compose.yaml``, for real: ``mlflow server``
with the compose file's flags, its backend store in PostgreSQL and its artifacts on an S3-API
server (moto's). A tiny study runs through it and its report is written from it; the runs are
rows of PostgreSQL, the artifacts objects of the bucket. The ``ablate`` commands get no storage
credentials at all: like the compose stack's clients, they upload and download artifacts
through the server alone."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from ablate.tracking.schema import Stage, Tag
from tests.services import MlflowServer

pytestmark = pytest.mark.integration
NAME = "tracking-server"
TRIALS_PER_CELL = 2
CELLS = 2  # the small CNN and the small transformer, from scratch, on single nucleotides
REPLICATES = 1
# What only the server may hold: a client with these set could write to S3 behind its back.
STORAGE_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "MLFLOW_S3_ENDPOINT_URL",
)


@dataclass
class StudyThroughServer:
    server: MlflowServer
    spec_path: Path
    report: Path
    run_output: str
    report_output: str


def _ablate(*args: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in STORAGE_ENV}
    done = subprocess.run(
        [sys.executable, "-m", "ablate.cli", *args],
        cwd=cwd,
        env={**env, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def study(mlflow_server: MlflowServer, tmp_path_factory) -> StudyThroughServer:
    """One tiny real study (synthetic data, one-epoch trials, one replicate per cell), run
    and reported through the tracking server."""
    folder = tmp_path_factory.mktemp("tracking-server")
    spec = {
        "name": NAME,
        "data": {"synthetic": {"scale": 0.05, "seed": 5}, "tasks": ["tf/0"]},
        "axes": {
            "architecture": ["cnn", "transformer"],
            "pretraining": ["none"],
            "tokenizer": ["char"],
        },
        "budget": {"trials_per_cell": TRIALS_PER_CELL, "max_epochs": 1, "concurrent_trials": 2},
        "replicates": list(range(REPLICATES)),
        "seed": 0,
        "prices": {"cpu": 0.05},
        # Never used: the command line names the server.
        "tracking": {"uri": "sqlite:///unused.db", "retry_seconds": 30},
    }
    path = folder / "study.yaml"
    path.write_text("# a tiny study tracked on the compose stack's server\n" + yaml.safe_dump(spec))
    uri = mlflow_server.uri
    ran = _ablate("run", str(path), "--tracking-uri", uri, cwd=folder)
    reported = _ablate("report", str(path), "--tracking-uri", uri, "--out", "report", cwd=folder)
    assert not (folder / "unused.db").exists()
    return StudyThroughServer(mlflow_server, path, folder / "report", ran, reported)


def _runs_by_stage(study: StudyThroughServer) -> dict[str, list[tuple[str, str]]]:
    """Stage -> (run id, status) of the study's runs, read from PostgreSQL's tables."""
    rows = study.server.postgres.query(
        "SELECT r.run_uuid, r.status, stage.value FROM runs r "
        "JOIN experiments e ON e.experiment_id = r.experiment_id "
        "JOIN tags s ON s.run_uuid = r.run_uuid AND s.key = %s AND s.value = %s "
        "JOIN tags stage ON stage.run_uuid = r.run_uuid AND stage.key = %s "
        "WHERE e.name = %s AND r.lifecycle_stage = 'active'",
        (Tag.STUDY, NAME, Tag.STAGE, NAME),
    )
    stages: dict[str, list[tuple[str, str]]] = {}
    for run_id, status, stage in rows:
        stages.setdefault(stage, []).append((run_id, status))
    return stages


def test_runs_params_and_metrics_are_rows_of_postgres(study):
    assert f"finished {CELLS * TRIALS_PER_CELL} trials (0 failed)" in study.run_output
    assert f"in {study.server.uri}" in study.run_output
    stages = _runs_by_stage(study)
    assert {stage: len(runs) for stage, runs in stages.items()} == {
        Stage.SWEEP: 1,
        Stage.CELL: CELLS,
        Stage.TRIAL: CELLS * TRIALS_PER_CELL,
        Stage.REPLICATE: CELLS * REPLICATES,
    }
    assert {status for runs in stages.values() for _, status in runs} == {"FINISHED"}
    trials = tuple(run_id for run_id, _ in stages[Stage.TRIAL])
    pg = study.server.postgres
    # Every trial's searched hyperparameters and its per-epoch dev score, as MLflow's tables.
    params = pg.query("SELECT run_uuid, key FROM params WHERE run_uuid IN %s", (trials,))
    for run_id in trials:
        keys = {key for rid, key in params if rid == run_id}
        assert {"learning_rate", "weight_decay", "batch_size"} <= keys, keys
    scored = pg.query(
        "SELECT run_uuid, step, value FROM metrics WHERE key = 'dev_mcc' AND run_uuid IN %s",
        (trials,),
    )
    assert {rid for rid, _, _ in scored} == set(trials)
    assert {step for _, step, _ in scored} == {1}
    replicates = tuple(run_id for run_id, _ in stages[Stage.REPLICATE])
    tested = pg.query(
        "SELECT run_uuid FROM latest_metrics WHERE key = 'test_mcc' AND run_uuid IN %s",
        (replicates,),
    )
    assert len(tested) == CELLS * REPLICATES
    # Artifacts are the server's to place: runs record its proxy scheme, not a bucket.
    uris = pg.query("SELECT artifact_uri FROM runs WHERE run_uuid IN %s", (trials,))
    assert all(uri.startswith("mlflow-artifacts:/") for (uri,) in uris), uris


def test_provenance_artifacts_are_objects_in_the_bucket(study):
    [(sweep_run, _)] = _runs_by_stage(study)[Stage.SWEEP]
    [(experiment_id,)] = study.server.postgres.query(
        "SELECT experiment_id FROM experiments WHERE name = %s", (NAME,)
    )
    folder = f"{study.server.artifacts}/{experiment_id}/{sweep_run}/artifacts/provenance"
    keys = study.server.s3.keys(folder)
    names = {key.rsplit("/", 1)[-1] for key in keys}
    assert {
        "spec.yaml",
        "spec_resolved.json",
        "search_spaces.json",
        "environment.json",
        "data.json",
        "hardware.json",
        "suggestions.jsonl",
    } <= names, keys

    bucket, _, prefix = folder.removeprefix("s3://").partition("/")
    client = study.server.s3.client()

    def read(name: str) -> str:
        return client.get_object(Bucket=bucket, Key=f"{prefix}/{name}")["Body"].read().decode()

    # The spec exactly as written, and one suggestion per trial and replicate run.
    assert read("spec.yaml") == study.spec_path.read_text()
    suggestions = [json.loads(line) for line in read("suggestions.jsonl").splitlines()]
    assert len(suggestions) == CELLS * (TRIALS_PER_CELL + REPLICATES)
    assert json.loads(read("spec_resolved.json"))["name"] == NAME


def test_report_is_written_from_the_server(study):
    markdown = (study.report / "report.md").read_text()
    assert f"in `{study.server.uri}`" in markdown
    # The budget: every cell ran its full, equal budget, so the comparisons may use them.
    assert "## Budget parity" in markdown
    assert f"Every cell finished its budget ({TRIALS_PER_CELL} trials per cell" in markdown
    assert "## Budget per cell" in markdown and "All cells had the same budget." in markdown
    with open(study.report / "cells.csv") as handle:
        cells = list(csv.DictReader(handle))
    assert len(cells) == CELLS
    assert all(int(row["trials"]) == TRIALS_PER_CELL for row in cells)
    # The test-set comparison of the two architectures, from their replicates.
    comparisons = markdown.split("## Comparisons", 1)[1].split("\n## ", 1)[0]
    assert "architecture: transformer vs cnn (pretraining=none, tokenizer=char)" in comparisons
    # The provenance section was read back from the bucket through the server: its data digest
    # is the one the sweep run's tag holds in PostgreSQL.
    [(sweep_run, _)] = _runs_by_stage(study)[Stage.SWEEP]
    [(digest,)] = study.server.postgres.query(
        "SELECT value FROM tags WHERE run_uuid = %s AND key = %s", (sweep_run, Tag.DATA_DIGEST)
    )
    provenance = markdown.split("## Provenance", 1)[1]
    assert digest[:16] in provenance
    assert f"MLflow UI: {study.server.uri}" in study.report_output
