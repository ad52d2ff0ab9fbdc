"""Run a study as one Ray Tune experiment: one Optuna study per cell, ASHA per cell.

Ray Tune's ``OptunaSearch`` cannot take grid axes and nested Tune runs are unsupported, so the
whole study is one Tuner whose searcher (``CellSearcher``) keeps one seeded Optuna study per cell
and hands out trials so that cells stay level, and whose scheduler (``CellScheduler``) runs one
ASHA instance per cell, so early stopping only ever compares trials of the same cell. One
experiment then fills the cluster and keeps every cell's budget exactly equal.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablate.errors import AblateError
from ablate.search import (
    METRIC,
    TRIALS_SEEN,
    CellScheduler,
    CellSearcher,
    FixedConfigs,
    TrialProgress,
)
from ablate.spec import Cell, SearchSpace, StudySpec, expand_cells
from ablate.training import ran_to_end


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


def resolve_gue_dir(spec: StudySpec, gue_dir: str | None = None) -> Path:
    """The GUE root a study reads: the given one, the spec's, or synthetic data it generates."""
    from ablate.data.synthetic import write_synthetic_gue

    if gue_dir is not None:
        return Path(gue_dir).expanduser().resolve()
    if spec.data.gue_dir is not None:
        return spec.path(spec.data.gue_dir)
    syn = spec.data.synthetic
    out = spec.work_path / "synthetic" / f"scale{syn.scale:g}-seed{syn.seed}"
    return write_synthetic_gue(out, scale=syn.scale, seed=syn.seed, tasks=spec.data.tasks)


def prepare_inputs(
    spec: StudySpec, gue_root: Path, progress: Callable[[str], None] = print
) -> dict[tuple[str, str], dict]:
    """Tokenize and shard every (task, tokenizer) pair of the study, before Ray starts."""
    from ablate.data.gue import split_path
    from ablate.shards import prepare_task_inputs, resolve_tokenizer

    if not gue_root.is_dir():
        raise AblateError(f"{gue_root}: GUE folder not found (data.gue_dir or --gue-dir)")
    required_splits = ("train", "dev", "test") if spec.replicates else ("train", "dev")
    for task in spec.data.tasks:  # fail on a missing split before any tokenizer is trained
        for required in required_splits:
            if not split_path(gue_root, task, required).is_file():
                raise AblateError(
                    f"{split_path(gue_root, task, required)}: task {task} has no {required} "
                    "split; a study needs train and dev, and test when it has replicates "
                    "(see `ablate data check DIR`)"
                )
    inputs = {}
    for tokenizer_value in spec.axes.tokenizer:
        progress(f"building tokenizer {tokenizer_value}")
        tokenizer, tok_file = resolve_tokenizer(
            tokenizer_value,
            gue_root=gue_root,
            tasks=spec.data.tasks,
            work_dir=spec.work_path,
            kmer_k=spec.tokenizers.kmer_k,
            bpe_vocab_size=spec.tokenizers.bpe_vocab_size,
            base_dir=Path(spec.base_dir),
        )
        for task in spec.data.tasks:
            progress(f"tokenizing {task} with {tokenizer_value}")
            inputs[(task, tokenizer_value)] = prepare_task_inputs(
                gue_root,
                task,
                tokenizer_value,
                tokenizer,
                tok_file,
                work_dir=spec.work_path,
                kmer_k=spec.tokenizers.kmer_k,
                base_dir=Path(spec.base_dir),
                drop_train_duplicates=spec.data.drop_train_duplicates,
            ).as_dict()
    return inputs


