"""The one writer of the MLflow schema (``ablate.tracking``): cell runs, the trial logger,
pretraining runs and external checkpoints.

Trials never talk to MLflow: they report to Ray Tune, and ``MLflowTrialLogger`` (a Tune callback
running in the driver) writes everything. Concurrent trials therefore never contend for the
embedded SQLite file, and the same code works against a remote tracking server. Pretraining
runs are written the same way, from the driver, as its Ray Train workers report.
"""

from __future__ import annotations

import json
import numbers
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback
from ray.tune.result import (
    AUTO_RESULT_KEYS,
    DONE,
    EXPERIMENT_TAG,
    SHOULD_CHECKPOINT,
    TRIAL_ID,
)

from ablate.cost import price_for
from ablate.errors import AblateError
from ablate.tracking.reader import find_runs, find_unfinished_pretraining
from ablate.tracking.schema import (
    ENDED_BY_TRIAL,
    EXPERIMENT_KIND,
    MODEL_ARTIFACT,
    PRETRAIN_EXPERIMENT,
    RESULT_TAGS,
    SCHEMA_VERSION,
    FailureKind,
    MetricName,
    Outcome,
    Stage,
    Tag,
    cell_tags,
    tag_filter,
)
from ablate.trial import CellPlan, TrialConfig, epochs_done, ran_to_end

if TYPE_CHECKING:
    from ablate.spec import Cell

# Ray Tune's own result fields: its clock, counters, host and config. Every other numeric field
# a trial reports is logged as a metric, so a new one never silently stays out of MLflow.
TUNE_FIELDS = frozenset(AUTO_RESULT_KEYS) | {
    DONE,
    TRIAL_ID,
    EXPERIMENT_TAG,
    SHOULD_CHECKPOINT,
    "warmup_time",
}
# Fields of ``ablate.cost.cost_metrics``: the share of devices a trial's cost is charged on,
# and the seconds charged.
DEVICE_COUNT = "device_count"
BILLED_SECONDS = "billed_seconds"
RESULT_FIELDS = {tag: field for field, tag in RESULT_TAGS.items()}


# Sweep id -> the trial ids of its Tune experiments that have ended in this process.
EXPERIMENT_TRIALS: dict[str, set[str]] = {}


def logged_metrics(result: dict) -> dict[str, float]:
    """The numeric fields of a trial's result that are logged to MLflow."""
    return {
        key: float(value)
        for key, value in result.items()
        if key not in TUNE_FIELDS
        and isinstance(value, numbers.Real)  # numpy scalars too
        and not isinstance(value, bool)
    }


def version_tag() -> dict[str, str]:
    return {Tag.SCHEMA_VERSION: str(SCHEMA_VERSION)}


def get_or_create_experiment(client: Any, name: str) -> str:
    """The experiment ``name`` (created, or restored if deleted), declared a model-development
    experiment (``Tag.EXPERIMENT_KIND``), so MLflow's UI opens it on its runs table. An
    experiment that already has a kind keeps it."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, tags={Tag.EXPERIMENT_KIND: EXPERIMENT_KIND})
        except MlflowException:
            # Created meanwhile by another driver or thread (pretrainings run side by side).
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    if not (experiment.tags or {}).get(Tag.EXPERIMENT_KIND):
        client.set_experiment_tag(experiment.experiment_id, Tag.EXPERIMENT_KIND, EXPERIMENT_KIND)
    return experiment.experiment_id


def open_cell_runs(
    client: Any,
    experiment_id: str,
    study: str,
    sweep: str,
    cells: list[Cell],
    extra_tags: dict[str, str] | None = None,
    per_cell_tags: dict[str, dict[str, str]] | None = None,
) -> dict[str, str]:
    """The parent run of every cell in this sweep (created when missing); cell name -> run id.

    ``per_cell_tags`` adds tags to particular cells' runs (cell name -> tags), such as the
    search ranges each cell searched."""
    existing = {
        run.data.tags[Tag.CELL]: run.info.run_id
        for run in find_runs(
            client,
            experiment_id,
            f"{tag_filter(Tag.STAGE, Stage.CELL)} and {tag_filter(Tag.SWEEP, sweep)}",
        )
    }
    run_ids = {}
    for cell in cells:
        if cell.name in existing:
            run_ids[cell.name] = existing[cell.name]
            client.update_run(existing[cell.name], status="RUNNING")
            continue
        tags = {
            Tag.STUDY: study,
            Tag.STAGE: Stage.CELL,
            Tag.SWEEP: sweep,
            **version_tag(),
            **cell_tags(cell),
            **(extra_tags or {}),
            **(per_cell_tags or {}).get(cell.name, {}),
        }
        run = client.create_run(experiment_id, tags=tags, run_name=cell.name)
        run_ids[cell.name] = run.info.run_id
    return run_ids


def link_pretraining(client: Any, cell_runs: dict[str, str], plans: dict[str, CellPlan]) -> None:
    """Tag every pretrained cell's run with the pretraining run its trials start from."""
    for name, plan in plans.items():
        if plan.source.pretrained:
            client.set_tag(cell_runs[name], Tag.PRETRAIN_RUN_ID, plan.source.run_id)


