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

import time
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

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


class MLflowTrialLogger(Callback):
    """Ray Tune callback that writes every trial as a child run of its cell's MLflow run."""

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
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.study = study
        self.sweep = sweep
        self.cells = cells
        self.cell_runs = cell_runs
        self.max_epochs = max_epochs
        self.extra_tags = dict(extra_tags or {})
        self._trial_runs: dict[str, str] = {}
        self._tagged: set[str] = set()
        self._logged_step: dict[str, int] = {}
        self._client = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def _run_for(self, trial: Any) -> str:
        """The MLflow run of a trial, created on first sight (or found again after a resume)."""
        run_id = self._trial_runs.get(trial.trial_id)
        if run_id is not None:
            return run_id
        found = find_runs(
            self.client,
            self.experiment_id,
            f"tags.`{TAG_TRIAL_ID}` = '{trial.trial_id}' and tags.`{TAG_SWEEP}` = '{self.sweep}'",
        )
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            # Resumed: epochs already logged are not logged again when the trial repeats them.
            history = self.client.get_metric_history(run_id, "dev_mcc")
            self._logged_step[trial.trial_id] = max((m.step for m in history), default=0)
        else:
            cell = self.cells[trial.config["cell"]]
            tags = {
                TAG_STUDY: self.study,
                TAG_STAGE: trial.config.get("stage", "trial"),
                TAG_SWEEP: self.sweep,
                TAG_TRIAL_ID: trial.trial_id,
                PARENT_TAG: self.cell_runs[cell.name],
                **cell.tags(),
                **self.extra_tags,
            }
            run = self.client.create_run(
                self.experiment_id, tags=tags, run_name=f"{cell.name}#{trial.trial_id}"
            )
            run_id = run.info.run_id
            pretrained = trial.config.get("pretrained") or {}
            if pretrained:
                self.client.set_tag(run_id, "ablate.pretrain_run_id", pretrained["run_id"])
            if trial.config.get("stage") == "replicate":
                self.client.set_tag(run_id, "ablate.replicate_seed", str(trial.config["seed"]))
                self.client.set_tag(run_id, "ablate.source_trial", trial.config["source_trial"])
            params = {**trial.config["hparams"], **_model_params(trial.config)}
            self._log_params(run_id, params)
        self._trial_runs[trial.trial_id] = run_id
        return run_id

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._run_for(trial)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        from mlflow.entities import Metric

        run_id = self._run_for(trial)
        step = int(result.get("training_iteration", 0))
        if step <= self._logged_step.get(trial.trial_id, 0):
            return
        self._logged_step[trial.trial_id] = step
        now = int(time.time() * 1000)
        metrics = [
            Metric(key, float(result[key]), now, step)
            for key in LOGGED_METRICS
            if isinstance(result.get(key), int | float)
        ]
        tags = []
        if step <= 1 or trial.trial_id not in self._tagged:
            from mlflow.entities import RunTag

            tags = [RunTag(tag, str(result[key])) for key, tag in RESULT_TAGS.items()
                    if key in result]
            self._tagged.add(trial.trial_id)
        self.client.log_batch(run_id, metrics=metrics, tags=tags)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self._run_for(trial)
        from ablate.training import ran_to_end

        done = ran_to_end(trial.last_result or {}, self.max_epochs)
        outcome = "completed" if done else "pruned"
        self.client.set_tag(run_id, TAG_OUTCOME, outcome)
        self.client.set_terminated(run_id, status="FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self._run_for(trial)
        self.client.set_tag(run_id, TAG_OUTCOME, "failed")
        self.client.set_terminated(run_id, status="FAILED")

    def close_cells(self, status: str = "FINISHED") -> None:
        for run_id in self.cell_runs.values():
            self.client.set_terminated(run_id, status=status)

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