def model_max_len(spec: StudySpec, inputs: dict) -> dict[str, int]:
    """Token limit per tokenizer, shared by every cell (and pretraining) that uses it.

    A model built for one tokenizer has the same positions table in every task and in its
    pretraining, so a pretrained encoder always fits the fine-tuning model.
    """
    from ablate.tokenization import parse_tokenizer_choice, token_limit

    limits: dict[str, int] = {}
    for (_, tokenizer), item in inputs.items():
        limits[tokenizer] = max(limits.get(tokenizer, 0), item["token_limit"])
    for recipe in spec.pretrain_specs.values():
        if recipe.corpus.fasta:
            for tokenizer in limits:
                choice = parse_tokenizer_choice(tokenizer, default_k=spec.tokenizers.kmer_k,
                                                base_dir=Path(spec.base_dir))
                limits[tokenizer] = max(limits[tokenizer],
                                        token_limit(choice, recipe.corpus.window_bp))
        elif recipe.corpus.gue_tasks:
            from ablate.data.gue import get_dataset

            bp = max(get_dataset(t).length_bp for t in recipe.corpus.gue_tasks)
            for tokenizer in limits:
                choice = parse_tokenizer_choice(tokenizer, default_k=spec.tokenizers.kmer_k,
                                                base_dir=Path(spec.base_dir))
                limits[tokenizer] = max(limits[tokenizer], token_limit(choice, bp))
    return limits


def trial_templates(
    spec: StudySpec, cells: list[Cell], spaces: dict[str, SearchSpace], inputs: dict
) -> dict[str, dict]:
    templates = {}
    max_len = model_max_len(spec, inputs)
    for cell in cells:
        choice = spec.models.get(cell.architecture)
        preset = (choice.preset if choice and choice.preset else None) or spaces[
            cell.architecture
        ].preset
        templates[cell.name] = {
            "inputs": inputs[(cell.task, cell.tokenizer)],
            "model": {
                "architecture": cell.architecture,
                "preset": preset,
                "overrides": dict(choice.overrides) if choice else {},
                "max_len": max_len[cell.tokenizer],
            },
            "pretrained": None,
            "resources": {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu},
            "prices": dict(spec.prices),
        }
    return templates


