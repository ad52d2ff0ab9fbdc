"""The names of the MLflow schema: tags, stages, outcomes, metrics and the schema version.

Every tag or metric name ``ablate`` writes or reads is a constant here; nothing else in the
package spells one. Importing this module imports nothing heavy, so readers (analysis, report,
benchmarks, tests) can use the names without Ray or MLflow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ablate.spec import Cell

# Runs written by this code carry ``Tag.SCHEMA_VERSION = SCHEMA_VERSION``. Version 1 is every
# run written before the tag existed (same tag and metric names; its Ray Tune state holds
# untyped trial configs, so a version-1 sweep can be reported but not resumed). Version 3 adds
# the task-metric names (``MetricName.DEV_SCORE`` and friends); version 2 runs are read with MCC
# as their score. Version 4 adds model failures (``Outcome.MODEL_FAILED``), cost in one unit
# (``MetricName.PRICE``, checkpoint and lost seconds) and the sweep's provenance run. The sweep
# run's ``SPEC_FINGERPRINT``, ``BUDGET`` and ``SEARCH_STARTED`` tags came later within version 4:
# readers take a sweep without them for one written before them (no fingerprint to check a
# resume against; its search started if it has a trial run).
SCHEMA_VERSION = 4

PRETRAIN_EXPERIMENT = "ablate-pretraining"  # the experiment of every pretraining run
# ``Tag.EXPERIMENT_KIND`` of every ablate experiment: MLflow's UI opens an experiment of this
# kind on its runs table (one without a kind lands on the GenAI overview).
EXPERIMENT_KIND = "custom_model_development"
MODEL_ARTIFACT = "model"  # artifact path of a pretraining run's model folder


class Tag:
    """Tag names. Every run of a study carries STUDY, SWEEP, STAGE, SCHEMA_VERSION, DATA and the
    cell's axes (CELL, ARCHITECTURE, PRETRAINING, TOKENIZER, TASK)."""

    STUDY = "ablate.study"
    SWEEP = "ablate.sweep"  # one id per launch of a study
    STAGE = "ablate.stage"  # a Stage value
    SCHEMA_VERSION = "ablate.schema_version"
    DATA = "ablate.data"  # gue:<folder> or synthetic:scale=<f>,seed=<n>
    CELL = "ablate.cell"
    ARCHITECTURE = "ablate.architecture"
    PRETRAINING = "ablate.pretraining"
    TOKENIZER = "ablate.tokenizer"
    TASK = "ablate.task"
    FAMILY = "ablate.family"  # a Family value: which side of question 1 the architecture is on
    EXTERNAL_CHECKPOINT = "ablate.external_checkpoint"  # both arms of an external checkpoint
    SEARCH_SPACE = "ablate.search_space"  # the cell's search ranges (JSON), for edge checks
    CAVEAT = "ablate.caveat"  # what the task's data lets it measure, when that is not obvious
    # trial and replicate runs
    TRIAL_ID = "ablate.trial_id"
    OUTCOME = "ablate.outcome"  # an Outcome value
    RETRIES = "ablate.retries"
    PRETRAIN_RUN_ID = "ablate.pretrain_run_id"  # also on the cell run
    REPLICATE_SEED = "ablate.replicate_seed"
    SOURCE_TRIAL = "ablate.source_trial"  # the search trial a replicate re-trains
    NODE_ID = "ablate.node_id"
    DEVICE_TYPE = "ablate.device_type"  # also on pretraining runs
    DEVICE_NAME = "ablate.device_name"
    PEAK_SOURCE = "ablate.peak_source"
    FLOPS_METHOD = "ablate.flops_method"
    # pretraining runs
    PRETRAIN_KEY = "ablate.pretrain_key"
    PRETRAIN_NAME = "ablate.pretrain_name"
    PRETRAIN_KIND = "ablate.pretrain_kind"  # "external" for a registered checkpoint
    FAILURE = "ablate.failure"  # why a run failed: a FailureKind value
    PRICE_SOURCE = "ablate.price_source"  # the price-table key that priced a run, or "unpriced"
    # the sweep run (Stage.SWEEP): short summaries of its provenance artifacts
    ABLATE_VERSION = "ablate.version"
    GIT_COMMIT = "ablate.git_commit"  # the package checkout's commit, or "unknown"
    GIT_DIRTY = "ablate.git_dirty"  # "true" when the checkout had uncommitted changes
    DATA_DIGEST = "ablate.data_digest"  # sha256 over every data file's name and sha256
    DATA_FILES = "ablate.data_files"  # how many data files the digest covers
    SUGGESTIONS = "ablate.suggestions"  # configurations recorded at the sweep's end
    RESUMES = "ablate.resumes"  # times the sweep was resumed
    # the sweep run: what identifies a sweep, set when it is opened (before Ray starts)
    SPEC_FINGERPRINT = "ablate.spec_fingerprint"  # sha256 of what may not change on resume
    BUDGET = "ablate.budget"  # JSON: {"cells": n, "trials_per_cell": t, "replicates": r}
    SEARCH_STARTED = "ablate.search_started"  # when the search's Tuner first started fitting
    # MLflow's own
    PARENT_RUN = "mlflow.parentRunId"
    # on every ablate experiment: what MLflow's UI opens it as (EXPERIMENT_KIND)
    EXPERIMENT_KIND = "mlflow.experimentKind"


