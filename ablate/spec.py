"""Study and search-space specs: loaded from YAML, validated before anything expensive starts.

A study spec names the ablation axes (architecture x pretraining x tokenizer x task), the budget
every cell gets, and where data and tracking live::

    name: smoke
    data: {gue_dir: PATH, tasks: [prom/prom_core_tata]}  # or data: {synthetic: {scale: 0.05}, ...}
    axes: {architecture: [convnova, transformer], pretraining: [none], tokenizer: [char, bpe]}
    budget: {trials_per_cell: 4, max_epochs: 2, concurrent_trials: 2}
    seed: 0
    tracking: {uri: sqlite:///mlruns.db}

Relative paths in a spec are resolved against the current directory (as MLflow resolves
``sqlite:///mlruns.db``), and ``${VAR}`` is expanded from the environment. Every mistake raises
``AblateError`` naming the key and the allowed values.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from ablate.errors import AblateError
from ablate.models.registry import ARCHITECTURES

if TYPE_CHECKING:
    from ablate.tokenization import TokenizerChoice

DEFAULT_SEARCH_SPACE_DIR = Path(__file__).resolve().parents[1] / "search_spaces"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticData(_Strict):
    """Generate GUE-shaped synthetic data (planted motifs) instead of reading real GUE."""

    scale: float = Field(0.05, gt=0, le=10, description="dataset sizes times this factor")
    seed: int = 0
    motif_length: int = Field(8, ge=1, le=64, description="bases per planted class motif")
    motif_mutation: float = Field(
        0.05, ge=0, lt=0.75, description="chance that a motif copy's base is replaced"
    )
    shared_motifs: bool = Field(
        False,
        description="datasets of one GUE group share their motifs (a sibling's train split "
        "then carries a task's signal into masked-LM pretraining)",
    )

    def signal(self) -> Any:
        from ablate.data.synthetic import Signal

        return Signal(self.motif_length, self.motif_mutation, self.shared_motifs)


class DataSpec(_Strict):
    gue_dir: str | None = Field(None, description="root of GUE/<group>/<dataset>/*.csv")
    synthetic: SyntheticData | None = None
    tasks: list[str] = Field(min_length=1, description="GUE dataset keys, e.g. tf/0")
    drop_train_duplicates: bool = Field(
        False, description="drop train rows whose exact sequence occurs in dev or test"
    )

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        if (self.gue_dir is None) == (self.synthetic is None):
            raise ValueError("give exactly one of data.gue_dir or data.synthetic")
        return self

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: list[str]) -> list[str]:
        from ablate.data.gue import REGISTRY

        unknown = [t for t in tasks if t not in REGISTRY]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; allowed: {sorted(REGISTRY)}")
        if len(set(tasks)) != len(tasks):
            raise ValueError("tasks are listed more than once")
        return tasks


class AxesSpec(_Strict):
    architecture: list[str] = Field(min_length=1)
    pretraining: list[str] = Field(default_factory=lambda: ["none"], min_length=1)
    tokenizer: list[str] = Field(min_length=1)

    @field_validator("architecture")
    @classmethod
    def _no_repeats(cls, values: list[str]) -> list[str]:
        if len(set(values)) != len(values):
            raise ValueError("a value is listed more than once")
        return values

    @field_validator("pretraining")
    @classmethod
    def _pretraining_syntax(cls, values: list[str]) -> list[str]:
        for value in values:
            kind, _, arg = value.partition(":")
            if value != "none" and (kind not in ("mlm", "external") or not arg):
                raise ValueError(
                    f"unknown pretraining {value!r}; allowed: none, mlm:<name of an entry in "
                    "pretrain_specs>, external:<name of an entry in external_checkpoints>"
                )
        if len(set(values)) != len(values):
            raise ValueError("a value is listed more than once")
        return values


class BudgetSpec(_Strict):
    trials_per_cell: int = Field(ge=1, description="Optuna trials every cell gets")
    max_epochs: int = Field(ge=1, description="the most epochs any trial trains (max fidelity)")
    max_epochs_by_task: dict[str, int] = Field(
        default_factory=dict,
        description="max_epochs for particular tasks (the same for every "
        "cell of a task), e.g. {prom/prom_core_tata: 10}",
    )
    concurrent_trials: int = Field(2, ge=1, description="trials running at once, all cells")
    grace_epochs: int = Field(1, ge=1, description="epochs before ASHA may stop a trial")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA keeps 1/rf of trials per rung")
    startup_trials: int | None = Field(
        None, ge=1, description="random trials before TPE models a cell (default: half budget)"
    )
    patience: int | None = Field(
        None, ge=1, description="a trial ends after this many epochs without a better dev MCC"
    )
    max_failures: int = Field(
        0,
        ge=0,
        description="times a crashed trial (e.g. its node was lost) is retried from "
        "its last checkpoint before it counts as failed",
    )
    checkpoint_every: int = Field(
        1,
        ge=1,
        description="epochs between a trial's checkpoints (its latest state, for a retry or "
        "a resume); the best model is saved once each time it changes; at dnabert2-base a "
        "checkpoint is ~1.4 GB, so raise it where epochs are short",
    )

    @model_validator(mode="after")
    def _grace_within_max(self) -> BudgetSpec:
        for task, epochs in {"": self.max_epochs, **self.max_epochs_by_task}.items():
            where = f"max_epochs_by_task[{task}]" if task else "max_epochs"
            if epochs < 1:
                raise ValueError(f"budget.{where} must be at least 1")
            if self.grace_epochs > epochs:
                raise ValueError(f"budget.grace_epochs must not exceed budget.{where}")
        return self

    def epochs_for(self, task: str) -> int:
        """The epoch budget of every cell of ``task``."""
        return self.max_epochs_by_task.get(task, self.max_epochs)


class ResourcesSpec(_Strict):
    cpu: float = Field(1.0, gt=0, description="CPUs reserved per trial")
    gpu: float = Field(0.0, ge=0, description="GPUs per trial: 0, 1 or a fraction of one")
    micro_batch_size: int | None = Field(
        None,
        ge=1,
        description="the largest batch one forward/backward pass takes; a larger "
        "searched batch (always the global batch) accumulates gradients over micro-batches",
    )

    @field_validator("gpu")
    @classmethod
    def _one_device(cls, gpu: float) -> float:
        """A trial trains on one device: reserving more GPUs would bill them and leave all
        but one idle."""
        if gpu > 1:
            raise ValueError(
                f"gpu is {gpu:g}: a trial trains on one device and multi-GPU trials are not "
                "supported; reserve 1 GPU, or a fraction of one (at most 1) to share it"
            )
        return gpu


class TokenizerOptions(_Strict):
    kmer_k: int = Field(6, ge=1, le=8, description="k for the plain 'kmer' axis value")
    bpe_vocab_size: int = Field(4096, ge=16, description="vocabulary of a trained 'bpe'")


class ModelChoice(_Strict):
    preset: str | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)


class TrackingSpec(_Strict):
    uri: str = "sqlite:///mlruns.db"
    retry_seconds: float = Field(
        300.0,
        gt=0,
        description="how long to retry an unreachable tracking server before the "
        "study stops (unsent records are kept for --resume)",
    )
    optuna_storage: str | None = Field(
        None,
        description="where each cell's Optuna study is copied for optuna-dashboard: an RDB "
        "URL, a SQLite file path, or 'none' (off); default: beside MLflow's SQLite file "
        "(X.optuna.db), MLflow's PostgreSQL database (schema 'optuna'), else "
        "<work_dir>/optuna.db",
    )
    live_report_seconds: float = Field(
        60.0,
        ge=0,
        description="while a study runs, its report is refreshed in MLflow (artifacts of the "
        "sweep's run, under report/) at most this often; 0: only when the sweep ends",
    )


class CorpusSpec(_Strict):
    """What masked-LM pretraining reads: GUE train splits, or windows sampled from FASTA files."""

    gue_tasks: list[str] | Literal["self"] | None = Field(
        None,
        description="train splits of these GUE datasets (default in a study: its tasks); "
        "'self': each task pretrains on its own train split only (self-pretraining)",
    )
    fasta: list[str] | None = Field(None, description="FASTA files (plain or bgzip)")
    window_bp: int = Field(512, ge=8, description="length of each sampled FASTA window")
    windows: int = Field(20_000, ge=1, description="FASTA windows to sample")

    @model_validator(mode="after")
    def _one_corpus(self) -> CorpusSpec:
        if self.gue_tasks is not None and self.fasta is not None:
            raise ValueError("give gue_tasks or fasta, not both")
        if isinstance(self.gue_tasks, list):
            DataSpec._known_tasks(self.gue_tasks)
        return self


class PretrainRecipe(_Strict):
    """How to pretrain (corpus and optimisation); a study applies it to each cell's model."""

    corpus: CorpusSpec = CorpusSpec()
    max_steps: int = Field(200, ge=1, description="optimizer steps (per data-parallel group)")
    batch_size: int = Field(64, ge=1, description="sequences per worker per step")
    learning_rate: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.05, ge=0, le=1)
    mask_prob: float = Field(0.15, gt=0, lt=1)
    checkpoint_every: int = Field(50, ge=1, description="steps between checkpoints")
    workers: int = Field(2, ge=1, description="Ray Train data-parallel workers")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    seed: int = 0