def pretrain_for_study(
    spec: StudySpec,
    cells: list[Cell],
    templates: dict[str, dict],
    gue_root: Path,
    tracking_uri: str,
    storage: str | None,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or reuse) every pretraining the study's ``mlm:<name>`` cells need, once each.

    Sets ``templates[cell]["pretrained"]`` to the pretraining run's id and key, and returns
    pretraining key -> object ref of the model folder's files, so trials on any node can load
    the encoder without a shared file system.
    """
    import ray

    from ablate.pretrain import PretrainJob, run_pretraining

    jobs: dict[str, PretrainJob] = {}
    job_of_cell: dict[str, str] = {}
    for cell in cells:
        kind, _, name = cell.pretraining.partition(":")
        if kind != "mlm":
            continue
        recipe = spec.pretrain_specs[name]
        if recipe.corpus.gue_tasks is None and recipe.corpus.fasta is None:
            recipe = recipe.model_copy(
                update={"corpus": recipe.corpus.model_copy(update={"gue_tasks": spec.data.tasks})}
            )
        if recipe.corpus.fasta:
            fasta = [str(spec.path(p)) for p in recipe.corpus.fasta]
            recipe = recipe.model_copy(
                update={"corpus": recipe.corpus.model_copy(update={"fasta": fasta})}
            )
        template = templates[cell.name]
        job = PretrainJob(
            name=name,
            recipe=recipe,
            architecture=cell.architecture,
            preset=template["model"]["preset"],
            overrides=template["model"]["overrides"],
            tokenizer_value=cell.tokenizer,
            tokenizer_path=template["inputs"]["tokenizer_path"],
            gue_dir=str(gue_root),
            token_limit=template["model"]["max_len"],
        )
        key = job.key
        jobs.setdefault(key, job)
        job_of_cell[cell.name] = key

    weights: dict[str, Any] = {}
    external_runs: dict[str, str] = {}
    for cell in cells:
        kind, _, name = cell.pretraining.partition(":")
        if kind == "external":
            from ablate.pretrain import register_external

            external = spec.external_checkpoints[name]
            folder = spec.path(external.path)
            if name not in external_runs:
                result = register_external(
                    name, folder, device_hours=external.device_hours,
                    tracking_uri=tracking_uri, extra_tags={"ablate.study": spec.name},
                )
                files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
                weights[name] = ray.put(files)
                progress(f"external checkpoint {name}: run {result.run_id}")
                external_runs[name] = result.run_id
            templates[cell.name]["pretrained"] = {"run_id": external_runs[name], "key": name}
            templates[cell.name]["model"]["external"] = {
                "trust_remote_code": external.trust_remote_code
            }
    for key, job in jobs.items():
        result = run_pretraining(
            job, tracking_uri=tracking_uri, work_dir=spec.work_path, storage=storage,
            progress=progress, extra_tags={"ablate.study": spec.name},
        )
        files = {p.name: p.read_bytes() for p in Path(result.model_dir).iterdir() if p.is_file()}
        weights[key] = ray.put(files)
        for cell_name, cell_key in job_of_cell.items():
            if cell_key == key:
                templates[cell_name]["pretrained"] = {"run_id": result.run_id, "key": key}
    return weights


def share_splits(
    inputs: dict, progress: Callable[[str], None] = print, with_test: bool = False
) -> dict[str, Any]:
    """Read every train/dev (and test) shard set once through Ray Data; share each.

    Returns shard-set folder -> object ref; a trial fetches only the splits of its own cell.
    """
    import ray

    from ablate.shards import read_shard_sets
    from ablate.tokenization import PAD_ID

    names = ("train", "dev", "test") if with_test else ("train", "dev")
    folders = sorted({item["splits"][s] for item in inputs.values() for s in names
                      if s in item["splits"]})
    progress(f"reading {len(folders)} shard sets through Ray Data")
    arrays = read_shard_sets(folders, PAD_ID)
    return {folder: ray.put(value) for folder, value in arrays.items()}


def init_ray(address: str | None, spec: StudySpec) -> None:
    """Connect to a cluster, or start local Ray with one CPU more than the trials reserve.

    Ray Data's read tasks run outside the trials' reservations: if trials held every CPU, reads
    would wait forever. Locally we therefore advertise at least one spare CPU.
    """
    needed = math.ceil(spec.budget.concurrent_trials * spec.resources.cpu) + 1
    for recipe in spec.pretrain_specs.values():
        needed = max(needed, math.ceil(recipe.workers * recipe.cpus_per_worker) + 1)
    start_local_ray(address, cpus=needed)


def start_local_ray(address: str | None, cpus: int) -> None:
    """Connect to ``address`` (or ``RAY_ADDRESS``, set inside `ray job submit`), or start local
    Ray advertising at least ``cpus`` CPUs."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level="WARNING")
        return
    ray.init(
        # "local" always starts a fresh local Ray, even if an earlier `ray start` on this
        # machine left its address behind (ray.init would otherwise try to join that).
        address="local",
        num_cpus=max(os.cpu_count() or 1, cpus),
        logging_level="WARNING",
        include_dashboard=False,
    )


