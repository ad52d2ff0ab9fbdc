"""How long `ablate report` takes on a large study: 10,000 trial runs in a SQLite MLflow store.

Builds a synthetic study in a temporary SQLite MLflow store, then times reading it back and
rendering the full report (``ablate.report.write_report``), and records the peak resident memory
of that step. Prints one line per figure and writes bench/results_report.json.

    .venv/bin/python bench/report_at_scale.py [--cells 100] [--trials 100] [--replicates 3]

The study. ``--cells`` cells laid out like ``ablate.spec.expand_cells`` (task, then architecture x
pretraining x tokenizer: 4 x 2 x 2 conditions per task, architectures in
``ablate.models.registry.ARCHITECTURES`` order, the last task partial if the count does not
divide), each with a parent run (``Tag.STAGE`` = ``Stage.CELL``), ``--trials`` search trials
and ``--replicates`` test replicates of its best trial, carrying the tags (names from
``ablate.tracking.schema``, schema version included), params and per-epoch metrics
``ablate.tracking.writer.MLflowTrialLogger`` writes: some trials pruned after the grace epoch,
a few failed, a few replicates collapsed. Every ``mlm:small`` cell links (``Tag.PRETRAIN_RUN_ID``)
to a pretraining run (``Stage.PRETRAIN``, in the ``PRETRAIN_EXPERIMENT`` experiment, with
device-hours and FLOPs), so cost-benefit and break-even have something to charge. Scores have a
per-task level plus planted architecture, pretraining and tokenizer effects, so comparisons, the
Friedman test, tuning curves and break-even all have data to work on.

How the store is built, and why this way. Writing each run through ``MlflowClient``
(``create_run``, ``log_batch``, ``set_terminated``) costs three SQLite transactions per run and took
about 315 s for the 10,300 runs; MLflow's store has no call that writes many runs in one
transaction. So the experiments and the pretraining runs are written through MLflow's own store
API (``SqlAlchemyStore``, which also creates the schema through MLflow's migrations), and the cell,
trial and replicate runs are bulk-inserted in a single transaction of that store's own session,
into MLflow's own tables through its own ORM table definitions (``SqlRun``, ``SqlTag``,
``SqlParam``, ``SqlMetric``, ``SqlLatestMetric``), with exactly the rows the store's ``create_run``,
``log_batch`` and ``update_run_info`` would write (``mlflow.runName`` tag, artifact URI under the
experiment, ``latest_metrics`` holding each key's last step, ...). The report then reads the store
through MLflow's normal APIs, as it would a real study.

The build runs in a spawned child process, so neither its memory nor MLflow's import during it
inflates the ``ru_maxrss`` measured for the report. After the build, the child checks the store
through ``MlflowClient`` (run counts per stage, distinct cells, one bulk-written run read back
whole, its run info shaped like an API-written run's); the parent checks that the report has
every cell.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import resource
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ablate.models.registry import PRETRAINABLE as ARCHITECTURES  # the k-mer floor aside
from ablate.spec import Cell
from ablate.tracking.schema import (
    PRETRAIN_EXPERIMENT,
    SCHEMA_VERSION,
    MetricName,
    Outcome,
    Stage,
    Tag,
    cell_tags,
    tag_filter,
)

STUDY, SWEEP = "scale", "scale-1"
DATA_TAG = "synthetic:scale=1.0,seed=0"
VERSION = {Tag.SCHEMA_VERSION: str(SCHEMA_VERSION)}  # as the real writer tags every run
PRETRAININGS = ("none", "mlm:small")
TOKENIZERS = ("char", "bpe")
MAX_EPOCHS, GRACE_EPOCHS = 3, 1
START_MS = 1_767_225_600_000  # 2026-01-01: the sweep's start, so the store is reproducible

# Planted effects on a cell's expected dev MCC, so the comparisons have something to find.
ARCH_EFFECT = {"convnova": 0.04, "unet": 0.0, "transformer": 0.02, "cnn": -0.03}
PRETRAIN_EFFECT = {"convnova": 0.02, "unet": 0.01, "transformer": 0.06, "cnn": 0.01}
BPE_EFFECT = 0.01
# Cost of one fine-tuning epoch (seconds, FLOPs) and of one pretraining run (device-hours).
EPOCH_SECONDS = {"convnova": 30.0, "unet": 35.0, "transformer": 60.0, "cnn": 20.0}
EPOCH_FLOPS = {"convnova": 2e12, "unet": 3e12, "transformer": 8e12, "cnn": 1e12}
PRETRAIN_HOURS = {"convnova": 3.0, "unet": 3.5, "transformer": 6.0, "cnn": 2.0}


def layout(cells: int) -> list[Cell]:
    """``cells`` distinct cells: every condition of task0, then of task1, ..., in spec order."""
    missing = set(ARCHITECTURES) - set(ARCH_EFFECT)
    if missing:
        raise ValueError(f"no planted effects or costs for architectures {sorted(missing)}")
    conditions = list(itertools.product(ARCHITECTURES, PRETRAININGS, TOKENIZERS))
    return [Cell(*conditions[c % len(conditions)], f"task{c // len(conditions)}")
            for c in range(cells)]


@dataclass
class TableRows:
    """Rows for MLflow's run tables, as SqlAlchemyStore's create_run + log_batch + terminate."""

    runs: list[dict] = field(default_factory=list)
    tags: list[dict] = field(default_factory=list)
    params: list[dict] = field(default_factory=list)
    metrics: list[dict] = field(default_factory=list)
    latest_metrics: list[dict] = field(default_factory=list)

    def add_run(
        self, *, run_id: str, experiment: Any, name: str, status: str, start: int, end: int,
        tags: dict[str, str], params: dict[str, Any] | None = None,
        history: list[tuple[int, int, dict[str, float]]] = (),
    ) -> None:
        """One finished run; ``history`` is its metrics as (step, timestamp, {key: value})."""
        self.runs.append({
            "run_uuid": run_id, "name": name, "source_type": "UNKNOWN", "source_name": "",
            "entry_point_name": "", "user_id": "unknown", "status": status,
            "start_time": start, "end_time": end, "deleted_time": None, "source_version": "",
            "lifecycle_stage": "active", "experiment_id": int(experiment.experiment_id),
            "artifact_uri": f"{experiment.artifact_location.rstrip('/')}/{run_id}/artifacts",
        })
        tags = {**tags, "mlflow.runName": name}
        self.tags += [{"key": k, "value": v, "run_uuid": run_id} for k, v in tags.items()]
        self.params += [{"key": k, "value": str(v), "run_uuid": run_id}
                        for k, v in (params or {}).items()]
        latest = {}
        for step, timestamp, values in history:
            for key, value in values.items():
                row = {"key": key, "value": float(value), "timestamp": timestamp, "step": step,
                       "is_nan": False, "run_uuid": run_id}
                self.metrics.append(row)
                latest[key] = row  # steps come in order: the last one is the latest
        self.latest_metrics += latest.values()

    def insert(self, session: Any) -> None:
        """Insert (parents first, for the foreign keys) and clear."""
        from mlflow.store.tracking.dbmodels.models import (
            SqlLatestMetric,
            SqlMetric,
            SqlParam,
            SqlRun,
            SqlTag,
        )

        for model, rows in [(SqlRun, self.runs), (SqlTag, self.tags), (SqlParam, self.params),
                            (SqlMetric, self.metrics), (SqlLatestMetric, self.latest_metrics)]:
            if rows:
                session.execute(model.__table__.insert(), rows)
            rows.clear()


def new_run_id(rng: np.random.Generator) -> str:
    return uuid.UUID(bytes=rng.bytes(16), version=4).hex  # as uuid.uuid4().hex, but seeded


def write_pretrain_runs(store: Any, cells: list[Cell], rng: np.random.Generator) -> dict:
    """One pretraining run per (architecture, tokenizer, pretraining) that a cell uses, through
    the store API, with the tags ``ablate.tracking.writer.register_pretraining`` writes; returns
    (arch, tok, pretraining) -> run id."""
    from mlflow.entities import Metric, Param, RunStatus, RunTag

    experiment_id = store.create_experiment(PRETRAIN_EXPERIMENT)
    run_ids = {}
    for cell in cells:
        key = (cell.architecture, cell.tokenizer, cell.pretraining)
        if cell.pretraining == "none" or key in run_ids:
            continue
        name = cell.pretraining.removeprefix("mlm:")
        hours = PRETRAIN_HOURS[cell.architecture] * (0.7 if cell.tokenizer == "bpe" else 1.0)
        hours *= rng.uniform(0.9, 1.1)
        start = START_MS - int(hours * 3_600_000) - 600_000
        tags = {Tag.STAGE: Stage.PRETRAIN, Tag.PRETRAIN_NAME: name,
                Tag.PRETRAIN_KEY: f"{name}-{cell.architecture}-{cell.tokenizer}",
                Tag.ARCHITECTURE: cell.architecture, Tag.TOKENIZER: cell.tokenizer,
                Tag.DEVICE_TYPE: "cpu", **VERSION, Tag.STUDY: STUDY}
        run = store.create_run(experiment_id, "unknown", start,
                               [RunTag(k, v) for k, v in tags.items()],
                               f"{name}-{cell.architecture}")
        run_id = run.info.run_id
        end = start + int(hours * 3_600_000)
        values = {MetricName.WALL_SECONDS: hours * 3600, "step_seconds": hours * 3600 * 0.95,
                  MetricName.DEVICE_HOURS: hours,
                  MetricName.FLOPS: EPOCH_FLOPS[cell.architecture] * 5e3}
        store.log_batch(run_id, metrics=[Metric(k, v, end, 0) for k, v in values.items()],
                        params=[Param("architecture", cell.architecture), Param("preset", name),
                                Param("tokenizer", cell.tokenizer), Param("max_steps", "20000")],
                        tags=[])
        store.update_run_info(run_id, RunStatus.FINISHED, end, None)
        run_ids[key] = run_id
    return run_ids


def trial_history(
    rng: np.random.Generator, cell: Cell, final_mcc: float, epochs: int, start: int
) -> tuple[list[tuple[int, int, dict[str, float]]], int]:
    """Per-epoch metrics of one fine-tuning run (cost metrics cumulative); and its end time."""
    seconds = EPOCH_SECONDS[cell.architecture] * (0.7 if cell.tokenizer == "bpe" else 1.0)
    history, best, now = [], -1.0, start
    for epoch in range(1, epochs + 1):
        dev = final_mcc * (0.6 + 0.4 * epoch / MAX_EPOCHS) + rng.normal(0, 0.01)
        best = max(best, dev)
        epoch_seconds = seconds * rng.uniform(0.9, 1.1)
        now += int(epoch_seconds * 1000)
        wall = (now - start) / 1000
        history.append((epoch, now, {
            MetricName.DEV_MCC: dev, MetricName.BEST_DEV_MCC: best, "dev_accuracy": 0.5 + dev / 2,
            "dev_loss": 0.7 - 0.4 * dev, "train_loss": 0.75 - 0.45 * dev - 0.02 * epoch,
            "epoch_seconds": epoch_seconds, MetricName.WALL_SECONDS: wall,
            MetricName.FLOPS: EPOCH_FLOPS[cell.architecture] * epoch,
            MetricName.DEVICE_HOURS: wall / 3600, "device_count": 1.0,
            "best_epoch": float(epoch),
        }))
    return history, now + 2_000


def add_cell(
    rows: TableRows, rng: np.random.Generator, experiment: Any, cell: Cell, index: int,
    trials: int, replicates: int, pretrain_run: str | None,
) -> None:
    """A cell's parent run, its search trials and the replicates of its best trial."""
    base = {Tag.STUDY: STUDY, Tag.SWEEP: SWEEP, **VERSION, Tag.DATA: DATA_TAG,
            **cell_tags(cell)}
    if pretrain_run:
        base[Tag.PRETRAIN_RUN_ID] = pretrain_run
    task_level = np.random.default_rng(int(cell.task.removeprefix("task"))).uniform(0.3, 0.5)
    quality = (task_level + rng.normal(0, 0.01) + ARCH_EFFECT[cell.architecture]
               + (PRETRAIN_EFFECT[cell.architecture] if pretrain_run else 0.0)
               + (BPE_EFFECT if cell.tokenizer == "bpe" else 0.0))
    parent, start = new_run_id(rng), START_MS + index * 1_000
    device = {Tag.DEVICE_TYPE: "cpu", Tag.NODE_ID: f"node{index % 2}",
              Tag.FLOPS_METHOD: "analytic"}
    now, best = start + 1_000, None
    for i in range(trials):
        lr, dropout = 10 ** rng.uniform(-5, -3), rng.uniform(0.0, 0.3)
        params = {"learning_rate": lr, "weight_decay": rng.uniform(0, 0.1),
                  "batch_size": int(rng.choice([16, 32, 64])), "dropout": dropout,
                  "architecture": cell.architecture, "preset": "small", "seed": i,
                  "max_epochs": MAX_EPOCHS}
        final = (quality - 0.05 * (np.log10(lr) + 3.8) ** 2 - 0.1 * abs(dropout - 0.1)
                 + rng.normal(0, 0.02))
        fate = rng.uniform()
        outcome, status, epochs = ((Outcome.FAILED, "FAILED", int(rng.integers(0, MAX_EPOCHS)))
                                   if fate < 0.03 else (Outcome.PRUNED, "FINISHED", GRACE_EPOCHS)
                                   if fate < 0.25 else (Outcome.COMPLETED, "FINISHED", MAX_EPOCHS))
        history, end = trial_history(rng, cell, final, epochs, now)
        trial_id = f"{index:04d}_{i:05d}"
        rows.add_run(run_id=new_run_id(rng), experiment=experiment, status=status,
                     name=f"{cell.name}#{trial_id}", start=now, end=end, params=params,
                     history=history,
                     tags={**base, **device, Tag.STAGE: Stage.TRIAL,
                           Tag.TRIAL_ID: trial_id, Tag.PARENT_RUN: parent,
                           Tag.OUTCOME: outcome})
        score = history[-1][2][MetricName.BEST_DEV_MCC] if history else None
        if score is not None and (best is None or score > best[0]):
            best = (score, trial_id, params)
        now = end
    for seed in range(replicates if best else 0):
        score, source, params = best
        failed = rng.uniform() < 0.01
        history, end = trial_history(rng, cell, score, 1 if failed else MAX_EPOCHS, now)
        if not failed:
            collapsed = rng.uniform() < 0.03
            test = rng.normal(0.0, 0.01) if collapsed else score + rng.normal(-0.01, 0.02)
            history[-1][2][MetricName.TEST_MCC] = test
        trial_id = f"{index:04d}_r{seed}"
        rows.add_run(run_id=new_run_id(rng), experiment=experiment,
                     status="FAILED" if failed else "FINISHED",
                     name=f"{cell.name}#{trial_id}", start=now, end=end,
                     params={**params, "seed": seed}, history=history,
                     tags={**base, **device, Tag.STAGE: Stage.REPLICATE,
                           Tag.TRIAL_ID: trial_id, Tag.PARENT_RUN: parent,
                           Tag.REPLICATE_SEED: str(seed), Tag.SOURCE_TRIAL: source,
                           Tag.OUTCOME: Outcome.FAILED if failed else Outcome.COMPLETED})
        now = end
    rows.add_run(run_id=parent, experiment=experiment, name=cell.name, status="FINISHED",
                 start=start, end=now + 1_000, tags={**base, Tag.STAGE: Stage.CELL})