class TrackingUnavailable(AblateError):
    """The tracking server stayed unreachable past the retry limit; the study stopped.

    ``spool`` is the file the unsent writes were saved in (``None`` when nothing was saved)
    and ``unsent`` how many; ``reason`` is what MLflow last answered.
    """

    def __init__(self, reason: str, *, spool: str | None = None, unsent: int = 0) -> None:
        self.reason = reason
        self.spool = spool
        self.unsent = unsent
        super().__init__(self.message())

    def message(self, resume: str = "ablate run <spec> --resume") -> str:
        """The one message a stopped study prints: what failed, what was saved, what to run."""
        saved = (
            f"; {self.unsent} unsent records are saved in {self.spool}"
            if self.spool is not None
            else ""
        )
        return f"{self.reason}. The study stopped{saved}. Run `{resume}` when MLflow is back" + (
            " to send them and continue." if self.spool is not None else " to continue."
        )

    def with_resume(self, resume: str) -> TrackingUnavailable:
        """The same outage, its message naming the exact command that continues the study."""
        again = TrackingUnavailable(
            getattr(self, "reason", str(self)),
            spool=getattr(self, "spool", None),
            unsent=getattr(self, "unsent", 0),
        )
        again.args = (self.message(resume),)
        return again


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means the tracking store is unreachable or overloaded for now.

    An outage is a network error (refused connection, reset, timeout), an HTTP 5xx or 429
    answer of MLflow's REST client, or SQLite's "database is locked". Anything else (a bad
    parameter, a missing run, a bug) is deterministic and retrying it would only hide it.
    """
    import requests
    from mlflow.exceptions import MlflowException, RestException

    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(
            cause,
            (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError),
        ):
            return True
        if "database is locked" in str(cause).lower():
            return True
        if isinstance(cause, MlflowException):
            # MLflow's REST client: JSON error answers are RestExceptions; a failed request
            # (connection refused, retries used up on 5xx) or a non-JSON answer (a proxy's
            # 502 page) is an MlflowException whose message starts "API request to".
            from_server = isinstance(cause, RestException) or str(cause.message).startswith(
                "API request to"
            )
            status = cause.get_http_status_code()
            if from_server and (status == 429 or 500 <= status < 600):
                return True
        cause = cause.__cause__ or cause.__context__
    return False


def with_retry(call: Callable[[], Any], *, limit_seconds: float, what: str) -> Any:
    """Run ``call``, retrying an outage (``is_outage``) with exponential back-off (1 s doubling
    to 30 s) for a while; any other error is raised at once.

    Raises ``TrackingUnavailable`` once ``limit_seconds`` have passed without success (at
    once with ``limit_seconds=0``).
    """
    delay, start = 1.0, time.monotonic()
    while True:
        try:
            return call()
        except Exception as exc:
            if not is_outage(exc):
                raise
            waited = time.monotonic() - start
            if waited + delay > limit_seconds:
                raise TrackingUnavailable(
                    f"MLflow did not answer for {waited:.0f} s ({what}: {exc})"
                ) from None
            print(f"  MLflow unavailable ({what}); retrying in {delay:.0f} s", flush=True)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)


def failure_charge(
    seconds: float, device_count: float, price_per_hour: float | None
) -> tuple[float, float | None]:
    """(device-hours, price) of ``seconds`` lost on ``device_count`` devices."""
    hours = seconds / 3600 * device_count
    return hours, None if price_per_hour is None else hours * price_per_hour


class MLflowTrialLogger(Callback):
    """Ray Tune callback that writes every trial as a child run of its cell's MLflow run.

    Every write is queued, in order, and sent with retries; if MLflow stays unreachable past
    ``retry_seconds`` the queue is saved to ``spool_path`` and ``TrackingUnavailable`` stops the
    study. ``ablate run --resume`` sends the saved queue first, so no metric is ever dropped.

    Outcomes: ``Outcome.COMPLETED`` or ``PRUNED``; ``MODEL_FAILED`` (run status FAILED,
    ``Tag.FAILURE`` the ``FailureKind``) when the trial's last result says its model failed;
    ``FAILED`` with ``FailureKind.INFRASTRUCTURE`` when it errored after its retries.

    Work lost to a crash is charged here, since the trial cannot see it: when a trial fails
    (``on_trial_recover`` before a retry, ``on_trial_error`` after the last), the time from its
    last result (or its start) to the failure is added to its cumulative ``lost_seconds``, and
    from then on the ``device_hours`` and ``price`` logged for it include the lost time on the
    devices it reported (``device_count``), priced by the plan's price table. When a new
    attempt's first result arrives (a retry, or a resume after the driver stopped; told apart
    by ``attempt_started``), what the earlier attempt had reported beyond the checkpoint the
    new one restored (its billed seconds less ``restored_billed_seconds``) is lost too, and the
    epochs it trains again are counted in ``rerun_epochs``.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        study: str,
        sweep: str,
        plans: dict[str, CellPlan],
        cell_runs: dict[str, str],
        extra_tags: dict[str, str] | None = None,
        spool_path: str | None = None,
        retry_seconds: float = 300.0,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.study = study
        self.sweep = sweep
        self.plans = plans
        self.cell_runs = cell_runs
        self.extra_tags = dict(extra_tags or {})
        self.spool_path = spool_path
        self.retry_seconds = retry_seconds
        self._pending: list[dict] = []
        self._trial_runs: dict[str, str] = {}
        self._logged_step: dict[str, int] = {}
        self._ended: set[str] = set()  # trial ids whose runs ended before a resume
        self._lost: dict[str, float] = {}  # trial id -> lost seconds charged (as written)
        self._rerun: dict[str, float] = {}  # trial id -> epochs trained again (as written)
        self._raw_billed: dict[str, float] = {}  # trial id -> billed seconds its last result had
        self._attempt: dict[str, float] = {}  # trial id -> attempt_started of its last result
        self._last_seen: dict[str, float] = {}  # trial id -> time of its last result or failure
        # cell -> trial id -> what its cell run's summary is made of (``_log_cell``)
        self._cell_trials: dict[str, dict[str, dict[str, Any]]] = {}
        self._seeded = False  # whether ``_cell_trials`` holds the runs written before
        self._client = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(self.tracking_uri)
        return self._client

    # --- the queue -------------------------------------------------------------------------

    def setup(self, **info: Any) -> None:
        # A restored driver's clock of an earlier session would charge its downtime.
        self._last_seen.clear()
        if not self.__dict__.get("_seeded"):
            with_retry(
                self._seed_cells,
                limit_seconds=self.retry_seconds,
                what="reading the sweep's trial runs",
            )
        self.load_spool()

    def load_spool(self) -> None:
        """Queue the writes a stopped driver saved, ahead of anything new."""
        if self.spool_path and Path(self.spool_path).is_file():
            saved = [json.loads(line) for line in Path(self.spool_path).read_text().splitlines()]
            self._pending = saved + self._pending
            self.flush()

    def _enqueue(self, op: dict) -> None:
        self._pending.append(op)
        self.flush()

    def flush(self) -> None:
        start = time.perf_counter()
        try:
            self._flush()
        finally:
            # the driver's time in MLflow writes: on Tune's event loop, between trials' events
            self.write_seconds = getattr(self, "write_seconds", 0.0) + time.perf_counter() - start

    def _flush(self) -> None:
        try:
            while self._pending:
                op = self._pending[0]
                with_retry(
                    lambda op=op: self._apply(op),
                    limit_seconds=self.retry_seconds,
                    what=f"{op['op']} of trial {op['trial_id']}",
                )
                self._pending.pop(0)
        except TrackingUnavailable as exc:
            if self.spool_path:
                path = Path(self.spool_path)
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_text("".join(json.dumps(op) + "\n" for op in self._pending))
                os.replace(tmp, path)
                raise TrackingUnavailable(
                    exc.reason, spool=str(path), unsent=len(self._pending)
                ) from None
            raise
        if self.spool_path:
            Path(self.spool_path).unlink(missing_ok=True)

    # --- writes ----------------------------------------------------------------------------

    def _apply(self, op: dict) -> None:
        from mlflow.entities import Metric, RunTag

        run_id = self._run_for(op)
        trial_id = op["trial_id"]
        if trial_id in self._ended:
            return
        if op["op"] == "metrics":
            step = op["step"]
            self._charge_rerun(run_id, trial_id, op)
            if step <= self._logged_step.get(trial_id, 0):
                return
            values = self._with_lost(trial_id, op["metrics"], op.get("device"))
            metrics = [Metric(k, v, op["time"], step) for k, v in values.items()]
            tags = [RunTag(k, v) for k, v in op["tags"].items()]
            self.client.log_batch(run_id, metrics=metrics, tags=tags)
            self._logged_step[trial_id] = step
            self._note(op, values)
        elif op["op"] == "charge":
            # Lost work: charged at the trial's latest step, so its latest figures include it.
            self._lost[trial_id] = self._lost.get(trial_id, 0.0) + op["seconds"]
            values = self._with_lost(trial_id, op["metrics"], op.get("device"))
            step = self._logged_step.get(trial_id, 0)
            self.client.log_batch(
                run_id, metrics=[Metric(k, v, op["time"], step) for k, v in values.items()]
            )
            self._note(op, values)
        elif op["op"] == "retry":
            self.client.set_tag(run_id, Tag.RETRIES, str(op["retries"]))
        elif op["op"] == "end":
            tags = {Tag.OUTCOME: op["outcome"], **op.get("end_tags", {})}
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            self.client.set_terminated(run_id, status=op["status"])
            self._note(op, {}, outcome=op["outcome"])
            self._log_cell(op["cell"])

    def _charge_rerun(self, run_id: str, trial_id: str, op: dict) -> None:
        """On a new attempt's first result, charge what the attempt before it had reported
        beyond the checkpoint this one restored (see the class docstring)."""
        from mlflow.entities import Metric

        metrics = op["metrics"]
        attempt = metrics.get(MetricName.ATTEMPT_STARTED)
        if attempt is None:
            return
        earlier = self._raw_billed.get(trial_id)
        new_attempt = self._attempt.get(trial_id) != attempt
        self._attempt[trial_id] = attempt
        if BILLED_SECONDS in metrics:
            self._raw_billed[trial_id] = metrics[BILLED_SECONDS]
        if earlier is None or not new_attempt:
            return
        seconds = max(earlier - metrics.get(MetricName.RESTORED_BILLED_SECONDS, 0.0), 0.0)
        epochs = max(
            self._logged_step.get(trial_id, 0) - metrics.get(MetricName.RESTORED_EPOCH, 0.0), 0.0
        )
        if seconds <= 0 and epochs <= 0:
            return
        self._lost[trial_id] = self._lost.get(trial_id, 0.0) + seconds
        self._rerun[trial_id] = self._rerun.get(trial_id, 0.0) + epochs
        cost = {k: v for k, v in metrics.items()
                if k in (MetricName.DEVICE_HOURS, MetricName.PRICE, BILLED_SECONDS)}
        values = {**self._with_lost(trial_id, cost, op.get("device")),
                  MetricName.LOST_SECONDS: self._lost[trial_id],
                  MetricName.RERUN_EPOCHS: self._rerun[trial_id]}
        step = self._logged_step.get(trial_id, 0)
        self.client.log_batch(
            run_id, metrics=[Metric(k, v, op["time"], step) for k, v in values.items()]
        )
        self._note(op, values)

    # --- the cell runs' summary ----------------------------------------------------------------

    def _entry(self, cell: str, trial_id: str, stage: str) -> dict[str, Any]:
        cells = self.__dict__.setdefault("_cell_trials", {})
        return cells.setdefault(cell, {}).setdefault(
            trial_id,
            {"stage": stage, "outcome": None, "best": None, "test": None, "hours": 0.0,
             "price": None},
        )

    def _note(self, op: dict, values: dict[str, float], outcome: str | None = None) -> None:
        """Remember a trial's latest scores and cost (as logged) and how it ended."""
        entry = self._entry(op["cell"], op["trial_id"], op["stage"])
        for key, field in ((MetricName.BEST_DEV_SCORE, "best"), (MetricName.TEST_SCORE, "test"),
                           (MetricName.DEVICE_HOURS, "hours"), (MetricName.PRICE, "price")):
            if key in values:
                entry[field] = float(values[key])
        if outcome is not None:
            entry["outcome"] = outcome

    def _seed_cells(self) -> None:
        """What the sweep's trial and replicate runs already hold (written by an earlier
        driver, or an earlier experiment of this one): one search per stage, at setup."""
        for stage in (Stage.TRIAL, Stage.REPLICATE):
            for run in find_runs(
                self.client,
                self.experiment_id,
                f"{tag_filter(Tag.SWEEP, self.sweep)} and {tag_filter(Tag.STAGE, stage)}",
            ):
                tags = run.data.tags
                if tags.get(Tag.CELL) not in self.cell_runs or not tags.get(Tag.TRIAL_ID):
                    continue
                op = {"cell": tags[Tag.CELL], "trial_id": tags[Tag.TRIAL_ID], "stage": stage}
                self._note(op, dict(run.data.metrics), outcome=tags.get(Tag.OUTCOME))
        self._seeded = True

    def cell_summary(self, cell: str) -> dict[str, float]:
        """A cell run's summary metrics now: ``MetricName.TRIALS_DONE``, ``BEST_DEV_SCORE``
        (its best completed search trial's), ``TEST_SCORE`` (its replicates' mean, a model
        failure scoring 0, an infrastructure failure left out) and its cost so far
        (``CELL_DEVICE_HOURS``, ``CELL_PRICE``: every run of the cell, failed and lost ones
        included), as far as they exist."""
        entries = list(self.__dict__.get("_cell_trials", {}).get(cell, {}).values())
        search = [e for e in entries if e["stage"] == Stage.TRIAL]
        summary: dict[str, float] = {
            MetricName.TRIALS_DONE: float(sum(e["outcome"] in ENDED_BY_TRIAL for e in search)),
            MetricName.CELL_DEVICE_HOURS: sum(e["hours"] for e in entries),
        }
        best = [e["best"] for e in search
                if e["outcome"] == Outcome.COMPLETED and e["best"] is not None]
        if best:
            summary[MetricName.BEST_DEV_SCORE] = max(best)
        tested = [0.0 if e["outcome"] == Outcome.MODEL_FAILED else e["test"]
                  for e in entries if e["stage"] == Stage.REPLICATE
                  and e["outcome"] in (Outcome.COMPLETED, Outcome.MODEL_FAILED)]
        tested = [t for t in tested if t is not None]
        if tested:
            summary[MetricName.TEST_SCORE] = sum(tested) / len(tested)
        prices = [e["price"] for e in entries if e["price"] is not None]
        if prices:
            summary[MetricName.CELL_PRICE] = sum(prices)
        return summary

    def _log_cell(self, cell: str) -> None:
        """Update a cell run's summary (one ``log_batch``), at the step of how many of its
        runs have ended."""
        from mlflow.entities import Metric

        if cell not in self.cell_runs:
            return
        entries = self.__dict__.get("_cell_trials", {}).get(cell, {}).values()
        step = sum(e["outcome"] is not None for e in entries)
        now = int(time.time() * 1000)
        self.client.log_batch(
            self.cell_runs[cell],
            metrics=[Metric(k, float(v), now, step) for k, v in self.cell_summary(cell).items()],
        )

    def _with_lost(
        self, trial_id: str, metrics: dict[str, float], device: dict[str, Any] | None
    ) -> dict[str, float]:
        """A trial's cost metrics as logged: with its lost seconds charged, if any."""
        lost = self._lost.get(trial_id, 0.0)
        if lost <= 0:
            return metrics
        out = {**metrics, MetricName.LOST_SECONDS: lost}
        if BILLED_SECONDS in metrics:
            out[BILLED_SECONDS] = metrics[BILLED_SECONDS] + lost
        if device is None:  # a write queued by an older version: the seconds alone
            return out
        hours, price = failure_charge(lost, device["count"], device["price_per_hour"])
        if MetricName.DEVICE_HOURS in metrics:
            out[MetricName.DEVICE_HOURS] = metrics[MetricName.DEVICE_HOURS] + hours
        if price is not None and MetricName.PRICE in metrics:
            out[MetricName.PRICE] = metrics[MetricName.PRICE] + price
        return out

    def _device(self, trial: Any, result: dict | None) -> dict[str, Any]:
        """The devices a trial is charged on and their price per hour, from its result (or,
        before its first, from its cell's resources)."""
        plan = self.plans[TrialConfig.from_tune(trial.config).cell]
        result = result or {}
        if DEVICE_COUNT in result:
            count = float(result[DEVICE_COUNT])
            kind = str(result.get(RESULT_FIELDS[Tag.DEVICE_TYPE], "cpu"))
            name = str(result.get(RESULT_FIELDS[Tag.DEVICE_NAME], kind))
        else:
            gpu = plan.resources.gpu
            count, kind = (gpu, "gpu") if gpu else (plan.resources.cpu, "cpu")
            name = kind
        return {"count": count, "price_per_hour": price_for(plan.prices, kind, name)[0]}

    def _run_for(self, op: dict) -> str:
        """The MLflow run of a trial, created on first sight (or found again after a resume)."""
        trial_id = op["trial_id"]
        run_id = self._trial_runs.get(trial_id)
        if run_id is not None:
            return run_id
        found = find_runs(
            self.client,
            self.experiment_id,
            f"{tag_filter(Tag.TRIAL_ID, trial_id)} and {tag_filter(Tag.SWEEP, self.sweep)}",
        )
        if found and found[0].data.tags.get(Tag.OUTCOME) in ENDED_BY_TRIAL:
            # It ended before the earlier driver stopped, and only replays its last result
            # (``train_trial``'s ``ended``): its run keeps its end, and nothing is logged twice.
            run_id = found[0].info.run_id
            self._ended.add(trial_id)
        elif found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            # Resumed: epochs already logged are not logged again when the trial repeats them.
            history = self.client.get_metric_history(run_id, MetricName.DEV_MCC)
            self._logged_step[trial_id] = max((m.step for m in history), default=0)
            # ... and the lost time charged before goes on being charged.
            logged = found[0].data.metrics
            self._lost[trial_id] = float(logged.get(MetricName.LOST_SECONDS, 0.0))
            self._rerun[trial_id] = float(logged.get(MetricName.RERUN_EPOCHS, 0.0))
            if BILLED_SECONDS in logged:  # as its attempt reported it, before lost time
                self._raw_billed[trial_id] = logged[BILLED_SECONDS] - self._lost[trial_id]
        else:
            from mlflow.entities import Param, RunTag

            cell = self.plans[op["cell"]].cell
            tags = {
                Tag.STUDY: self.study,
                Tag.STAGE: op["stage"],
                Tag.SWEEP: self.sweep,
                Tag.TRIAL_ID: trial_id,
                Tag.PARENT_RUN: self.cell_runs[cell.name],
                **version_tag(),
                **cell_tags(cell),
                **self.extra_tags,
                **op["tags"],
            }
            run = self.client.create_run(
                self.experiment_id, tags=tags, run_name=f"{cell.name}#{trial_id}"
            )
            run_id = run.info.run_id
            self.client.log_batch(
                run_id,
                params=[Param(k, str(v)) for k, v in op["params"].items()],
                tags=[RunTag(k, v) for k, v in op["tags"].items()],
            )
        self._trial_runs[trial_id] = run_id
        return run_id

    def _describe(self, trial: Any) -> dict:
        """What creating a trial's run needs, as plain data (so it can be spooled)."""
        config = TrialConfig.from_tune(trial.config)
        plan = self.plans[config.cell]
        return {
            "trial_id": trial.trial_id,
            "cell": config.cell,
            "stage": config.stage,
            "params": {k: str(v) for k, v in trial_params(plan, config).items()},
            "tags": trial_tags(plan, config),
        }

    # --- Tune's callback interface ------------------------------------------------------------

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._last_seen.setdefault(trial.trial_id, time.time())
        self._enqueue({"op": "start", **self._describe(trial)})

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        self._last_seen[trial.trial_id] = time.time()
        metrics = logged_metrics(result)
        tags = {tag: str(result[key]) for key, tag in RESULT_TAGS.items() if key in result}
        self._enqueue(
            {
                "op": "metrics",
                **self._describe(trial),
                "step": epochs_done(result),
                "time": int(time.time() * 1000),
                "metrics": metrics,
                "tags": tags,
                "device": self._device(trial, result),
            }
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        plan = self.plans[TrialConfig.from_tune(trial.config).cell]
        result = trial.last_result or {}
        failure = result.get(RESULT_FIELDS[Tag.FAILURE])
        if result.get(MetricName.MODEL_FAILURE):
            self._enqueue(
                {
                    "op": "end",
                    **self._describe(trial),
                    "status": "FAILED",
                    "outcome": Outcome.MODEL_FAILED,
                    "end_tags": {Tag.FAILURE: str(failure)},
                }
            )
            return
        done = ran_to_end(result, plan.max_epochs)
        self._enqueue(
            {
                "op": "end",
                **self._describe(trial),
                "status": "FINISHED",
                "outcome": Outcome.COMPLETED if done else Outcome.PRUNED,
            }
        )

    def _charge_failure(self, trial: Any) -> None:
        """Charge the time from the trial's last result (or start) to now as lost."""
        now = time.time()
        since = self._last_seen.get(trial.trial_id, now)
        self._last_seen[trial.trial_id] = now
        result = trial.last_result or {}
        cost = {
            k: v
            for k, v in logged_metrics(result).items()
            if k in (MetricName.DEVICE_HOURS, MetricName.PRICE, BILLED_SECONDS)
        }
        self._enqueue(
            {
                "op": "charge",
                **self._describe(trial),
                "seconds": max(now - since, 0.0),
                "time": int(now * 1000),
                "metrics": cost,
                "device": self._device(trial, result),
            }
        )

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # A crashed trial (e.g. its node was lost) restarts from its checkpoint: count it, and
        # charge the work since its last result, which it will run again.
        self._charge_failure(trial)
        self._enqueue(
            {
                "op": "retry",
                **self._describe(trial),
                "retries": int(getattr(trial, "num_failures", 0)),
            }
        )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._charge_failure(trial)
        self._enqueue(
            {
                "op": "end",
                **self._describe(trial),
                "status": "FAILED",
                "outcome": Outcome.FAILED,
                "end_tags": {Tag.FAILURE: FailureKind.INFRASTRUCTURE},
            }
        )

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        # Tune restores its callbacks from their pickles, so this may be a copy of the logger
        # the driver holds: the ids go in a table of the process, by sweep.
        EXPERIMENT_TRIALS.setdefault(self.sweep, set()).update(t.trial_id for t in trials)

    def close_lost_runs(self) -> int:
        """Mark the runs of trials a killed driver started but Tune never saved; how many.

        Such a trial is lost between two saves of Tune's state: the resumed searcher re-issues
        its slot (see ``CellSearcher``), so its run would otherwise count as an extra trial of
        its cell (or stay open forever, if it was still running). Called after every
        experiment of the sweep has ended, so a trial run that is still RUNNING, or whose trial
        none of them holds (it may have ended just before the kill), is one of these: it is
        tagged ``ablate.outcome=lost`` (and closed as KILLED if it was open), and the analysis
        leaves it out.
        """
        self.flush()
        known = EXPERIMENT_TRIALS.get(self.sweep, set())
        trial_runs = [
            run
            for stage in (Stage.TRIAL, Stage.REPLICATE)
            for run in find_runs(
                self.client,
                self.experiment_id,
                f"{tag_filter(Tag.SWEEP, self.sweep)} and {tag_filter(Tag.STAGE, stage)}",
            )
        ]
        lost = [
            run
            for run in trial_runs
            if run.data.tags.get(Tag.OUTCOME) != Outcome.LOST
            and (run.info.status == "RUNNING" or run.data.tags.get(Tag.TRIAL_ID) not in known)
        ]

        def close(run: Any) -> None:
            self.client.set_tag(run.info.run_id, Tag.OUTCOME, Outcome.LOST)
            if run.info.status == "RUNNING":
                self.client.set_terminated(run.info.run_id, status="KILLED")

        for run in lost:
            with_retry(
                lambda run=run: close(run),
                limit_seconds=self.retry_seconds,
                what="closing a lost trial's run",
            )
        return len(lost)

    def close_cells(self, status: str = "FINISHED") -> None:
        for run_id in self.cell_runs.values():
            with_retry(
                lambda run_id=run_id: self.client.set_terminated(run_id, status=status),
                limit_seconds=self.retry_seconds,
                what="closing a cell run",
            )

    def __getstate__(self) -> dict:
        # The MLflow client holds a database engine: never pickle it. A restored copy reads
        # the runs written since (``_seed_cells``) when Tune sets it up.
        return {**self.__dict__, "_client": None, "_seeded": False}


def trial_params(plan: CellPlan, config: TrialConfig) -> dict[str, Any]:
    """A trial run's params: its searched values, its model and its seed and epoch budget."""
    model = plan.model
    params: dict[str, Any] = {
        **config.hparams,
        **config.model_params,
        "architecture": model.architecture,
        "preset": model.preset,
    }
    params.update({f"model.{k}": v for k, v in model.overrides.items()})
    params["seed"] = config.seed
    params["max_epochs"] = plan.max_epochs
    return params


def trial_tags(plan: CellPlan, config: TrialConfig) -> dict[str, str]:
    """Tags of a trial run beyond its cell's: its pretraining link, replicate seed and source."""
    tags = {}
    if plan.source.pretrained:
        tags[Tag.PRETRAIN_RUN_ID] = str(plan.source.run_id)
    if config.stage == Stage.REPLICATE:
        # The user's replicate label pairs replicates across cells; the seed itself is a param.
        label = config.replicate if config.replicate is not None else config.seed
        tags[Tag.REPLICATE_SEED] = str(label)
        tags[Tag.SOURCE_TRIAL] = str(config.source_trial)
    return tags


# --- pretraining runs ------------------------------------------------------------------------


def _pretrain_tags(tags: dict[str, str]) -> dict[str, str]:
    return {Tag.STAGE: Stage.PRETRAIN, **version_tag(), **tags}


def _pretrain_run(
    client: Any,
    tags: dict[str, str],
    run_name: str,
    params: dict[str, Any],
    metrics: dict[str, float],
    model_folder: Path | None = None,
) -> str:
    """A finished run in ``PRETRAIN_EXPERIMENT`` with these tags, params, metrics (and model)."""
    run_id = _create_pretrain_run(client, tags, run_name, params)
    finish_pretraining(client, run_id, metrics, model_folder)
    return run_id


def _create_pretrain_run(
    client: Any, tags: dict[str, str], run_name: str, params: dict[str, Any]
) -> str:
    from mlflow.entities import Param

    experiment_id = get_or_create_experiment(client, PRETRAIN_EXPERIMENT)
    run_id = client.create_run(
        experiment_id, tags=_pretrain_tags(tags), run_name=run_name
    ).info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    return run_id


def pretraining_tags(
    *,
    key: str,
    name: str,
    architecture: str,
    tokenizer: str,
    device_type: str,
    extra_tags: dict[str, str] | None = None,
) -> dict[str, str]:
    """The tags of a pretraining run (its key first: a resume finds the run by it)."""
    return {
        Tag.PRETRAIN_KEY: key,
        Tag.PRETRAIN_NAME: name,
        Tag.ARCHITECTURE: architecture,
        Tag.TOKENIZER: tokenizer,
        Tag.DEVICE_TYPE: device_type,
        **(extra_tags or {}),
    }


def open_pretraining(
    client: Any, *, tags: dict[str, str], run_name: str, params: dict[str, Any]
) -> tuple[str, dict[str, float]]:
    """The RUNNING run of a pretraining that starts or resumes: the unfinished run with its key
    (``tags[Tag.PRETRAIN_KEY]``), marked running again, or a new one. Returns its id and the
    latest metrics it recorded (empty for a new run)."""
    found = find_unfinished_pretraining(client, tags[Tag.PRETRAIN_KEY])
    if found is None:
        return _create_pretrain_run(client, tags, run_name, params), {}
    client.update_run(found.info.run_id, status="RUNNING")
    for tag, value in tags.items():
        client.set_tag(found.info.run_id, tag, value)
    return found.info.run_id, dict(found.data.metrics)


def log_pretraining_progress(
    client: Any,
    run_id: str,
    metrics: dict[str, float],
    step: int,
    tags: dict[str, str] | None = None,
) -> None:
    """Record a pretraining's progress and cost so far (step = optimizer step)."""
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, int(step)) for k, v in metrics.items()],
        tags=[RunTag(k, v) for k, v in (tags or {}).items()],
    )