def run_study(
    spec: StudySpec,
    *,
    address: str | None = None,
    tracking_uri: str | None = None,
    storage: str | None = None,
    gue_dir: str | None = None,
    resume: bool = False,
    progress: Callable[[str], None] = print,
) -> StudyRun:
    """Run every cell of a study as one Ray Tune experiment, tracked in MLflow.

    With ``resume``, continue the study's latest sweep where it stopped (a killed driver, say):
    Ray Tune restores its experiment and the searcher's Optuna studies, finished trials are not
    re-run, unfinished ones continue from their last checkpoint, and MLflow runs are found again
    by trial id instead of being created twice.
    """
    from mlflow import MlflowClient
    from ray import tune

    from ablate.spec import expand_cells, load_search_space
    from ablate.tracking import MLflowTrialLogger, get_or_create_experiment, open_cell_runs
    from ablate.training import train_trial

    cells = expand_cells(spec)
    spaces = {
        arch: load_search_space(spec.search_space_path, arch) for arch in spec.axes.architecture
    }
    gue_root = resolve_gue_dir(spec, gue_dir)
    inputs = prepare_inputs(spec, gue_root, progress)
    templates = trial_templates(spec, cells, spaces, inputs)

    tracking_uri = tracking_uri or spec.tracking.uri
    # MLflow's HTTP client retries for minutes on its own; keep its share short so the
    # study's own back-off (tracking.retry_seconds) decides when to give up.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    client = MlflowClient(tracking_uri)
    experiment_id = get_or_create_experiment(client, spec.name)
    if resume:
        from ablate.analysis import latest_sweep

        sweep = latest_sweep(tracking_uri, spec.name)[1]
        progress(f"resuming sweep {sweep}")
    else:
        sweep = f"{spec.name}-{uuid.uuid4().hex[:8]}"
    data_tag = (
        f"gue:{gue_root}"
        if gue_dir is not None or spec.data.synthetic is None
        else f"synthetic:scale={spec.data.synthetic.scale:g},seed={spec.data.synthetic.seed}"
    )
    extra_tags = {"ablate.data": data_tag}
    cell_runs = open_cell_runs(client, experiment_id, spec.name, sweep, cells, extra_tags)
    logger = MLflowTrialLogger(
        tracking_uri,
        experiment_id,
        spec.name,
        sweep,
        {c.name: c for c in cells},
        cell_runs,
        spec.budget.max_epochs,
        extra_tags,
        spool_path=str(spec.work_path / "tracking_spool" / f"{sweep}.jsonl"),
        retry_seconds=spec.tracking.retry_seconds,
    )
    if resume:
        logger.load_spool()  # records a stopped driver could not send go first

    searcher = CellSearcher(
        cells,
        spaces,
        templates,
        trials_per_cell=spec.budget.trials_per_cell,
        max_epochs=spec.budget.max_epochs,
        max_concurrent=spec.budget.concurrent_trials,
        seed=spec.seed,
        startup_trials=spec.budget.startup_trials,
        patience=spec.budget.patience,
    )
    scheduler = CellScheduler(
        [c.name for c in cells],
        max_t=spec.budget.max_epochs,
        grace_period=spec.budget.grace_epochs,
        rf=spec.budget.reduction_factor,
    )
    storage_path = storage or str(spec.work_path / "ray_results")
    if "://" not in storage_path:
        storage_path = str(Path(storage_path).resolve())

    # Trials checkpoint every epoch; with short epochs Tune warns about snapshot frequency.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Save the experiment state every second (default 10 s), so a killed driver loses little.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    TRIALS_SEEN.clear()
    init_ray(address, spec)
    weights = pretrain_for_study(
        spec, cells, templates, gue_root, tracking_uri, storage, progress
    )
    for cell in cells:
        pretrained = templates[cell.name]["pretrained"]
        if pretrained:
            client.set_tag(cell_runs[cell.name], "ablate.pretrain_run_id", pretrained["run_id"])
    data_refs = share_splits(inputs, progress, with_test=bool(spec.replicates))
    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    trainable = tune.with_parameters(train_trial, data=data_refs, weights=weights)
    experiment_path = f"{storage_path.rstrip('/')}/{sweep}"
    if resume:
        if not tune.Tuner.can_restore(experiment_path):
            raise AblateError(
                f"nothing to resume: no Ray Tune experiment at {experiment_path} (was the study "
                "started with another --storage?)"
            )
        tuner = tune.Tuner.restore(
            experiment_path, trainable=tune.with_resources(trainable, resources),
            resume_unfinished=True, resume_errored=False, restart_errored=False,
        )
    else:
        tuner = tune.Tuner(
            tune.with_resources(trainable, resources),
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=-1,
                # A trial's successor starts in the same worker process: measured in
                # bench/scheduling_overhead.py, a fresh actor per trial costs ~2.6 s of hand-off
                # against ~20 ms reused.
                reuse_actors=True,
                trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
            ),
            run_config=tune.RunConfig(
                name=sweep,
                storage_path=storage_path,
                callbacks=[logger, TrialProgress(len(cells) * spec.budget.trials_per_cell,
                                                 spec.budget.max_epochs, progress)],
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                failure_config=tune.FailureConfig(max_failures=spec.budget.max_failures),
                verbose=0,
            ),
        )
    status = "FAILED"
    try:
        results = _fit(tuner)
        replicated = 0
        if spec.replicates:
            configs = replicate_configs(spec, results, progress)
            replicated = len(configs)
            progress(f"re-training the best configuration of each cell with seeds "
                     f"{spec.replicates}: {replicated} runs, evaluated once on test")
            replicate_path = f"{experiment_path}-replicates"
            if resume and tune.Tuner.can_restore(replicate_path):
                replicate_tuner = tune.Tuner.restore(
                    replicate_path, trainable=tune.with_resources(trainable, resources),
                    resume_unfinished=True,
                )
            else:
                replicate_tuner = tune.Tuner(
                    tune.with_resources(trainable, resources),
                    tune_config=tune.TuneConfig(
                        search_alg=FixedConfigs(configs),
                        num_samples=-1,
                        max_concurrent_trials=spec.budget.concurrent_trials,
                        reuse_actors=True,
                        trial_dirname_creator=lambda trial: f"replicate_{trial.trial_id}",
                    ),
                    run_config=tune.RunConfig(
                        name=f"{sweep}-replicates",
                        storage_path=storage_path,
                        callbacks=[logger, TrialProgress(replicated, spec.budget.max_epochs,
                                                         progress)],
                        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                        failure_config=tune.FailureConfig(
                            max_failures=spec.budget.max_failures
                        ),
                        verbose=0,
                    ),
                )
            _fit(replicate_tuner)
        lost = logger.close_lost_runs()
        if lost:
            progress(f"closed {lost} run(s) of trials lost when the earlier driver stopped "
                     "(their slots were run again)")
        status = "FINISHED"
    finally:
        logger.close_cells(status)
    return StudyRun(
        experiment_id=experiment_id,
        sweep=sweep,
        tracking_uri=tracking_uri,
        storage_path=storage_path,
        num_trials=len(results),
        num_errors=results.num_errors,
        num_replicates=replicated,
    )