def build_store(uri: str, artifacts: str, cells: int, trials: int, replicates: int,
                seed: int = 0) -> dict:
    """Write the study into the store at ``uri``; returns counts and seconds."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    store = SqlAlchemyStore(uri, artifacts)
    study_cells = layout(cells)
    pretrain_runs = write_pretrain_runs(store, study_cells, rng)
    experiment = store.get_experiment(store.create_experiment(STUDY))
    rows = TableRows()
    with store.ManagedSessionMaker(read_only=False) as session:  # one transaction
        for index, cell in enumerate(study_cells):
            pretrain = pretrain_runs.get((cell.architecture, cell.tokenizer, cell.pretraining))
            add_cell(rows, rng, experiment, cell, index, trials, replicates, pretrain)
            rows.insert(session)
    return {"seconds": time.perf_counter() - started, "pretrain_runs": len(pretrain_runs)}


def verify_store(uri: str, cells: int, trials: int, replicates: int) -> dict:
    """Read the store back through MlflowClient and check it holds the study it should."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(STUDY).experiment_id

    def search(stage: str) -> list:
        found, token = [], None
        while True:
            page = client.search_runs([experiment], tag_filter(Tag.STAGE, stage),
                                      max_results=50_000, page_token=token)
            found += page
            token = page.token
            if not token:
                return found

    counts = {stage: search(stage) for stage in (Stage.CELL, Stage.TRIAL, Stage.REPLICATE)}
    runs = counts[Stage.TRIAL] + counts[Stage.REPLICATE]
    distinct = {run.data.tags[Tag.CELL] for run in runs}
    problems = []
    expected = {Stage.CELL: cells, Stage.TRIAL: cells * trials,
                Stage.REPLICATE: cells * replicates}
    for stage, want in expected.items():
        if len(counts[stage]) != want:
            problems.append(f"{len(counts[stage])} {stage} runs, expected {want}")
    if len(distinct) != cells:
        problems.append(f"{len(distinct)} distinct cells, expected {cells}")
    # One bulk-written trial, read back whole, against an API-written (pretraining) run.
    trial = client.get_run(counts[Stage.TRIAL][-1].info.run_id)
    pre_id = next(r.data.tags.get(Tag.PRETRAIN_RUN_ID) for r in counts[Stage.CELL]
                  if Tag.PRETRAIN_RUN_ID in r.data.tags)
    pretrain = client.get_run(pre_id)
    parent = client.get_run(trial.data.tags[Tag.PARENT_RUN])
    if parent.data.tags.get(Tag.STAGE) != Stage.CELL:
        problems.append(f"a trial's {Tag.PARENT_RUN} is not its cell run")
    if any(run.data.tags.get(Tag.SCHEMA_VERSION) != str(SCHEMA_VERSION)
           for run in (trial, parent, pretrain)):
        problems.append(f"a run lacks {Tag.SCHEMA_VERSION} = {SCHEMA_VERSION}")
    wanted = {MetricName.BEST_DEV_MCC, MetricName.DEV_MCC, MetricName.WALL_SECONDS,
              MetricName.FLOPS, MetricName.DEVICE_HOURS}
    if not wanted <= set(trial.data.metrics) or "max_epochs" not in trial.data.params:
        problems.append(f"a trial run lacks metrics or params: {trial.data}")
    history = client.get_metric_history(trial.info.run_id, MetricName.DEV_MCC)
    if trial.data.metrics[MetricName.DEV_MCC] != max(history, key=lambda m: m.step).value:
        problems.append("latest_metrics does not hold the last step of dev_mcc")
    for attribute in ("user_id", "lifecycle_stage", "status"):
        if getattr(trial.info, attribute) != getattr(pretrain.info, attribute):
            problems.append(f"run info {attribute} differs from an API-written run's")
    if trial.info.run_name != trial.data.tags.get("mlflow.runName") or not (
            trial.info.artifact_uri.endswith(f"/{trial.info.run_id}/artifacts")):
        problems.append("run name or artifact URI not as MLflow's create_run writes them")
    if problems:
        raise AssertionError("store check failed: " + "; ".join(problems))
    return {"trial_runs": len(counts[Stage.TRIAL]),
            "replicate_runs": len(counts[Stage.REPLICATE]),
            "cell_runs": len(counts[Stage.CELL]), "distinct_cells": len(distinct)}


