"""Run a study: prepare its data, pretrain what it needs, search every cell, replicate the best.

The whole search is one Ray Tune experiment: Ray Tune's ``OptunaSearch`` cannot take grid axes
and nested Tune runs are unsupported, so one Tuner's searcher (``CellSearcher``) keeps one
seeded Optuna study per cell and hands out trials so that cells stay level, and its scheduler
(``CellScheduler``) runs one ASHA instance per cell, so early stopping only ever compares trials
of the same cell (``ablate.tune_plugins``). One experiment then fills the cluster and keeps every
cell's budget exactly equal. The replicates are a second, small experiment of fixed configs.

``run_study`` is four steps: ``prepare_study`` (tokenize and shard, before Ray starts),
``pretrain_for_study`` (once per pretraining the cells need), the search, and the replicates.
What every trial of a cell shares is a ``CellPlan`` (``ablate.trial``), built once by
``cell_plans`` and handed to the trainable through ``tune.with_parameters``.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune import Callback

from ablate.errors import AblateError
from ablate.shards import TaskInputs
from ablate.spec import Cell, SearchSpace, StudySpec, expand_cells
from ablate.trial import (
    FINISHED,
    CellPlan,
    ModelPlan,
    ModelSource,
    Resources,
    TrialConfig,
    cell_of,
    ran_to_end,
)
from ablate.tune_plugins import (
    METRIC,
    TRIALS_SEEN,
    CellScheduler,
    CellSearcher,
    FixedConfigs,
    TrialProgress,
)


@dataclass
class StudyRun:
    """What ``run_study`` returns: where things landed."""

    experiment_id: str
    sweep: str
    tracking_uri: str
    storage_path: str
    num_trials: int
    num_errors: int
    num_replicates: int = 0
    # the driver's wall seconds per phase, in order (``DriverPhases``)
    phases: dict[str, float] = field(default_factory=dict)
    phases_inside: dict[str, float] = field(default_factory=dict)  # parts of the phases


class DriverPhases:
    """Where the driver's wall time went, phase by phase: ``prepare`` (the spec checked,
    tokenizing and sharding, the sweep opened), ``ray_start``, ``provenance`` (the sweep run's
    records, the live report started), ``pretraining``, ``trial_inputs`` (cell plans, splits
    into the object store), ``search``, ``replicates`` and ``close`` (runs closed, suggestions
    and the final report written). Logged on the sweep run as ``driver_seconds/<phase>``
    (``close`` excepted: it ends that run) and returned in ``StudyRun.phases``.
    ``seconds_inside`` holds figures that are part of those phases, not beside them:
    ``mlflow_writes``, the driver's time writing trials' records to MLflow during the search and
    the replicates (``StudyRun.phases_inside``)."""

    PREFIX = "driver_seconds/"

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.seconds_inside: dict[str, float] = {}
        self.mark = time.perf_counter()

    def end(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self.mark
        self.mark = now

    def log(self, client: Any, run_id: str) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(self.PREFIX + phase, seconds, now, 0)
                   for phase, seconds in {**self.seconds, **self.seconds_inside}.items()]
        try:
            client.log_batch(run_id, metrics=metrics)
        except Exception as exc:  # a figure about the study, never a reason to fail it
            logging.getLogger(__name__).warning("driver phase times not logged: %s", exc)


@dataclass
class PreparedStudy:
    """A study's cells with their search spaces, tokenized inputs and models, before Ray."""

    cells: list[Cell]
    spaces: dict[str, SearchSpace]  # architecture -> its search space
    gue_root: Path
    inputs: dict[tuple[str, str], TaskInputs]  # (task, tokenizer value) -> shard sets
    models: dict[str, ModelPlan]  # cell name -> its model
    data_tag: str  # which data the study read, as the data tag records it
    caveats: dict[str, Any] = field(default_factory=dict)  # task -> CompositionCaveat


def resolve_gue_dir(spec: StudySpec, gue_dir: str | None = None) -> Path:
    """The GUE root a study reads: the given one, the spec's, or synthetic data it generates."""
    from ablate.data.synthetic import write_synthetic_gue

    if gue_dir is not None:
        return Path(gue_dir).expanduser().resolve()
    if spec.data.gue_dir is not None:
        return spec.path(spec.data.gue_dir)
    syn = spec.data.synthetic
    signal = syn.signal()
    name = f"scale{syn.scale:g}-seed{syn.seed}{signal.folder_suffix()}"
    out = spec.work_path / "synthetic" / name
    # The study's tasks and every GUE dataset a pretraining corpus reads.
    tasks = list(spec.data.tasks)
    for recipe in spec.pretrain_specs.values():
        corpus_tasks = recipe.corpus.gue_tasks
        if isinstance(corpus_tasks, list):
            tasks += [t for t in corpus_tasks if t not in tasks]
    return write_synthetic_gue(out, scale=syn.scale, seed=syn.seed, tasks=tasks, signal=signal)


def prepare_inputs(
    spec: StudySpec, gue_root: Path, progress: Callable[[str], None] = print
) -> dict[tuple[str, str], TaskInputs]:
    """Tokenize and shard every (task, tokenizer) pair of the study, before Ray starts."""
    from ablate.data.gue import require_splits
    from ablate.shards import prepare_task_inputs, resolve_tokenizer

    if not gue_root.is_dir():
        raise AblateError(f"{gue_root}: GUE folder not found (data.gue_dir or --gue-dir)")
    required_splits = ("train", "dev", "test") if spec.replicates else ("train", "dev")
    for task in spec.data.tasks:  # fail on a missing split before any tokenizer is trained
        require_splits(gue_root, task, required_splits)
    inputs = {}
    for value, choice in spec.tokenizer_choices().items():
        progress(f"building tokenizer {value}")
        tokenizer, tok_file = resolve_tokenizer(
            choice,
            gue_root=gue_root,
            tasks=spec.data.tasks,
            work_dir=spec.work_path,
            bpe_vocab_size=spec.tokenizers.bpe_vocab_size,
            progress=progress,
        )
        for task in spec.data.tasks:
            progress(f"tokenizing {task} with {value}")
            inputs[(task, value)] = prepare_task_inputs(
                gue_root,
                task,
                choice,
                tokenizer,
                tok_file,
                work_dir=spec.work_path,
                drop_train_duplicates=spec.data.drop_train_duplicates,
            )
    return inputs