class ExternalCheckpoint(_Strict):
    """A checkpoint pretrained elsewhere (e.g. a local copy of DNABERT-2), with its cost.

    A checkpoint is an architecture of its own: its name goes on ``axes.architecture`` and
    ``external:<name>`` on ``axes.pretraining``. Its two cells per task are the checkpoint
    (``<name>|external:<name>|...``) and its from-scratch twin (``<name>|none|...``: the same
    config, head and pooling with random weights), both with the checkpoint's own tokenizer
    (an axis value that must also be on the tokenizer axis, e.g. ``bpe:/models/DNABERT-2``).
    """

    path: str = Field(
        description="local folder: config.json, weights (pytorch_model.bin or "
        "model.safetensors), remote code if any"
    )
    tokenizer: str = Field(description="its tokenizer, as an axis value (bpe:PATH)")
    device_hours: float = Field(
        ge=0,
        description="declared pretraining cost, in hours of "
        "`device` (GPU-hours, or CPU core-hours)",
    )
    device: Literal["gpu", "cpu"] = Field(
        "gpu", description="the kind of device the declared device-hours are of"
    )
    device_name: str | None = Field(
        None,
        description="the device it was pretrained on, as "
        "torch names it (e.g. 'NVIDIA A100'); it matches the "
        "study's price table",
    )
    price_per_hour: float | None = Field(
        None,
        ge=0,
        description="declared price per device-hour; without it the study's price table prices it",
    )
    trust_remote_code: bool = False
    search_space: str = Field(
        "transformer",
        description="the search space file both of its "
        "cells are searched with (search_spaces/<name>.yaml)",
    )