def finish_pretraining(
    client: Any,
    run_id: str,
    metrics: dict[str, float],
    model_folder: Path | None = None,
    step: int | None = None,
    tags: dict[str, str] | None = None,
) -> None:
    """Log a pretraining's final metrics (at ``step``, default 0), tags and model folder, and
    mark its run FINISHED (only then is it reused as a checkpoint)."""
    log_pretraining_progress(client, run_id, metrics, step or 0, tags)
    if model_folder is not None:
        client.log_artifacts(run_id, str(model_folder), MODEL_ARTIFACT)
    client.set_terminated(run_id, status="FINISHED")


def register_pretraining(
    client: Any,
    *,
    key: str,
    name: str,
    architecture: str,
    tokenizer: str,
    device_type: str,
    params: dict[str, Any],
    metrics: dict[str, float],
    model_folder: Path,
    extra_tags: dict[str, str] | None = None,
) -> str:
    """Record a finished pretraining in one go: its key, cost metrics and model folder; its
    run id. (``ablate.pretrain`` opens its run at the start instead, see ``open_pretraining``.)"""
    tags = pretraining_tags(
        key=key,
        name=name,
        architecture=architecture,
        tokenizer=tokenizer,
        device_type=device_type,
        extra_tags=extra_tags,
    )
    return _pretrain_run(client, tags, f"{name}-{architecture}", params, metrics, model_folder)