def token_limits(spec: StudySpec, inputs: dict[tuple[str, str], TaskInputs]) -> dict[str, int]:
    """Token limit per tokenizer value, shared by every cell (and pretraining) that uses it.

    A model built for one tokenizer has the same positions table in every task and in its
    pretraining, so a pretrained encoder always fits the fine-tuning model.
    """
    from ablate.data.gue import get_dataset
    from ablate.tokenization import token_limit

    limits: dict[str, int] = {}
    for (_, tokenizer), item in inputs.items():
        limits[tokenizer] = max(limits.get(tokenizer, 0), item.token_limit)
    choices = spec.tokenizer_choices()
    for recipe in spec.pretrain_specs.values():
        if recipe.corpus.fasta:
            bp = recipe.corpus.window_bp
        elif recipe.corpus.gue_tasks:
            bp = max(get_dataset(t).length_bp for t in recipe.corpus.gue_tasks)
        else:
            continue
        for tokenizer in limits:
            limits[tokenizer] = max(limits[tokenizer], token_limit(choices[tokenizer], bp))
    return limits


def model_plans(
    spec: StudySpec,
    cells: list[Cell],
    spaces: dict[str, SearchSpace],
    inputs: dict[tuple[str, str], TaskInputs],
) -> dict[str, ModelPlan]:
    """Each cell's model: the spec's preset (else its search space's), overrides, token limit."""
    limits = token_limits(spec, inputs)
    plans = {}
    for cell in cells:
        if cell.checkpoint:  # its size is its config
            plans[cell.name] = ModelPlan(
                architecture=cell.architecture,
                preset="checkpoint",
                token_limit=limits[cell.tokenizer],
            )
            continue
        choice = spec.models.get(cell.architecture)
        preset = (choice.preset if choice and choice.preset else None) or spaces[
            cell.architecture
        ].preset
        plans[cell.name] = ModelPlan(
            architecture=cell.architecture,
            preset=preset,
            overrides=dict(choice.overrides) if choice else {},
            token_limit=limits[cell.tokenizer],
        )
    return plans


def load_spaces(spec: StudySpec) -> dict[str, SearchSpace]:
    """Each architecture's search space (an external checkpoint's: the file it names)."""
    from ablate.spec import load_search_space

    spaces = {}
    for arch in spec.axes.architecture:
        external = spec.external_checkpoints.get(arch)
        spaces[arch] = load_search_space(
            spec.search_space_path, arch, external.search_space if external else None
        )
    return spaces


def prepare_study(
    spec: StudySpec, gue_dir: str | None, progress: Callable[[str], None] = print
) -> PreparedStudy:
    """Cells, search spaces, tokenized shards and models of a study; nothing needs Ray yet."""
    cells = expand_cells(spec)
    spaces = load_spaces(spec)
    gue_root = resolve_gue_dir(spec, gue_dir)
    inputs = prepare_inputs(spec, gue_root, progress)
    data_tag = (
        f"gue:{gue_root}"
        if gue_dir is not None or spec.data.synthetic is None
        else f"synthetic:scale={spec.data.synthetic.scale:g},seed={spec.data.synthetic.seed}"
    )
    models = model_plans(spec, cells, spaces, inputs)
    check_like_for_like(cells, models)
    return PreparedStudy(
        cells,
        spaces,
        gue_root,
        inputs,
        models,
        data_tag,
        task_caveats(gue_root, spec.data.tasks, progress),
    )


def task_caveats(
    gue_root: Path, tasks: list[str], progress: Callable[[str], None] = print
) -> dict[str, Any]:
    """What each task's data lets it measure (composition-matched negatives, say): task ->
    ``CompositionCaveat``, logged on its cells' runs and stated in the report."""
    from ablate.data.caveats import read_composition_caveat

    caveats = {task: read_composition_caveat(gue_root, task) for task in tasks}
    for task, caveat in caveats.items():
        if caveat.statement is not None:
            progress(f"caveat for {task}: {caveat.statement}")
    return caveats


def pretraining_partner(cell: Cell) -> Cell:
    """The cell a pretrained cell is compared with: the same model from scratch."""
    return Cell(cell.architecture, "none", cell.tokenizer, cell.task, cell.family, cell.checkpoint)


def check_like_for_like(cells: list[Cell], models: dict[str, ModelPlan]) -> None:
    """Refuse a study whose pretraining comparisons would not be like for like.

    A pretrained cell and its ``none`` partner must train the same model (architecture, preset,
    overrides, token limit), searched over the same ranges (their architecture's); they differ
    only in where the weights start. Raised before Ray starts, naming the cells.
    """
    names = {cell.name for cell in cells}
    bad = []
    for cell in cells:
        partner = pretraining_partner(cell)
        if cell.pretraining == "none" or partner.name not in names:
            continue
        if models[cell.name] != models[partner.name]:
            bad.append(
                f"{cell.name} ({models[cell.name]}) vs {partner.name} ({models[partner.name]})"
            )
    if bad:
        raise AblateError(
            "these pretraining comparisons would compare different models; a pretrained cell "
            "and its 'none' partner must be the same architecture and size:\n  " + "\n  ".join(bad)
        )


def _study_recipe(spec: StudySpec, name: str, task: str) -> Any:
    """A study's ``pretrain_specs`` entry with its corpus resolved for a cell of ``task``: the
    study's tasks' train splits by default, ``task``'s own with ``gue_tasks: self``, FASTA paths
    made absolute."""
    recipe = spec.pretrain_specs[name]
    corpus_tasks = recipe.corpus.gue_tasks
    if corpus_tasks == "self":
        corpus_tasks = [task]
    elif corpus_tasks is None and recipe.corpus.fasta is None:
        corpus_tasks = list(spec.data.tasks)
    if corpus_tasks is not None:
        recipe = recipe.model_copy(
            update={"corpus": recipe.corpus.model_copy(update={"gue_tasks": corpus_tasks})}
        )
    if recipe.corpus.fasta:
        fasta = [str(spec.path(p)) for p in recipe.corpus.fasta]
        recipe = recipe.model_copy(
            update={"corpus": recipe.corpus.model_copy(update={"fasta": fasta})}
        )
    return recipe


