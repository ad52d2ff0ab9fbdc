"""The MLflow schema of a study, and the one place that writes it.

Layout: one MLflow experiment per study; in it, one parent run per cell
(``ablate.stage=cell``) and, under each, one child run per Ray Tune trial
(``ablate.stage=trial``) holding the trial's hyperparameters (params), its per-epoch dev metrics
and cost (metrics, step = epoch). Every run carries the tags ``ablate.study``, ``ablate.cell``,
``ablate.stage``, ``ablate.architecture``, ``ablate.pretraining``, ``ablate.tokenizer``,
``ablate.task``, ``ablate.sweep`` (one id per launch of a study) and ``ablate.data`` (which data
the study read: ``gue:<folder>`` or ``synthetic:scale=<f>,seed=<n>``).

Trials never talk to MLflow: they report to Ray Tune, and ``MLflowTrialLogger`` (a Tune callback
running in the driver) writes everything. Concurrent trials therefore never contend for the
embedded SQLite file, and the same code works against a remote tracking server.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from ablate.errors import AblateError

if TYPE_CHECKING:
    from ablate.spec import Cell

TAG_STUDY = "ablate.study"
TAG_CELL = "ablate.cell"
TAG_STAGE = "ablate.stage"
TAG_SWEEP = "ablate.sweep"
TAG_TRIAL_ID = "ablate.trial_id"
TAG_OUTCOME = "ablate.outcome"
PARENT_TAG = "mlflow.parentRunId"

# Metrics a trial reports that are logged to MLflow every epoch.
LOGGED_METRICS = (
    "dev_mcc",
    "dev_accuracy",
    "dev_f1",
    "dev_loss",
    "train_loss",
    "best_dev_mcc",
    "epoch_seconds",
    "wall_seconds",
    "flops",
    "train_samples_per_second",
    "n_params",
    "best_epoch",
    "device_count",
    "device_hours",
    "achieved_flops_per_s",
    "mfu",
    "price",
    "energy_kwh",
    "test_mcc",
    "test_accuracy",
    "test_f1",
    "test_loss",
)
# String fields of a trial's results recorded once, as tags.
RESULT_TAGS = {
    "node_id": "ablate.node_id",
    "device_type": "ablate.device_type",
    "device_name": "ablate.device_name",
    "peak_source": "ablate.peak_source",
    "flops_method": "ablate.flops_method",
}


def get_or_create_experiment(client: Any, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    return client.create_experiment(name)


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


def open_cell_runs(
    client: Any,
    experiment_id: str,
    study: str,
    sweep: str,
    cells: list[Cell],
    extra_tags: dict[str, str] | None = None,
) -> dict[str, str]:
    """The parent run of every cell in this sweep (created when missing); cell name -> run id."""
    existing = {
        run.data.tags[TAG_CELL]: run.info.run_id
        for run in find_runs(
            client,
            experiment_id,
            f"tags.`{TAG_STAGE}` = 'cell' and tags.`{TAG_SWEEP}` = '{sweep}'",
        )
    }
    run_ids = {}
    for cell in cells:
        if cell.name in existing:
            run_ids[cell.name] = existing[cell.name]
            client.update_run(existing[cell.name], status="RUNNING")
            continue
        tags = {
            TAG_STUDY: study,
            TAG_STAGE: "cell",
            TAG_SWEEP: sweep,
            **cell.tags(),
            **(extra_tags or {}),
        }
        run = client.create_run(experiment_id, tags=tags, run_name=cell.name)
        run_ids[cell.name] = run.info.run_id
    return run_ids


class TrackingUnavailable(AblateError):
    """The tracking server stayed unreachable past the retry limit; the study stopped."""


def with_retry(call: Callable[[], Any], *, limit_seconds: float, what: str) -> Any:
    """Run ``call``, retrying with exponential back-off (1 s doubling to 30 s) for a while.

    Raises ``TrackingUnavailable`` once ``limit_seconds`` have passed without success.
    """
    delay, start = 1.0, time.monotonic()
    while True:
        try:
            return call()
        except Exception as exc:  # connection refused, timeouts, a locked database, 5xx...
            waited = time.monotonic() - start
            if waited + delay > limit_seconds:
                raise TrackingUnavailable(
                    f"MLflow did not answer for {waited:.0f} s ({what}: {exc})"
                ) from None
            print(f"  MLflow unavailable ({what}); retrying in {delay:.0f} s", flush=True)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)


class MLflowTrialLogger(Callback):
    """Ray Tune callback that writes every trial as a child run of its cell's MLflow run.

    Every write is queued, in order, and sent with retries; if MLflow stays unreachable past
    ``retry_seconds`` the queue is saved to ``spool_path`` and ``TrackingUnavailable`` stops the
    study. ``ablate run --resume`` sends the saved queue first, so no metric is ever dropped.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        study: str,
        sweep: str,
        cells: dict[str, Cell],
        cell_runs: dict[str, str],
        max_epochs: int,
        extra_tags: dict[str, str] | None = None,
        spool_path: str | None = None,
        retry_seconds: float = 300.0,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.study = study
        self.sweep = sweep
        self.cells = cells
        self.cell_runs = cell_runs
        self.max_epochs = max_epochs
        self.extra_tags = dict(extra_tags or {})
        self.spool_path = spool_path
        self.retry_seconds = retry_seconds
        self._pending: list[dict] = []
        self._trial_runs: dict[str, str] = {}
        self._logged_step: dict[str, int] = {}
        self._client = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(self.tracking_uri)
        return self._client

    # --- the queue -------------------------------------------------------------------------

    def setup(self, **info: Any) -> None:
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
        try:
            while self._pending:
                op = self._pending[0]
                with_retry(lambda op=op: self._apply(op), limit_seconds=self.retry_seconds,
                           what=f"{op['op']} of trial {op['trial_id']}")
                self._pending.pop(0)
        except TrackingUnavailable as exc:
            if self.spool_path:
                path = Path(self.spool_path)
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_text("".join(json.dumps(op) + "\n" for op in self._pending))
                os.replace(tmp, path)
                raise TrackingUnavailable(
                    f"{exc}. The study stopped; {len(self._pending)} unsent records are saved "
                    f"in {path}. Run `ablate run --resume` when MLflow is back."
                ) from None
            raise
        if self.spool_path:
            Path(self.spool_path).unlink(missing_ok=True)

    # --- writes ----------------------------------------------------------------------------

    def _apply(self, op: dict) -> None:
        run_id = self._run_for(op)
        if op["op"] == "metrics":
            from mlflow.entities import Metric, RunTag

            step = op["step"]
            if step <= self._logged_step.get(op["trial_id"], 0):
                return
            metrics = [Metric(k, v, op["time"], step) for k, v in op["metrics"].items()]
            tags = [RunTag(k, v) for k, v in op["tags"].items()]
            self.client.log_batch(run_id, metrics=metrics, tags=tags)
            self._logged_step[op["trial_id"]] = step
        elif op["op"] == "retry":
            self.client.set_tag(run_id, "ablate.retries", str(op["retries"]))
        elif op["op"] == "end":
            self.client.set_tag(run_id, TAG_OUTCOME, op["outcome"])
            self.client.set_terminated(run_id, status=op["status"])

    def _run_for(self, op: dict) -> str:
        """The MLflow run of a trial, created on first sight (or found again after a resume)."""
        trial_id = op["trial_id"]
        run_id = self._trial_runs.get(trial_id)
        if run_id is not None:
            return run_id
        found = find_runs(
            self.client,
            self.experiment_id,
            f"tags.`{TAG_TRIAL_ID}` = '{trial_id}' and tags.`{TAG_SWEEP}` = '{self.sweep}'",
        )
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            # Resumed: epochs already logged are not logged again when the trial repeats them.
            history = self.client.get_metric_history(run_id, "dev_mcc")
            self._logged_step[trial_id] = max((m.step for m in history), default=0)
        else:
            from mlflow.entities import Param, RunTag

            cell = self.cells[op["cell"]]
            tags = {
                TAG_STUDY: self.study,
                TAG_STAGE: op["stage"],
                TAG_SWEEP: self.sweep,
                TAG_TRIAL_ID: trial_id,
                PARENT_TAG: self.cell_runs[cell.name],
                **cell.tags(),
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

    @staticmethod
    def _describe(trial: Any) -> dict:
        """What creating a trial's run needs, as plain data (so it can be spooled)."""
        config = trial.config
        tags = {}
        if config.get("pretrained"):
            tags["ablate.pretrain_run_id"] = config["pretrained"]["run_id"]
        if config.get("stage") == "replicate":
            tags["ablate.replicate_seed"] = str(config["seed"])
            tags["ablate.source_trial"] = str(config["source_trial"])
        return {
            "trial_id": trial.trial_id,
            "cell": config["cell"],
            "stage": config.get("stage", "trial"),
            "params": {k: str(v) for k, v in {**config["hparams"],
                                             **_model_params(config)}.items()},
            "tags": tags,
        }

    # --- Tune's callback interface ------------------------------------------------------------

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._enqueue({"op": "start", **self._describe(trial)})

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        metrics = {
            key: float(result[key])
            for key in LOGGED_METRICS
            if isinstance(result.get(key), int | float)
        }
        tags = {tag: str(result[key]) for key, tag in RESULT_TAGS.items() if key in result}
        self._enqueue({
            "op": "metrics",
            **self._describe(trial),
            "step": int(result.get("training_iteration", 0)),
            "time": int(time.time() * 1000),
            "metrics": metrics,
            "tags": tags,
        })

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        from ablate.training import ran_to_end

        done = ran_to_end(trial.last_result or {}, self.max_epochs)
        self._enqueue({"op": "end", **self._describe(trial), "status": "FINISHED",
                       "outcome": "completed" if done else "pruned"})

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # A crashed trial (e.g. its node was lost) restarts from its checkpoint: count it.
        self._enqueue({"op": "retry", **self._describe(trial),
                       "retries": int(getattr(trial, "num_failures", 0))})

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._enqueue({"op": "end", **self._describe(trial), "status": "FAILED",
                       "outcome": "failed"})

    def close_lost_runs(self) -> int:
        """Close the runs of trials a killed driver started but Tune never saved; how many.

        Such a trial is lost between two saves of Tune's state: the resumed searcher re-issues
        its slot (see ``CellSearcher``), so its run, still RUNNING, would otherwise stay open
        forever and count as an extra trial of its cell. Called after every trial of the
        sweep has ended, so any run still RUNNING is one of these: it is closed as KILLED and
        tagged ``ablate.outcome=lost``, and the analysis leaves it out.
        """
        self.flush()
        lost = find_runs(self.client, self.experiment_id,
                         f"tags.`{TAG_SWEEP}` = '{self.sweep}' and attributes.status = 'RUNNING'"
                         f" and tags.`{TAG_STAGE}` != 'cell'")

        def close(run_id: str) -> None:
            self.client.set_tag(run_id, TAG_OUTCOME, "lost")
            self.client.set_terminated(run_id, status="KILLED")

        for run in lost:
            with_retry(lambda run=run: close(run.info.run_id), limit_seconds=self.retry_seconds,
                       what="closing a lost trial's run")
        return len(lost)

    def close_cells(self, status: str = "FINISHED") -> None:
        for run_id in self.cell_runs.values():
            with_retry(lambda run_id=run_id: self.client.set_terminated(run_id, status=status),
                       limit_seconds=self.retry_seconds, what="closing a cell run")

    def __getstate__(self) -> dict:
        # The MLflow client holds a database engine: never pickle it.
        return {**self.__dict__, "_client": None}


def _model_params(config: dict) -> dict[str, Any]:
    model = config.get("model", {})
    params = {"architecture": model.get("architecture"), "preset": model.get("preset")}
    params.update({f"model.{k}": v for k, v in (model.get("overrides") or {}).items()})
    params["seed"] = config.get("seed")
    params["max_epochs"] = config.get("max_epochs")
    return params