class CellPattern(_Strict):
    """The cells one side of a contrast takes: glob patterns (``fnmatch``) on the axis values,
    and optionally the architecture's family and whether the cell is pretrained."""

    architecture: str = "*"
    pretraining: str = "*"
    tokenizer: str = "*"
    family: Literal["transformer", "convolutional", "baseline"] | None = None
    pretrained: bool | None = None

    def matches(
        self, *, architecture: str, pretraining: str, tokenizer: str, family: str | None = None
    ) -> bool:
        from fnmatch import fnmatchcase

        return (
            fnmatchcase(architecture, self.architecture)
            and fnmatchcase(pretraining, self.pretraining)
            and fnmatchcase(tokenizer, self.tokenizer)
            and (self.family is None or family == self.family)
            and (self.pretrained is None or self.pretrained == (pretraining != "none"))
        )


class Contrast(_Strict):
    """A comparison between cell patterns that may vary several axes at once, per task.

    Every treatment cell of a task is compared with the control side of that task: with
    ``control_choice: best`` the one control cell with the best dev score (chosen on dev, so
    test stays untouched by the choice), with ``each`` every control cell in turn.
    """

    name: str = Field(min_length=1)
    treatment: CellPattern
    control: CellPattern
    control_choice: Literal["best", "each"] = "best"