def _model_files(folder: Path) -> Any:
    """A model folder's files in Ray's object store, so trials on any node can load them."""
    import ray

    return ray.put({p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()})


def _external_sources(
    spec: StudySpec,
    cells: list[Cell],
    tracking_uri: str,
    model_files: dict[str, Any],
    progress: Callable[[str], None],
) -> dict[str, ModelSource]:
    """Both arms of each external checkpoint: the checkpoint (registered once with its
    declared cost) and its config at random init. The folder's files are shared once."""
    from ablate.pretrain import register_external
    from ablate.tracking.schema import Tag

    sources: dict[str, ModelSource] = {}
    registered: dict[str, str] = {}
    for cell in cells:
        name = cell.checkpoint
        if not name:
            continue
        external = spec.external_checkpoints[name]
        folder = spec.path(external.path)
        if name not in model_files:
            model_files[name] = _model_files(folder)
        if cell.pretraining == "none":
            sources[cell.name] = ModelSource(
                "external-config", weights_key=name, trust_remote_code=external.trust_remote_code
            )
            continue
        if name not in registered:
            result = register_external(
                name,
                folder,
                device_hours=external.device_hours,
                tracking_uri=tracking_uri,
                device=external.device,
                device_name=external.device_name,
                price_per_hour=external.price_per_hour,
                extra_tags={Tag.STUDY: spec.name},
            )
            progress(f"external checkpoint {name}: run {result.run_id}")
            registered[name] = result.run_id
        sources[cell.name] = ModelSource(
            "external",
            registered[name],
            weights_key=name,
            trust_remote_code=external.trust_remote_code,
        )
    return sources


def pretrain_for_study(
    spec: StudySpec,
    prepared: PreparedStudy,
    tracking_uri: str,
    storage: str | None,
    progress: Callable[[str], None] = print,
) -> tuple[dict[str, ModelSource], dict[str, Any]]:
    """Run (or reuse) every pretraining the study's cells need, once each.

    Returns each pretrained cell's ``ModelSource`` (cell name -> source; cells not listed
    start from scratch) and weights key -> object ref of the model folder's files, so trials on
    any node can load the encoder without a shared file system.
    """
    from ablate.pretrain import PretrainJob, run_pretraining
    from ablate.tracking.schema import Tag

    jobs: dict[str, PretrainJob] = {}
    job_of_cell: dict[str, str] = {}
    for cell in prepared.cells:
        kind, _, name = cell.pretraining.partition(":")
        if kind != "mlm":
            continue
        model = prepared.models[cell.name]
        job = PretrainJob(
            name=name,
            recipe=_study_recipe(spec, name, cell.task),
            architecture=cell.architecture,
            preset=model.preset,
            overrides=dict(model.overrides),
            tokenizer_value=cell.tokenizer,
            tokenizer_path=prepared.inputs[(cell.task, cell.tokenizer)].tokenizer_path,
            gue_dir=str(prepared.gue_root),
            token_limit=model.token_limit,
            held_out_tasks=tuple(spec.data.tasks),
        )
        jobs.setdefault(job.key, job)
        job_of_cell[cell.name] = job.key

    model_files: dict[str, Any] = {}
    sources = _external_sources(spec, prepared.cells, tracking_uri, model_files, progress)

    def pretrain(job: PretrainJob) -> Any:
        return run_pretraining(
            job,
            tracking_uri=tracking_uri,
            work_dir=spec.work_path,
            storage=storage,
            progress=progress,
            extra_tags={Tag.STUDY: spec.name},
            prices=dict(spec.prices),
        )

    for key, result in _run_side_by_side(pretrain, jobs, progress).items():
        model_files[key] = _model_files(Path(result.model_dir))
        for cell_name, cell_key in job_of_cell.items():
            if cell_key == key:
                sources[cell_name] = ModelSource("mlm", result.run_id, weights_key=key)
    return sources, model_files