def _fit(tuner: Any) -> Any:
    """``tuner.fit()``, surfacing a tracking outage as itself (Tune wraps callback errors)."""
    from ablate.tracking import TrackingUnavailable

    try:
        return tuner.fit()
    except Exception as exc:
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, TrackingUnavailable):
                raise cause from None
            cause = cause.__cause__ or cause.__context__
        raise


def replicate_configs(spec: StudySpec, results: Any, progress: Callable[[str], None]) -> list:
    """Each cell's best completed trial (on dev) re-run once per replicate seed, on test.

    Replicate i uses seed ``spec.replicates[i]`` in every cell, so replicates pair across cells.
    A cell with no completed trial gets no replicates (and the report says so).
    """
    best: dict[str, tuple[float, dict, str]] = {}
    for result in results:
        config, metrics = result.config, result.metrics or {}
        if result.error or not ran_to_end(metrics, spec.budget.max_epochs):
            continue
        score = float(metrics.get(METRIC, float("-inf")))
        if config["cell"] not in best or score > best[config["cell"]][0]:
            best[config["cell"]] = (score, config, metrics.get("trial_id", ""))
    configs = []
    for _cell, (_, config, trial_id) in sorted(best.items()):
        for seed in spec.replicates:
            configs.append({**config, "stage": "replicate", "seed": seed,
                            "evaluate_test": True, "source_trial": trial_id})
    missing = {c.name for c in expand_cells(spec)} - set(best)
    for cell in sorted(missing):
        progress(f"cell {cell} has no completed trial: no replicates")
    return configs