def register_external(
    client: Any,
    *,
    key: str,
    name: str,
    folder: Path,
    device_hours: float,
    device: str = "gpu",
    device_name: str | None = None,
    price_per_hour: float | None = None,
    extra_tags: dict[str, str] | None = None,
) -> str:
    """Record an external checkpoint as a pretraining run with its declared cost; its run id.

    The cost names its device kind (``Tag.DEVICE_TYPE``: ``"gpu"`` or ``"cpu"``, so GPU-hours
    are never added to CPU core-hours) and, when declared, the device's name
    (``Tag.DEVICE_NAME``) and ``MetricName.PRICE`` = device-hours x ``price_per_hour``
    (``Tag.PRICE_SOURCE`` ``"declared"``); without a declared price the analysis prices it
    from the study's price table."""
    tags = {
        Tag.PRETRAIN_KEY: key,
        Tag.PRETRAIN_NAME: name,
        Tag.PRETRAIN_KIND: "external",
        Tag.ARCHITECTURE: "transformer",
        Tag.DEVICE_TYPE: device,
        **(extra_tags or {}),
    }
    if device_name:
        tags[Tag.DEVICE_NAME] = device_name
    metrics = {MetricName.DEVICE_HOURS: float(device_hours)}
    if price_per_hour is not None:
        metrics[MetricName.PRICE] = float(device_hours) * float(price_per_hour)
        tags[Tag.PRICE_SOURCE] = "declared"
    return _pretrain_run(
        client, tags, f"external-{name}", {"path": folder, "cost_source": "declared"}, metrics
    )