def _run_side_by_side(
    pretrain: Callable[[Any], Any], jobs: dict[str, Any], progress: Callable[[str], None]
) -> dict[str, Any]:
    """Each job's result (key -> result), running as many pretrainings at once as the
    cluster's CPUs (or GPUs) hold their workers: one pretraining's start-up (its worker group,
    its corpus's first pass) then overlaps another's steps.

    The first failure is raised once the running ones have ended. The threads are daemons and
    the driver waits for them in short joins, so Ctrl-C reaches it at once (Ray's shutdown
    then ends the fits)."""
    import threading

    import ray

    from ablate.pretrain import READ_CPUS

    if not jobs:
        return {}
    total = ray.cluster_resources()

    def fits(job: Any) -> int:
        # Each pretraining holds its workers and, on its first pass, a corpus read task:
        # pretrainings that took every CPU with workers would wait forever on their reads.
        recipe = job.recipe
        cpus = recipe.workers * recipe.cpus_per_worker + READ_CPUS
        held = int(total.get("CPU", 0) // cpus)
        if recipe.use_gpu:
            held = min(held, int(total.get("GPU", 0) // recipe.workers))
        return held

    at_once = max(1, min(len(jobs), *(fits(job) for job in jobs.values())))
    if at_once == 1:
        return {key: pretrain(job) for key, job in jobs.items()}
    progress(f"{len(jobs)} pretrainings, {at_once} at a time")
    slots = threading.Semaphore(at_once)
    results: dict[str, Any] = {}
    errors: list[BaseException] = []

    def run(key: str, job: Any) -> None:
        with slots:
            if errors:
                return
            try:
                results[key] = pretrain(job)
            except BaseException as exc:  # raised again on the driver's thread
                errors.append(exc)

    threads = [threading.Thread(target=run, args=item, name=f"pretrain-{item[0]}", daemon=True)
               for item in jobs.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(timeout=0.5)
    if errors:
        raise errors[0]
    return {key: results[key] for key in jobs}


def cell_plans(
    spec: StudySpec, prepared: PreparedStudy, sources: dict[str, ModelSource]
) -> dict[str, CellPlan]:
    """The one place a cell's fixed trial context is built: cell name -> ``CellPlan``."""
    from ablate.data.gue import get_dataset

    resources = Resources(cpu=spec.resources.cpu, gpu=spec.resources.gpu)
    return {
        cell.name: CellPlan(
            cell=cell,
            inputs=prepared.inputs[(cell.task, cell.tokenizer)],
            model=prepared.models[cell.name],
            source=sources.get(cell.name, ModelSource()),
            resources=resources,
            prices=dict(spec.prices),
            max_epochs=spec.budget.epochs_for(cell.task),
            patience=spec.budget.patience,
            metric=get_dataset(cell.task).metric,
            micro_batch_size=spec.resources.micro_batch_size,
            checkpoint_every=spec.budget.checkpoint_every,
        )
        for cell in prepared.cells
    }


def cell_epochs(spec: StudySpec, cells: list[Cell]) -> dict[str, int]:
    """Each cell's epoch budget (its task's)."""
    return {cell.name: spec.budget.epochs_for(cell.task) for cell in cells}


def share_splits(
    inputs: dict[tuple[str, str], TaskInputs],
    progress: Callable[[str], None] = print,
    with_test: bool = False,
    storage: str | None = None,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    """Read every train/dev (and test) shard set once through Ray Data; share each.

    Returns shard-set folder -> object ref; a trial fetches only the splits of its own cell.
    With a ``storage`` apart from ``work_dir``, the shard sets are read from there, by tasks on
    any node (``ablate.storage``).
    """
    import ray

    from ablate.shards import read_shard_sets
    from ablate.storage import storage_warning

    warning = storage_warning(
        storage, Path(work_dir or "."), sum(1 for node in ray.nodes() if node["Alive"])
    )
    if warning:
        progress(f"warning: {warning}")
    names = ("train", "dev", "test") if with_test else ("train", "dev")
    pad_of = {
        item.splits[s]: item.pad_id for item in inputs.values() for s in names if s in item.splits
    }
    progress(f"reading {len(pad_of)} shard sets through Ray Data")
    shared = {}
    for pad in sorted(set(pad_of.values())):  # padded with each tokenizer's own id
        folders = sorted(f for f, p in pad_of.items() if p == pad)
        shared.update(
            {
                folder: ray.put(value)
                for folder, value in read_shard_sets(
                    folders, pad, storage=storage, work_dir=work_dir
                ).items()
            }
        )
    return shared


def init_ray(address: str | None, spec: StudySpec) -> None:
    """Connect to a cluster, or start local Ray with one CPU more than the trials reserve.

    Ray Data's read tasks run outside the trials' reservations: if trials held every CPU, reads
    would wait forever. Locally we therefore advertise at least one spare CPU.
    """
    from ablate.ray_session import start_ray

    needed = math.ceil(spec.budget.concurrent_trials * spec.resources.cpu) + 1
    for recipe in spec.pretrain_specs.values():
        needed = max(needed, math.ceil(recipe.workers * recipe.cpus_per_worker) + 1)
    start_ray(address, cpus=needed)


@dataclass
class Sweep:
    """One launch of a study in MLflow: its id, its cell runs and its provenance run."""

    client: Any
    experiment_id: str
    sweep: str
    cell_runs: dict[str, str]  # cell name -> run id
    extra_tags: dict[str, str]
    run_id: str | None = None  # its provenance run (Stage.SWEEP)
    resumed: bool = False  # opened by an earlier launch, continued by this one


def _limit_mlflow_http_retries() -> None:
    # MLflow's HTTP client retries for minutes on its own; keep its share short so the
    # study's own back-off (tracking.retry_seconds) decides when to give up.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


def resume_target(
    spec: StudySpec,
    tracking_uri: str,
    sweep_id: str | None = None,
    progress: Callable[[str], None] = print,
    *,
    new_sweep_command: str = "ablate run <spec>",
) -> Any:
    """The sweep ``--resume`` continues (a ``SweepInfo``), checked before anything is
    prepared and before Ray starts: ``sweep_id``, or the study's latest (the newest whose
    search started; newer launches that stopped before their Tuner started are passed over,
    and said so).

    Refused with an ``AblateError``: an unknown id (the message lists the study's sweeps), a
    sweep whose search never started, one written by another tracking schema, and one whose
    spec fingerprint differs from this spec's (``ablate.provenance.check_resume``, naming the
    keys that changed). A sweep opened before fingerprints were recorded is resumed with a
    warning."""
    from ablate.provenance import check_resume, spec_fingerprint
    from ablate.tracking.reader import client_for, resolve_sweep, sweep_records
    from ablate.tracking.schema import SCHEMA_VERSION

    _limit_mlflow_http_retries()
    record = resolve_sweep(tracking_uri, spec.name, sweep_id)
    if not record.search_started:
        raise AblateError(
            f"sweep {record.sweep} never started its search (its launch stopped before its "
            "Tuner started, in preparation or pretraining), so there is nothing to resume. "
            f"Start a new sweep instead: {new_sweep_command} (without --resume; finished "
            "pretrainings are reused, a killed one continues)"
        )
    version = record.schema_version
    if version != SCHEMA_VERSION:
        raise AblateError(
            f"sweep {record.sweep} was written by another version of ablate (tracking schema "
            f"{version}, this one writes {SCHEMA_VERSION}) and cannot be resumed; "
            "`ablate report` still reads it. Start the study again without --resume."
        )
    client = client_for(tracking_uri)
    if sweep_id is None:
        newer = [r.sweep for r in sweep_records(client, record.experiment_id)
                 if r.opened > record.opened]
        if newer:
            progress(
                f"not resuming the newer launch(es) {', '.join(newer)}: they stopped before "
                "their search started (name one with --sweep to see why it cannot resume)"
            )
    check_resume(
        client,
        record,
        spec,
        spec_fingerprint(spec, load_spaces(spec)),
        new_sweep_command=new_sweep_command,
        progress=progress,
    )
    return record


def open_sweep(
    spec: StudySpec,
    prepared: PreparedStudy,
    tracking_uri: str,
    resume: bool,
    progress: Callable[[str], None],
    *,
    target: Any = None,
    sweep_id: str | None = None,
) -> Sweep:
    """A new sweep, or with ``resume`` the one to continue (``target``, from
    ``resume_target``, else found and checked here: ``sweep_id`` or the latest), and its cell
    runs. A new sweep's provenance run is created here, before Ray starts, with its spec
    fingerprint and budget (``ablate.provenance.open_sweep_run``)."""
    from mlflow import MlflowClient

    from ablate.provenance import open_sweep_run, spec_fingerprint
    from ablate.tracking.schema import Tag
    from ablate.tracking.writer import get_or_create_experiment, open_cell_runs

    _limit_mlflow_http_retries()
    client = MlflowClient(tracking_uri)
    experiment_id = get_or_create_experiment(client, spec.name)
    run_id = None
    if resume:
        record = target or resume_target(spec, tracking_uri, sweep_id, progress)
        sweep = record.sweep
        run_id = record.sweep_run.info.run_id if record.sweep_run is not None else None
        progress(f"resuming sweep {sweep}")
    else:
        sweep = f"{spec.name}-{uuid.uuid4().hex[:8]}"
    extra_tags = {Tag.DATA: prepared.data_tag}
    per_cell = {}
    for cell in prepared.cells:
        per_cell[cell.name] = {Tag.SEARCH_SPACE: _ranges_json(prepared.spaces[cell.architecture])}
        caveat = prepared.caveats.get(cell.task)
        if caveat is not None and caveat.statement is not None:
            per_cell[cell.name][Tag.CAVEAT] = caveat.statement
    cell_runs = open_cell_runs(
        client, experiment_id, spec.name, sweep, prepared.cells, extra_tags, per_cell
    )
    _log_caveats(client, prepared, cell_runs)
    if not resume:
        run_id = open_sweep_run(
            client,
            experiment_id,
            spec,
            sweep,
            prepared.data_tag,
            spec_fingerprint(spec, prepared.spaces),
        )
    return Sweep(
        client, experiment_id, sweep, cell_runs, extra_tags, run_id=run_id, resumed=resume
    )


class SearchStarted(Callback):
    """Marks the sweep's provenance run when the search's Tuner starts fitting
    (``Tag.SEARCH_STARTED``): a launch that stopped before (in pretraining, say) has no trial
    to resume or report, and is never taken for the study's latest sweep.

    Tune pickles its callbacks into the experiment state and calls ``setup`` again on a
    restore (the first time is kept); it lives in the package, so a restore runs this code."""

    def __init__(self, tracking_uri: str, run_id: str, retry_seconds: float = 300.0) -> None:
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.retry_seconds = retry_seconds

    def setup(self, **info: Any) -> None:
        from mlflow import MlflowClient

        from ablate.provenance import mark_search_started
        from ablate.tracking.writer import with_retry

        client = MlflowClient(self.tracking_uri)
        with_retry(
            lambda: mark_search_started(client, self.run_id),
            limit_seconds=self.retry_seconds,
            what="marking the search started",
        )


def _log_caveats(client: Any, prepared: PreparedStudy, cell_runs: dict[str, str]) -> None:
    """Each task's caveat figures as metrics of its cells' runs."""
    import time

    from mlflow.entities import Metric

    from ablate.data.caveats import caveat_metrics

    now = int(time.time() * 1000)
    for cell in prepared.cells:
        caveat = prepared.caveats.get(cell.task)
        values = caveat_metrics(caveat) if caveat is not None else {}
        if values:
            client.log_batch(
                cell_runs[cell.name],
                metrics=[Metric(name, float(value), now, 0) for name, value in values.items()],
            )


def _ranges_json(space: SearchSpace) -> str:
    """A cell's search ranges as JSON (the report checks best values against their edges)."""
    import json

    return json.dumps(
        {
            "params": {k: v.model_dump() for k, v in space.params.items()},
            "model_params": {k: v.model_dump() for k, v in space.model_params.items()},
        },
        sort_keys=True,
    )


def _storage_path(spec: StudySpec, storage: str | None) -> str:
    storage_path = storage or str(spec.work_path / "ray_results")
    return storage_path if "://" in storage_path else str(Path(storage_path).resolve())


def _dirname(prefix: str) -> Callable[[Any], str]:
    return lambda trial: f"{prefix}_{trial.trial_id}"


def build_tuner(
    trainable: Any,
    *,
    path: str,
    restore: bool,
    search_alg: Any,
    callbacks: list,
    spec: StudySpec,
    dirname_prefix: str,
    scheduler: Any = None,
    max_concurrent_trials: int | None = None,
) -> Any:
    """The one Tuner builder (search and replicates): a new experiment at ``path``, or the
    saved one restored."""
    from ray import tune

    if restore:
        return tune.Tuner.restore(
            path,
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=False,
        )
    storage_path, name = path.rsplit("/", 1)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=-1,
            max_concurrent_trials=max_concurrent_trials,
            # A trial's successor starts in the same worker process: measured in
            # bench/scheduling_overhead.py, a fresh actor per trial costs ~2.6 s of hand-off
            # against ~20 ms reused.
            reuse_actors=True,
            trial_dirname_creator=_dirname(dirname_prefix),
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            callbacks=callbacks,
            # Two per trial: Tune's saved experiment state may lag the trial's newest
            # checkpoint by one (a driver killed before its snapshot), and the one it names
            # must still exist ("Could not recover from checkpoint ... does not exist").
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            # Retries are for the infrastructure (a lost node, a crash outside the model): a
            # model failure (NaN loss, out of memory) ends its trial normally, never retried.
            failure_config=tune.FailureConfig(max_failures=spec.budget.max_failures),
            verbose=0,
        ),
    )


def _search(
    spec: StudySpec,
    prepared: PreparedStudy,
    trainable: Any,
    path: str,
    resume: bool,
    logger: Any,
    progress: Callable[[str], None],
    stop: Interruption | None = None,
    started: SearchStarted | None = None,
    tracking_uri: str | None = None,
    extra_callbacks: tuple = (),
) -> Any:
    """The search: every cell's trials as one Tune experiment (``started`` marks the sweep
    run as its Tuner starts fitting); each cell's Optuna study is copied for optuna-dashboard
    (``ablate.optuna_mirror``), the copy completed at its end."""
    from ray import tune

    from ablate.optuna_mirror import close_mirrors, search_mirror

    if resume and not tune.Tuner.can_restore(path):
        raise AblateError(
            f"nothing to resume: no Ray Tune experiment at {path} (was the study "
            "started with another --storage?)"
        )
    budget = spec.budget
    epochs = cell_epochs(spec, prepared.cells)
    searcher = CellSearcher(
        prepared.cells,
        prepared.spaces,
        trials_per_cell=budget.trials_per_cell,
        max_epochs=epochs,
        max_concurrent=budget.concurrent_trials,
        seed=spec.seed,
        startup_trials=budget.startup_trials,
        state_key=path,  # the searcher's saved state carries the scheduler's (ASHA's rungs)
        mirror=search_mirror(spec, prepared.cells, path, tracking_uri, progress),
    )
    scheduler = CellScheduler(
        [c.name for c in prepared.cells],
        max_t=epochs,
        grace_period=budget.grace_epochs,
        rf=budget.reduction_factor,
        state_key=path,
    )
    total = len(prepared.cells) * budget.trials_per_cell
    tuner = build_tuner(
        trainable,
        path=path,
        restore=resume,
        search_alg=searcher,
        scheduler=scheduler,
        callbacks=[
            *([started] if started else []),
            *extra_callbacks,
            logger,
            TrialProgress(
                total,
                epochs,
                progress,
                budgets={c.name: budget.trials_per_cell for c in prepared.cells},
            ),
        ],
        spec=spec,
        dirname_prefix="trial",
    )
    try:
        return _fit(tuner, stop)
    finally:
        close_mirrors(path)  # the Optuna copies written, within a bound


def _replicate(
    spec: StudySpec,
    results: Any,
    trainable: Any,
    path: str,
    resume: bool,
    logger: Any,
    progress: Callable[[str], None],
    stop: Interruption | None = None,
    extra_callbacks: tuple = (),
) -> int:
    """Re-train each cell's best configuration once per replicate seed; how many runs."""
    from collections import Counter

    from ray import tune

    from ablate.tracking.schema import MetricName

    if stop is not None:
        stop.check()  # stopped between the two experiments: never start the second
    configs = replicate_configs(spec, results, progress)
    progress(
        f"re-training the best configuration of each cell as replicates "
        f"{spec.replicates} (fresh seeds): {len(configs)} runs, evaluated once on test"
    )
    epochs = cell_epochs(spec, expand_cells(spec))
    tuner = build_tuner(
        trainable,
        path=path,
        restore=resume and tune.Tuner.can_restore(path),
        search_alg=FixedConfigs(configs),
        max_concurrent_trials=spec.budget.concurrent_trials,
        callbacks=[
            *extra_callbacks,
            logger,
            TrialProgress(
                len(configs),
                epochs,
                progress,
                stage="replicates",
                budgets=dict(Counter(cell_of(c) for c in configs)),
                score=MetricName.TEST_SCORE,
                mean=True,
            ),
        ],
        spec=spec,
        dirname_prefix="replicate",
    )
    _fit(tuner, stop)
    return len(configs)


# Up to this many trials a sweep snapshots its experiment state every second.
SNAPSHOT_EVERY_SECOND_UP_TO = 1000
# A period the user set before ablate started; each study otherwise sets its own.
_USER_SNAPSHOT_PERIOD = os.environ.get("TUNE_GLOBAL_CHECKPOINT_S")


def snapshot_period(trials: int) -> str:
    """Tune's experiment-state snapshot period (``TUNE_GLOBAL_CHECKPOINT_S``) for ``trials``.

    Every second while a sweep is small, so a killed driver loses at most a second of trial
    starts and ends. A snapshot writes every trial Tune holds and the searcher's pickle of every
    cell's study, so its cost grows with the sweep (about 0.2 s at 1,000 trials on 2 cores,
    ``bench/README.md``) and at a fixed period the driver's share grows without bound. Past
    ``SNAPSHOT_EVERY_SECOND_UP_TO`` trials Tune's own "auto" period takes over: at least 10 s,
    19 times the last snapshot's time, so snapshots take at most a twentieth of the driver.
    A trial's own checkpoints still force a snapshot either way, so resume stays consistent.
    """
    return "1" if trials <= SNAPSHOT_EVERY_SECOND_UP_TO else "auto"


def set_snapshot_period(trials: int) -> None:
    """Sets the period for the next Tuner over ``trials`` trials, unless the user set one."""
    os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = _USER_SNAPSHOT_PERIOD or snapshot_period(trials)


def run_study(
    spec: StudySpec,
    *,
    address: str | None = None,
    tracking_uri: str | None = None,
    storage: str | None = None,
    gue_dir: str | None = None,
    resume: bool = False,
    progress: Callable[[str], None] = print,
    spec_file: str | Path | None = None,
    resume_command: str | None = None,
    sweep_id: str | None = None,
) -> StudyRun:
    """Run every cell of a study as one Ray Tune experiment, tracked in MLflow.

    With ``resume``, continue the study's latest sweep (or the sweep ``sweep_id``) where it
    stopped (a killed driver, say): Ray Tune restores its experiment and the searcher's Optuna
    studies, finished trials are not re-run, unfinished ones continue from their last
    checkpoint, and MLflow runs are found again by trial id instead of being created twice.
    Before anything is prepared, the sweep is checked (``resume_target``): a spec whose cells,
    budget, search spaces or resources differ from the sweep's is refused, naming the keys.

    The sweep's provenance (``ablate.provenance``: ``spec_file``'s text, search spaces,
    versions, data hashes, hardware and, at its end, every suggested configuration) goes on
    one ``Stage.SWEEP`` run of the study's experiment.

    SIGINT or SIGTERM during the search or the replicates stops the study cleanly (Tune saves
    its state one last time; a second signal skips that): no later stage starts, the cell runs
    and the provenance run end KILLED, and ``StudyInterrupted`` is raised. A tracking outage
    past ``tracking.retry_seconds`` raises ``TrackingUnavailable`` at once, naming the spool
    and ``resume_command`` (default ``ablate run <spec_file> --resume``); nothing more is sent.
    """
    from ray import tune

    from ablate.live_report import LiveReportPoke
    from ablate.provenance import record_sweep_start
    from ablate.tracking.writer import MLflowTrialLogger, TrackingUnavailable, link_pretraining
    from ablate.training import train_trial

    phases = DriverPhases()
    tracking_uri = tracking_uri or spec.tracking.uri
    if sweep_id is not None and not resume:
        raise AblateError(
            f"--sweep {sweep_id} names a sweep to continue: add --resume (a new sweep gets an "
            "id of its own)"
        )
    target = None
    if resume:
        target = resume_target(
            spec,
            tracking_uri,
            sweep_id,
            progress,
            new_sweep_command=f"ablate run {spec_file or '<spec>'}",
        )
    prepared = prepare_study(spec, gue_dir, progress)
    sweep = open_sweep(spec, prepared, tracking_uri, resume, progress, target=target)
    storage_path = _storage_path(spec, storage)
    # Tune snapshots the experiment state after every second checkpoint of a trial
    # (``num_to_keep=2``), so ``budget.checkpoint_every`` sets that rate, and on a period
    # (``snapshot_period``); TUNE_GLOBAL_CHECKPOINT_S overrides the period. A local snapshot
    # is a file copy, and Tune's warning that snapshots come often is noise there; to remote
    # storage each one is an upload, and the warning stays.
    set_snapshot_period(len(prepared.cells) * spec.budget.trials_per_cell)
    from ablate.storage import is_remote

    if not is_remote(storage_path):
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    TRIALS_SEEN.clear()
    phases.end("prepare")
    init_ray(address, spec)
    phases.end("ray_start")
    provenance_run = record_sweep_start(
        spec, prepared, sweep, spec_file=spec_file, progress=progress
    )
    live = _live_report(spec, sweep, provenance_run, tracking_uri, progress)
    pokes = (LiveReportPoke(sweep.sweep),)
    phases.end("provenance")

    sources, model_files = pretrain_for_study(spec, prepared, tracking_uri, storage, progress)
    phases.end("pretraining")
    plans = cell_plans(spec, prepared, sources)
    link_pretraining(sweep.client, sweep.cell_runs, plans)
    logger = MLflowTrialLogger(
        tracking_uri,
        sweep.experiment_id,
        spec.name,
        sweep.sweep,
        plans,
        sweep.cell_runs,
        sweep.extra_tags,
        spool_path=str(spec.work_path / "tracking_spool" / f"{sweep.sweep}.jsonl"),
        retry_seconds=spec.tracking.retry_seconds,
    )
    ended: dict[str, dict] = {}
    if resume:
        logger.load_spool()  # records a stopped driver could not send go first
        ended = ended_trials(sweep)
    split_arrays = share_splits(
        prepared.inputs,
        progress,
        with_test=bool(spec.replicates),
        storage=storage_path,
        work_dir=spec.work_path,
    )
    resources = Resources(cpu=spec.resources.cpu, gpu=spec.resources.gpu).for_tune()
    trainable = tune.with_resources(
        tune.with_parameters(
            train_trial,
            plans=plans,
            split_arrays=split_arrays,
            model_files=model_files,
            ended=ended,
        ),
        resources,
    )
    experiment_path = f"{storage_path.rstrip('/')}/{sweep.sweep}"
    phases.end("trial_inputs")

    command = resume_command or (
        f"ablate run {spec_file or '<spec>'} --resume"
        + (f" --sweep {sweep.sweep}" if sweep_id else "")
    )
    started = SearchStarted(tracking_uri, provenance_run, spec.tracking.retry_seconds)
    status = "FAILED"
    outage = False
    replicated = 0
    with Interruption() as stop:
        try:
            results = _search(
                spec, prepared, trainable, experiment_path, resume, logger, progress, stop,
                started, tracking_uri=tracking_uri, extra_callbacks=pokes,
            )
            phases.end("search")
            if spec.replicates:
                replicated = _replicate(
                    spec,
                    results,
                    trainable,
                    f"{experiment_path}-replicates",
                    resume,
                    logger,
                    progress,
                    stop,
                    extra_callbacks=pokes,
                )
                phases.end("replicates")
            lost = logger.close_lost_runs()
            if lost:
                progress(
                    f"closed {lost} run(s) of trials lost when the earlier driver stopped "
                    "(their slots were run again)"
                )
            phases.seconds_inside["mlflow_writes"] = getattr(logger, "write_seconds", 0.0)
            phases.log(sweep.client, provenance_run)
            status = "FINISHED"
        except StudyInterrupted:
            status = "KILLED"
            raise
        except KeyboardInterrupt:  # a second signal: Tune stopped at once
            if stop.signum is None:
                raise
            status = "KILLED"
            raise StudyInterrupted(stop.signum) from None
        except TrackingUnavailable as exc:
            # MLflow stayed down for retry_seconds already: closing the runs would only wait
            # as long again. They are closed by the resume, which sends the spool first.
            outage = True
            raise exc.with_resume(command) from None
        finally:
            if not outage:
                _close_sweep(logger, sweep, provenance_run, status, spec.seed, progress)
            live.close(final=not outage)  # the final report replaces the live ones
    phases.end("close")
    progress("driver time: " + ", ".join(
        f"{phase.replace('_', ' ')} {seconds:.0f} s" for phase, seconds in phases.seconds.items()))
    return StudyRun(
        experiment_id=sweep.experiment_id,
        sweep=sweep.sweep,
        tracking_uri=tracking_uri,
        storage_path=storage_path,
        num_trials=len(results),
        num_errors=results.num_errors,
        num_replicates=replicated,
        phases=dict(phases.seconds),
        phases_inside=dict(phases.seconds_inside),
    )


def _live_report(
    spec: StudySpec,
    sweep: Sweep,
    sweep_run: str,
    tracking_uri: str,
    progress: Callable[[str], None],
) -> Any:
    """Make the sweep's run the parent of its cell runs (the MLflow UI nests them under it)
    and start the live report that keeps its ``report/`` artifacts current."""
    from ablate.live_report import LiveReport
    from ablate.tracking.schema import Tag

    for run_id in sweep.cell_runs.values():
        sweep.client.set_tag(run_id, Tag.PARENT_RUN, sweep_run)
    interval = spec.tracking.live_report_seconds
    live = LiveReport(
        key=sweep.sweep,
        tracking_uri=tracking_uri,
        study=spec.name,
        sweep=sweep.sweep,
        run_id=sweep_run,
        out_dir=spec.work_path / "live_report" / sweep.sweep,
        report_kwargs={
            "contrasts": list(spec.contrasts),
            "trials_per_cell": spec.budget.trials_per_cell,
            "replicates_per_cell": len(spec.replicates),
            "prices": dict(spec.prices),
        },
        interval=interval if interval > 0 else float("inf"),
        progress=progress,
    )
    when = f"at most every {interval:g} s and " if interval > 0 else ""
    progress(f"live report: refreshed {when}at the end, as artifacts of run {sweep_run}")
    return live.start()


def ended_trials(sweep: Sweep) -> dict[str, dict]:
    """The last result of each trial of ``sweep`` that ended by its own doing, by trial id, as
    the trainable replays it (``train_trial``'s ``ended``): a completed one is ``finished``."""
    from ablate.tracking.reader import ended_trial_results
    from ablate.tracking.schema import Outcome

    return {
        trial_id: {**result, FINISHED: outcome == Outcome.COMPLETED}
        for trial_id, (outcome, result) in ended_trial_results(
            sweep.client, sweep.experiment_id, sweep.sweep
        ).items()
    }


def _close_sweep(
    logger: Any,
    sweep: Sweep,
    provenance_run: str,
    status: str,
    study_seed: int,
    progress: Callable[[str], None],
) -> None:
    """End the cell runs and the provenance run with the sweep's ``status``. After a stopped
    or failed sweep a tracking failure here is only reported, never hiding why it stopped."""
    from ablate.provenance import record_sweep_end
    from ablate.tracking.writer import TrackingUnavailable

    try:
        logger.close_cells(status)
    except TrackingUnavailable as exc:
        if status == "FINISHED":
            raise
        progress(f"cell runs not closed ({getattr(exc, 'reason', exc)})")
        return
    record_sweep_end(sweep, provenance_run, status=status, study_seed=study_seed, progress=progress)


class StudyInterrupted(Exception):  # noqa: N818  (not an error: the user stopped the study)
    """The study was stopped by SIGINT or SIGTERM; its state is saved for ``--resume``."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        self.exit_code = 128 + signum  # as a shell reports a process the signal ended
        super().__init__(f"stopped by {self.signal_name}")


# What Ray Tune logs when it stops on a signal: its own restore hint (`Tuner.restore(...)`,
# which is not how an ablate study continues) and notes the study replaces with its own.
_TUNE_STOP_NOTES = (
    "Stop signal received",
    "Resume experiment with",
    "Resume training with",
    "Trials did not complete",
)


class _QuietTuneStop(logging.Filter):
    def __init__(self, stop: Interruption) -> None:
        super().__init__()
        self.stop = stop

    def filter(self, record: logging.LogRecord) -> bool:
        if self.stop.signum is None:
            return True
        message = record.getMessage()
        return not any(note in message for note in _TUNE_STOP_NOTES)


class Interruption:
    """SIGINT and SIGTERM while a study's Tune experiments run: remembered, then handed to Tune.

    Ray Tune stops ``Tuner.fit`` cleanly on SIGINT (or SIGUSR1) and returns as if the
    experiment had ended, so the study could not tell. Within this context both signals are
    caught here instead (``TUNE_DISABLE_SIGINT_HANDLER``): the first is recorded and passed to
    Tune's stop handler, so Tune saves its state and returns, and ``check`` then raises
    ``StudyInterrupted``. A second signal raises ``KeyboardInterrupt`` at once. Outside the
    main thread nothing is installed.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._env: str | None = None
        self._filter = _QuietTuneStop(self)

    def __enter__(self) -> Interruption:
        import threading

        logging.getLogger("ray.tune.tune").addFilter(self._filter)
        if threading.current_thread() is not threading.main_thread():
            return self
        self._env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        for signum in self.SIGNALS:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        if self._env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = self._env
        logging.getLogger("ray.tune.tune").removeFilter(self._filter)

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            os.write(2, f"\n{name} received again: stopping now\n".encode())
            raise KeyboardInterrupt
        self.signum = signum
        os.write(
            2,
            f"\n{name} received: stopping the study after saving its state "
            f"({name} again stops at once)\n".encode(),
        )
        # Tune's handler (always installed for SIGUSR1 while it runs) sets the flag its loop
        # checks; it then puts this handler back for SIGINT, as it found it.
        tune_stop = signal.getsignal(signal.SIGUSR1)
        if callable(tune_stop):
            tune_stop(signum, frame)

    def check(self) -> None:
        """Raise ``StudyInterrupted`` if a signal arrived."""
        if self.signum is not None:
            raise StudyInterrupted(self.signum)


def _fit(tuner: Any, stop: Interruption | None = None) -> Any:
    """``tuner.fit()``, surfacing a tracking outage as itself (Tune wraps callback errors) and
    a stop by signal as ``StudyInterrupted`` (Tune returns as if it had finished)."""
    from ablate.tracking.writer import TrackingUnavailable

    if stop is not None:
        stop.check()
    try:
        results = tuner.fit()
    except Exception as exc:
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, TrackingUnavailable):
                raise cause from None
            cause = cause.__cause__ or cause.__context__
        raise
    if stop is not None:
        stop.check()
    return results


def replicate_configs(
    spec: StudySpec, results: Any, progress: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Each cell's best completed trial (on dev) re-run once per replicate label, on test.

    Replicate ``label`` trains with ``replicate_seed(spec.seed, label)`` in every cell, so
    replicates pair across cells, and never with a search trial's seed (search seeds are even,
    replicate seeds odd), so no replicate repeats the dev-selected run itself.
    A cell with no completed trial gets no replicates (and the report says so).
    """
    epochs = cell_epochs(spec, expand_cells(spec))
    best: dict[str, tuple[float, TrialConfig, str]] = {}
    for result in results:
        metrics = result.metrics or {}
        cell = cell_of(result.config)
        if result.error or cell not in epochs or not ran_to_end(metrics, epochs[cell]):
            continue
        score = float(metrics.get(METRIC, float("-inf")))
        if cell not in best or score > best[cell][0]:
            best[cell] = (score, TrialConfig.from_tune(result.config), metrics.get("trial_id", ""))
    configs = [
        config.as_replicate(label, spec.seed, trial_id).to_tune()
        for _cell, (_, config, trial_id) in sorted(best.items())
        for label in spec.replicates
    ]
    missing = {c.name for c in expand_cells(spec)} - set(best)
    for cell in sorted(missing):
        progress(f"cell {cell} has no completed trial: no replicates")
    return configs