def build_and_verify(uri: str, artifacts: str, cells: int, trials: int, replicates: int) -> dict:
    """Run in a child process: build the store, then check it through MLflow."""
    built = build_store(uri, artifacts, cells, trials, replicates)
    started = time.perf_counter()
    checked = verify_store(uri, cells, trials, replicates)
    return {**built, **checked, "verify_seconds": time.perf_counter() - started,
            "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=100)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--replicates", type=int, default=3)
    args = parser.parse_args()

    from ablate.report import write_report

    with tempfile.TemporaryDirectory() as folder:
        uri = f"sqlite:///{folder}/mlruns.db"
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
            built = pool.submit(build_and_verify, uri, f"{folder}/mlruns", args.cells,
                                args.trials, args.replicates).result()
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        report = write_report(uri, STUDY, Path(folder) / "report")
        seconds = time.perf_counter() - start
        rss_peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        sections = (Path(folder) / "report" / "report.md").read_text()
    if len(report.cells) != args.cells:
        raise AssertionError(f"the report has {len(report.cells)} cells, expected {args.cells}")
    results = {
        "runs": built["trial_runs"] + built["replicate_runs"],
        "trial_runs": built["trial_runs"],
        "replicate_runs": built["replicate_runs"],
        "cell_runs": built["cell_runs"],
        "pretrain_runs": built["pretrain_runs"],
        "build_store_seconds": round(built["seconds"], 1),
        "verify_store_seconds": round(built["verify_seconds"], 1),
        "build_peak_rss_mib": round(built["peak_rss_kib"] / 1024, 1),
        "report_seconds": round(seconds, 2),
        "peak_rss_mib": round(rss_peak_kib / 1024, 1),
        "rss_before_report_mib": round(rss_before / 1024, 1),
        "cells_in_report": len(report.cells),
        "comparisons_in_report": len(report.comparisons),
        "break_even_in_report": "## Break-even of pretraining" in sections,
    }
    for key, value in results.items():
        print(f"{key:>24}: {value}")
    Path(__file__).with_name("results_report.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