# The contrast the study exists for (computed in every report): each pretrained transformer,
# with its own tokenizer, against the best convolutional model from scratch on the same task.
HEADLINE_CONTRAST = Contrast(
    name="pretrained transformer vs best convolutional model from scratch",
    treatment=CellPattern(family="transformer", pretrained=True),
    control=CellPattern(family="convolutional", pretrained=False),
)


class StudySpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    data: DataSpec
    axes: AxesSpec
    budget: BudgetSpec
    seed: int = 0
    replicates: list[int] = Field(
        default_factory=list,
        description="seeds to re-train each cell's best configuration with, evaluated on test "
        "(the same seeds in every cell, so replicate i is paired); empty: stop after the search",
    )
    prices: dict[str, float] = Field(
        default_factory=dict,
        description="price per device-hour by device name or kind (cpu, gpu), e.g. {A100: 2.5}",
    )
    tracking: TrackingSpec = TrackingSpec()
    resources: ResourcesSpec = ResourcesSpec()
    tokenizers: TokenizerOptions = TokenizerOptions()
    models: dict[str, ModelChoice] = Field(default_factory=dict)
    pretrain_specs: dict[str, PretrainRecipe] = Field(default_factory=dict)
    external_checkpoints: dict[str, ExternalCheckpoint] = Field(default_factory=dict)
    contrasts: list[Contrast] = Field(
        default_factory=list,
        description="further comparisons between cell patterns (the headline contrast, "
        "HEADLINE_CONTRAST, is always reported)",
    )
    search_space_dir: str | None = None
    work_dir: str = ".ablate"
    _tokenizer_choices: dict[str, TokenizerChoice] | None = PrivateAttr(default=None)
    # Set by load_study: the folder relative paths are resolved against (the current one).
    base_dir: str = "."

    @model_validator(mode="after")
    def _architectures_known(self) -> StudySpec:
        clash = sorted(set(self.external_checkpoints) & set(ARCHITECTURES))
        if clash:
            raise ValueError(
                f"external_checkpoints {clash}: a checkpoint needs a name other "
                f"than the built-in architectures {list(ARCHITECTURES)}"
            )
        allowed = (*ARCHITECTURES, *self.external_checkpoints)
        unknown = [a for a in self.axes.architecture if a not in allowed]
        if unknown:
            raise ValueError(
                f"axes.architecture: unknown value(s) {unknown}; allowed: "
                f"{list(ARCHITECTURES)} or a name of external_checkpoints"
            )
        from ablate.models.registry import TOKENIZER_KINDS

        for arch in self.axes.architecture:
            kinds = TOKENIZER_KINDS.get(arch)
            if kinds and not any(t.partition(":")[0] in kinds for t in self.axes.tokenizer):
                raise ValueError(
                    f"axes.architecture: {arch} counts k-mers of single-nucleotide "
                    f"tokens; add {' or '.join(kinds)} to axes.tokenizer (its cells "
                    "use it only)"
                )
        return self

    @model_validator(mode="after")
    def _pretraining_defined(self) -> StudySpec:
        for value in self.axes.pretraining:
            kind, _, name = value.partition(":")
            table = {"mlm": self.pretrain_specs, "external": self.external_checkpoints}.get(kind)
            if table is not None and name not in table:
                key = "pretrain_specs" if kind == "mlm" else "external_checkpoints"
                raise ValueError(
                    f"axes.pretraining {value!r} names no entry of {key} "
                    f"(defined: {sorted(table) or 'none'})"
                )
            if kind == "external":
                if name not in self.axes.architecture:
                    raise ValueError(
                        f"axes.pretraining {value!r}: an external checkpoint is an architecture "
                        f"of its own, compared with its own config at random init; add {name!r} "
                        "to axes.architecture (ablate's transformer is a different model, not "
                        "its from-scratch twin)"
                    )
                if self.external_checkpoints[name].tokenizer not in self.axes.tokenizer:
                    raise ValueError(
                        f"external_checkpoints.{name}.tokenizer "
                        f"{self.external_checkpoints[name].tokenizer!r} must also be on "
                        "axes.tokenizer"
                    )
        for name in self.models:
            if name in self.external_checkpoints:
                raise ValueError(
                    f"models.{name}: an external checkpoint's size is its config; "
                    "it takes no preset or overrides"
                )
            if name not in ARCHITECTURES:
                raise ValueError(
                    f"models: unknown architecture {name!r}; allowed: {list(ARCHITECTURES)}"
                )
        for task in self.budget.max_epochs_by_task:
            if task not in self.data.tasks:
                raise ValueError(
                    f"budget.max_epochs_by_task: {task!r} is not one of data.tasks "
                    f"{self.data.tasks}"
                )
        return self

    def tokenizer_choices(self) -> dict[str, TokenizerChoice]:
        """Each value of the tokenizer axis, parsed once (by ``parse_study``, which reports a
        bad value) and kept: axis value -> ``TokenizerChoice``."""
        if self._tokenizer_choices is None:
            from ablate.tokenization import parse_tokenizer_choice

            self._tokenizer_choices = {
                value: parse_tokenizer_choice(
                    _expand(value), default_k=self.tokenizers.kmer_k, base_dir=Path(self.base_dir)
                )
                for value in self.axes.tokenizer
            }
        return self._tokenizer_choices

    def path(self, value: str) -> Path:
        """Resolve a path from the spec: expand ``${VAR}`` and ``~``; relative to ``base_dir``."""
        return _resolve(value, Path(self.base_dir))

    @property
    def work_path(self) -> Path:
        return self.path(self.work_dir)

    @property
    def search_space_path(self) -> Path:
        """``search_space_dir`` if set, else ``./search_spaces`` if present, else the project's."""
        if self.search_space_dir is not None:
            return self.path(self.search_space_dir)
        local = Path(self.base_dir) / "search_spaces"
        return local if local.is_dir() else DEFAULT_SEARCH_SPACE_DIR