class Stage:
    """Values of ``Tag.STAGE``: the run hierarchy is study experiment > CELL > TRIAL/REPLICATE;
    PRETRAIN runs live in ``PRETRAIN_EXPERIMENT``."""

    CELL = "cell"
    TRIAL = "trial"
    REPLICATE = "replicate"
    PRETRAIN = "pretrain"
    SWEEP = "sweep"  # one run per sweep: its provenance (spec, versions, data hashes, hardware)


class Family:
    """Values of ``Tag.FAMILY``. The k-mer baseline is the floor, in neither group."""

    TRANSFORMER = "transformer"
    CONVOLUTIONAL = "convolutional"
    BASELINE = "baseline"


class Outcome:
    """Values of ``Tag.OUTCOME``."""

    COMPLETED = "completed"  # ran to its own end (max epochs or dev patience)
    PRUNED = "pruned"  # stopped early by ASHA
    FAILED = "failed"  # an infrastructure failure (a lost node, say) after its retries
    MODEL_FAILED = "model_failed"  # the model itself failed: a FailureKind; counts against it
    LOST = "lost"  # started by a killed driver, never saved; its slot was run again


# Outcomes of runs that ended by their trial's own doing (an infrastructure failure did not).
ENDED_BY_TRIAL = (Outcome.COMPLETED, Outcome.PRUNED, Outcome.MODEL_FAILED)


class FailureKind:
    """Values of ``Tag.FAILURE``. The model kinds count against the arm (``MODEL_FAILURES``);
    anything else is the infrastructure's, retried or re-issued, never scored."""

    NAN_LOSS = "nan_loss"  # the training loss became NaN or infinite
    OUT_OF_MEMORY = "out_of_memory"  # out of device memory at the configuration's own batch
    INFRASTRUCTURE = "infrastructure"  # a lost or pre-empted node, a crash outside the model


MODEL_FAILURES = (FailureKind.NAN_LOSS, FailureKind.OUT_OF_MEMORY)


