"""What a trial runs, as typed values: a cell's fixed context and the values searched for it.

Two halves, following Ray Tune's own pattern:

- ``CellPlan``: everything fixed for every trial of a cell (its task inputs, its model, where
  the model starts from, resources, prices, epoch budget). Built once per study by
  ``ablate.study.cell_plans`` and handed to the trainable through ``tune.with_parameters``, so it
  travels through Ray's object store, never through Tune's ``config``.
- ``TrialConfig``: what Tune's ``config`` carries for one trial: the cell's name, the searched
  hyperparameters, the seed and the ids that tie a run to its search. It is plain data, so it
  pickles through Tune's experiment state and a resume.

Only this module reads or writes the keys of Tune's ``config``; everyone else goes through
``TrialConfig.from_tune``. Nothing here imports torch, Ray or MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ablate.shards import TaskInputs
from ablate.tracking.schema import MetricName

if TYPE_CHECKING:  # not at run time: ablate.spec imports pydantic and yaml, which the
    # training step (ablate.training, bench/gpu_efficiency.py on a bare GPU box) never needs
    from ablate.spec import Cell

SourceKind = Literal["scratch", "mlm", "external", "external-config"]


@dataclass(frozen=True)
class ModelSource:
    """Where a cell's model starts from.

    ``scratch``: the architecture freshly initialised. ``mlm``: an encoder pretrained by
    ``ablate.pretrain``. ``external``: a checkpoint pretrained elsewhere. ``external-config``:
    an external checkpoint's configuration with random weights (its from-scratch twin).
    ``weights_key`` names the model folder's files in the object store (shared by the study's
    driver, so the reference resolves on any node); ``run_id`` is the MLflow run that records
    the pretraining and its cost.
    """

    kind: SourceKind = "scratch"
    run_id: str | None = None
    weights_key: str | None = None
    trust_remote_code: bool = False

    @property
    def pretrained(self) -> bool:
        """Whether the model loads pretrained weights (and is linked to a pretraining run)."""
        return self.kind in ("mlm", "external")

    @property
    def external(self) -> bool:
        """Whether the model is built by ``transformers`` from an external checkpoint."""
        return self.kind in ("external", "external-config")


@dataclass(frozen=True)
class ModelPlan:
    """The model a cell trains: architecture, preset, config overrides and its token limit
    (shared by every cell and pretraining of the same tokenizer, so encoders always fit)."""

    architecture: str
    preset: str
    overrides: dict[str, Any] = field(default_factory=dict)
    token_limit: int = 0


@dataclass(frozen=True)
class Resources:
    """What one trial reserves: CPUs and GPUs (a fraction packs several trials on one GPU)."""

    cpu: float = 1.0
    gpu: float = 0.0

    def for_tune(self) -> dict[str, float]:
        return {"cpu": self.cpu, "gpu": self.gpu}


@dataclass(frozen=True)
class CellPlan:
    """Everything fixed for every trial of one cell."""

    cell: Cell
    inputs: TaskInputs
    model: ModelPlan
    source: ModelSource
    resources: Resources
    prices: dict[str, float]
    max_epochs: int
    patience: int | None = None
    metric: str = "mcc"  # the task's metric: "mcc" or "f1_macro" (virus/covid)
    # the largest batch one forward/backward pass takes; a larger searched (global) batch is
    # reached by gradient accumulation. None: the whole batch at once.
    micro_batch_size: int | None = None
    checkpoint_every: int = 1  # epochs between a trial's checkpoints


TrialStage = Literal["trial", "replicate"]

# Seeds: a search trial's seed comes from its slot (the n-th trial of a cell, the same n in
# every cell, kept when a lost trial's slot is issued again), a replicate's from the user's
# replicate label. Search seeds are even and replicate seeds odd, so a replicate can never
# repeat the seed (and with it the exact run) of the search trial it re-trains.
_SEED_STRIDE = 100_003


def search_seed(study_seed: int, slot: int) -> int:
    """The seed of slot ``slot`` (0, 1, ...) of every cell's search."""
    return 2 * (study_seed * _SEED_STRIDE + slot)


def replicate_seed(study_seed: int, label: int) -> int:
    """The seed of replicate ``label`` (a value of the spec's ``replicates``) in every cell."""
    return 2 * (study_seed * _SEED_STRIDE + label) + 1


@dataclass(frozen=True)
class TrialConfig:
    """The values Tune's ``config`` carries for one trial.

    ``hparams`` are the searched training hyperparameters (learning rate, weight decay,
    dropout, warm-up, batch size, schedule); ``model_params`` holds searched model
    hyperparameters, if a search space has any. ``seed`` seeds the trial's initialisation and
    data order: ``search_seed`` of its ``slot`` for a search trial. A replicate
    (``stage="replicate"``) re-trains ``source_trial``'s configuration with
    ``replicate_seed`` of its label ``replicate`` and is evaluated once on test.
    """

    cell: str
    hparams: dict[str, Any]
    seed: int
    stage: TrialStage = "trial"
    optuna_trial: int | None = None
    source_trial: str | None = None
    model_params: dict[str, Any] = field(default_factory=dict)
    slot: int | None = None
    replicate: int | None = None  # the replicate's label, the same in every cell (pairing)

    @property
    def evaluate_test(self) -> bool:
        return self.stage == "replicate"

    def as_replicate(self, label: int, study_seed: int, source_trial: str) -> TrialConfig:
        """This configuration re-trained as replicate ``label`` of ``source_trial``."""
        return TrialConfig(self.cell, dict(self.hparams), replicate_seed(study_seed, label),
                           "replicate", self.optuna_trial, source_trial, dict(self.model_params),
                           replicate=label)

    def to_tune(self) -> dict[str, Any]:
        config: dict[str, Any] = {"cell": self.cell, "hparams": dict(self.hparams),
                                  "seed": self.seed, "stage": self.stage}
        if self.optuna_trial is not None:
            config["optuna_trial"] = self.optuna_trial
        if self.source_trial is not None:
            config["source_trial"] = self.source_trial
        if self.model_params:
            config["model_params"] = dict(self.model_params)
        if self.slot is not None:
            config["slot"] = self.slot
        if self.replicate is not None:
            config["replicate"] = self.replicate
        return config

    @staticmethod
    def from_tune(config: dict[str, Any]) -> TrialConfig:
        return TrialConfig(
            cell=config["cell"],
            hparams=dict(config["hparams"]),
            seed=int(config["seed"]),
            stage=config.get("stage", "trial"),
            optuna_trial=config.get("optuna_trial"),
            source_trial=config.get("source_trial"),
            model_params=dict(config.get("model_params") or {}),
            slot=config.get("slot"),
            replicate=config.get("replicate"),
        )


def cell_of(config: dict[str, Any]) -> str | None:
    """The cell a Tune config belongs to (None for a config this code did not write)."""
    return config.get("cell")


# The fields of a trial's results that end it by its own rule, and Tune's epoch counter.
FINISHED = "finished"
ITERATION = "training_iteration"
MODEL_FAILURE = MetricName.MODEL_FAILURE


def ran_to_end(result: dict, max_epochs: int) -> bool:
    """Whether a trial's last result ends it by its own rule (max epochs or dev patience).

    Anything else that ends a trial early (ASHA) makes it a pruned trial, not a completed one;
    a trial whose model failed (``model_failure``, even in its last epoch) never ran to its end.
    """
    if result.get(MODEL_FAILURE):
        return False
    return bool(result.get(FINISHED)) or int(result.get(ITERATION, 0)) >= max_epochs


def epochs_done(result: dict) -> int:
    return int(result.get(ITERATION, 0))