def _check_allowed(values: list[str], allowed: tuple[str, ...]) -> list[str]:
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise ValueError(f"unknown value(s) {unknown}; allowed: {list(allowed)}")
    if len(set(values)) != len(values):
        raise ValueError("a value is listed more than once")
    return values


def _expand(value: str) -> str:
    """``value`` with ``${VAR}`` taken from the environment (an unset one is an error)."""
    expanded = os.path.expandvars(value)
    missing = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", expanded)
    if missing:
        raise AblateError(f"environment variable {missing[0]} in {value!r} is not set")
    return expanded


def _resolve(value: str, base: Path) -> Path:
    path = Path(_expand(value)).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _format_validation_error(source: str, error: ValidationError) -> str:
    lines = [f"{source}: invalid study spec"]
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key; check the spelling (see README: study spec)"
        elif item["type"] == "missing":
            message = "required key is missing"
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)


def parse_study(data: Any, *, source: str = "<spec>", base_dir: Path | None = None) -> StudySpec:
    """Validate an already-parsed YAML document as a study spec."""
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise AblateError(f"{source}: a study spec must be a YAML mapping, got {kind}")
    if "base_dir" in data:
        raise AblateError(f"{source}: base_dir: unknown key; check the spelling")
    data = {**data, "base_dir": str(base_dir or Path.cwd())}
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as exc:
        raise AblateError(_format_validation_error(source, exc)) from None
    # Tokenizer values need the spec's folder for bpe:PATH, so they are checked here.
    try:
        spec.tokenizer_choices()
    except AblateError as exc:
        raise AblateError(f"{source}: axes.tokenizer: {exc}") from None
    return spec