class MetricName:
    """Metric names the code reads back. A trial logs every numeric field it reports (see
    ``ablate.training``); these are the ones analysis, report and resume depend on."""

    BEST_DEV_MCC = "best_dev_mcc"
    DEV_MCC = "dev_mcc"
    TEST_MCC = "test_mcc"
    # The task's own metric (MCC, or macro F1 for virus/covid): what selection, ASHA, patience,
    # replicate choice and the report use. Runs of schema version 2 have only the MCC names.
    BEST_DEV_SCORE = "best_dev_score"  # the search metric (mode: max)
    DEV_SCORE = "dev_score"
    TEST_SCORE = "test_score"
    SEED = "seed"  # the seed a trial or replicate actually trained with
    # pretraining runs: corpus sequences removed because they equal, contain or are contained
    # in a dev/test sequence (or its reverse complement) of a study task
    LEAKED_REMOVED = "corpus_leaked_removed"
    CORPUS_SEQUENCES = "corpus_sequences"
    # pretraining runs: "exposure/<task>[/<split>]", dev/test sequences of a task found in the
    # corpus before filtering; cell runs: "caveat_<name>", what the task's data lets it measure
    EXPOSURE_PREFIX = "exposure/"
    CAVEAT_PREFIX = "caveat_"
    WALL_SECONDS = "wall_seconds"  # compute time: set-up, epochs, evaluation (test included)
    CHECKPOINT_SECONDS = "checkpoint_seconds"  # saving and uploading checkpoints, charged apart
    LOST_SECONDS = "lost_seconds"  # work lost to a crash or kill and run again, charged too
    RERUN_EPOCHS = "rerun_epochs"  # epochs reported, lost to a crash or kill, and trained again
    # Each attempt of a trial (its start, or a restore from a checkpoint): when its set-up
    # began, and the epoch and billed seconds of the checkpoint it restored (0: none).
    ATTEMPT_STARTED = "attempt_started"
    RESTORED_EPOCH = "restored_epoch"
    RESTORED_BILLED_SECONDS = "restored_billed_seconds"
    TEST_SECONDS = "test_seconds"  # the one test evaluation of a replicate (inside wall_seconds)
    PRICE = "price"  # money charged for the run: device_hours x the matched price per hour
    ENERGY_KWH = "energy_kwh"
    MFU = "mfu"
    MODEL_FAILURE = "model_failure"  # 1 on the final result of a run the model itself failed
    FLOPS = "flops"
    DEVICE_HOURS = "device_hours"
    N_PARAMS = "n_params"
    TOKENS_SEEN = "tokens_seen"
    MLM_LOSS = "mlm_loss"
    # the precision a trial trains in: 1 for the autocast it used; both 0 in float32 (on CPU)
    BF16_AUTOCAST = "bf16_autocast"
    FP16_AUTOCAST = "fp16_autocast"
    PEAK_GPU_MEMORY_GB = "peak_gpu_memory_gb"  # torch.cuda.max_memory_allocated; GPU runs only
    # cell runs, updated as their trials end (step: how many of the cell's runs have ended).
    # BEST_DEV_SCORE is the best completed search trial's, TEST_SCORE its replicates' mean
    # (a model failure scores 0); the cost is every run of the cell so far, search and
    # replicates, failures and lost work included.
    TRIALS_DONE = "trials_done"  # search trials counted against the cell's budget
    CELL_DEVICE_HOURS = "cell_device_hours"
    CELL_PRICE = "cell_price"


# String fields of a trial's results, recorded as tags rather than metrics.
RESULT_TAGS = {
    "node_id": Tag.NODE_ID,
    "device_type": Tag.DEVICE_TYPE,
    "device_name": Tag.DEVICE_NAME,
    "peak_source": Tag.PEAK_SOURCE,
    "flops_method": Tag.FLOPS_METHOD,
    "failure": Tag.FAILURE,
    "price_source": Tag.PRICE_SOURCE,
}


def cell_tags(cell: Cell) -> dict[str, str]:
    """The tags naming a cell's place on the axes (on its cell run and every run below it)."""
    tags = {
        Tag.CELL: cell.name,
        Tag.ARCHITECTURE: cell.architecture,
        Tag.PRETRAINING: cell.pretraining,
        Tag.TOKENIZER: cell.tokenizer,
        Tag.TASK: cell.task,
    }
    if cell.family:
        tags[Tag.FAMILY] = cell.family
    if cell.checkpoint:
        tags[Tag.EXTERNAL_CHECKPOINT] = cell.checkpoint
    return tags


def tag_column(tag: str) -> str:
    """The column of a tag in ``mlflow.search_runs(output_format="pandas")``."""
    return f"tags.{tag}"


def metric_column(metric: str) -> str:
    return f"metrics.{metric}"


def param_column(param: str) -> str:
    return f"params.{param}"


def tag_filter(tag: str, value: str, op: str = "=") -> str:
    """An MLflow search filter on one tag, e.g. ``tags.`ablate.stage` = 'cell'``."""
    return f"tags.`{tag}` {op} '{value}'"