def _read_yaml(path: str | Path, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise AblateError(f"{path}: {what} not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise AblateError(f"{path}: not valid YAML ({exc})") from None


def load_study(path: str | Path) -> StudySpec:
    """Read and validate a study spec file."""
    data = _read_yaml(path, "study spec")
    return parse_study(data, source=str(path), base_dir=Path.cwd())


class PretrainSpec(PretrainRecipe):
    """A stand-alone pretraining run (``ablate pretrain SPEC.yaml``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    architecture: str
    preset: str | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)
    tokenizer: str = "char"
    tokenizers: TokenizerOptions = TokenizerOptions()
    gue_dir: str | None = Field(None, description="GUE root for corpus.gue_tasks")
    tracking: TrackingSpec = TrackingSpec()
    work_dir: str = ".ablate"
    search_space_dir: str | None = None
    base_dir: str = "."

    @field_validator("architecture")
    @classmethod
    def _known_architecture(cls, value: str) -> str:
        _check_allowed([value], ARCHITECTURES)
        return value

    path = StudySpec.path
    work_path = StudySpec.work_path
    search_space_path = StudySpec.search_space_path


def load_pretrain_spec(path: str | Path) -> PretrainSpec:
    """Read and validate a stand-alone pretraining spec file."""
    data = _read_yaml(path, "pretraining spec")
    if not isinstance(data, dict):
        raise AblateError(f"{path}: a pretraining spec must be a YAML mapping")
    if "base_dir" in data:
        raise AblateError(f"{path}: base_dir: unknown key; check the spelling")
    data = {**data, "base_dir": str(Path.cwd())}
    try:
        spec = PretrainSpec.model_validate(data)
    except ValidationError as exc:
        raise AblateError(_format_validation_error(str(path), exc)) from None
    if spec.corpus.gue_tasks is not None and spec.gue_dir is None:
        raise AblateError(f"{path}: corpus.gue_tasks needs gue_dir (the GUE root folder)")
    if spec.corpus.gue_tasks is None and spec.corpus.fasta is None:
        raise AblateError(f"{path}: corpus: give gue_tasks (with gue_dir) or fasta files")
    return spec


@dataclass(frozen=True)
class Cell:
    """One combination of the scientific axes; every cell is searched with the same budget."""

    architecture: str
    pretraining: str
    tokenizer: str
    task: str
    # Which side of question 1 the architecture is on (a ``Family`` value of the tracking
    # schema), and the external checkpoint both arms of an external architecture come from.
    family: str = field(default="", compare=False)
    checkpoint: str = field(default="", compare=False)

    @property
    def name(self) -> str:
        return f"{self.architecture}|{self.pretraining}|{self.tokenizer}|{self.task}"


def expand_cells(spec: StudySpec) -> list[Cell]:
    """The study's cells in a stable order: task, then architecture, pretraining, tokenizer.

    Every cell's ``none`` partner is the same model freshly initialised:

    - an external checkpoint is an architecture of its own; its cells are ``external:<name>``
      (the checkpoint) and ``none`` (its config at random init), with its own tokenizer only;
    - a built-in architecture takes ``none`` and every ``mlm:`` value (pretrained by ablate
      with the cell's own model and tokenizer), never another checkpoint's ``external:``;
    - the k-mer baseline counts k-mers of single nucleotides: ``char`` and ``none`` only.
    """
    cells = []
    for task in spec.data.tasks:
        for arch in spec.axes.architecture:
            for pre in spec.axes.pretraining:
                for tok in spec.axes.tokenizer:
                    if _is_cell(spec, arch, pre, tok):
                        cells.append(
                            Cell(
                                arch,
                                pre,
                                tok,
                                task,
                                family_of(spec, arch),
                                arch if arch in spec.external_checkpoints else "",
                            )
                        )
    return cells


def family_of(spec: StudySpec, architecture: str) -> str:
    """``transformer``, ``convolutional`` or ``baseline`` (the k-mer floor); an external
    checkpoint is a transformer."""
    from ablate.models import registry

    if architecture in registry.BASELINES:
        return "baseline"
    if architecture in registry.CONVOLUTIONAL:
        return "convolutional"
    return "transformer"


def _is_cell(spec: StudySpec, arch: str, pre: str, tok: str) -> bool:
    kind, _, name = pre.partition(":")
    external = spec.external_checkpoints.get(arch)
    if external is not None:
        return tok == external.tokenizer and (kind == "none" or pre == f"external:{arch}")
    if kind == "external":
        return False
    from ablate.models import registry

    if arch not in registry.PRETRAINABLE and kind != "none":
        return False
    allowed = registry.TOKENIZER_KINDS.get(arch)
    return allowed is None or tok.partition(":")[0] in allowed


# --- search spaces -------------------------------------------------------------------------


class ParamSpec(_Strict):
    """One nuisance hyperparameter: a float/int range (optionally log) or a categorical."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ParamSpec:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty 'choices' list")
        else:
            if self.low is None or self.high is None or self.low > self.high:
                raise ValueError("a float/int parameter needs 'low' <= 'high'")
            if self.log and self.low <= 0:
                raise ValueError("a log-scaled parameter needs 'low' > 0")
        return self


# The training hyperparameters a search space may search (see ``ablate.training``):
# ``batch_size`` is the global batch (reached by gradient accumulation where a micro-batch limit
# applies), ``schedule`` is "linear" or "cosine" decay after warm-up, and warm-up is given as
# ``warmup_steps`` (optimizer steps; wins if both are searched) or ``warmup_ratio``.
TRAINING_PARAMS = (
    "learning_rate",
    "weight_decay",
    "dropout",
    "warmup_ratio",
    "warmup_steps",
    "batch_size",
    "schedule",
)


class SearchSpace(_Strict):
    """``search_spaces/<architecture>.yaml``: the model preset, the nuisance ranges and any
    searched model hyperparameters (``model_params``: config fields of the architecture, such
    as the k-mer model's ``k``, passed to the model as overrides)."""

    architecture: str
    preset: str
    params: dict[str, ParamSpec]
    model_params: dict[str, ParamSpec] = Field(default_factory=dict)

    @field_validator("params")
    @classmethod
    def _known_params(cls, params: dict[str, ParamSpec]) -> dict[str, ParamSpec]:
        unknown = [p for p in params if p not in TRAINING_PARAMS]
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown}; allowed: {list(TRAINING_PARAMS)}")
        return params

    @model_validator(mode="after")
    def _names_apart(self) -> SearchSpace:
        both = sorted(set(self.params) & set(self.model_params))
        if both:
            raise ValueError(f"{both} listed under both params and model_params")
        return self


def load_search_space(
    directory: Path, architecture: str, file_name: str | None = None
) -> SearchSpace:
    """``<directory>/<file_name or architecture>.yaml``, checked to be ``architecture``'s (an
    external checkpoint's cells use another architecture's file, ``file_name``)."""
    path = Path(directory) / f"{file_name or architecture}.yaml"
    if not path.is_file():
        raise AblateError(
            f"{path}: search space for architecture {architecture!r} not found; "
            "set search_space_dir in the study spec or add the file"
        )
    try:
        data = yaml.safe_load(path.read_text())
        space = SearchSpace.model_validate(data)
    except yaml.YAMLError as exc:
        raise AblateError(f"{path}: not valid YAML ({exc})") from None
    except ValidationError as exc:
        raise AblateError(_format_validation_error(str(path), exc)) from None
    if file_name is not None:
        return space
    if space.architecture != architecture:
        raise AblateError(
            f"{path}: architecture is {space.architecture!r}, expected {architecture!r}"
        )
    return space
