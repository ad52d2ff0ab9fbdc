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
import pickle
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from ray.tune import Callback
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from ablate.errors import AblateError
from ablate.spec import Cell, ParamSpec, SearchSpace, StudySpec, expand_cells
from ablate.training import ran_to_end

METRIC = "best_dev_mcc"
MODE = "max"


def sample_params(trial: optuna.Trial, params: dict[str, ParamSpec]) -> dict[str, Any]:
    """Draw one value per nuisance hyperparameter from an Optuna trial (define-by-run)."""
    values: dict[str, Any] = {}
    for name, p in params.items():
        if p.type == "float":
            values[name] = trial.suggest_float(name, p.low, p.high, log=p.log)
        elif p.type == "int":
            values[name] = trial.suggest_int(name, int(p.low), int(p.high), log=p.log)
        else:
            values[name] = trial.suggest_categorical(name, p.choices)
    return values


@dataclass
class _Issued:
    cell: str
    trial: optuna.trial.Trial
    last_step: int = 0


class CellSearcher(Searcher):
    """Hands out trials from one Optuna study per cell, keeping every cell's budget equal.

    Each cell's study uses a TPE sampler with the same seed and the same ranges, so cells differ
    only in their scientific axes. ``suggest`` picks the cell with the fewest issued trials, so
    cells advance level; it returns ``None`` while ``max_concurrent`` trials are running and
    ``Searcher.FINISHED`` once every cell has issued its budget and every trial has been told to
    its study. Trials that ASHA stopped early are told to Optuna as PRUNED (with their last
    value as an intermediate value), not as COMPLETE, so truncated scores never mislead TPE.
    Errored trials are told as FAIL and count toward the budget: failures are counted, never
    silently re-rolled.
    """

    def __init__(
        self,
        cells: list[Cell],
        spaces: dict[str, SearchSpace],
        trial_templates: dict[str, dict[str, Any]],
        *,
        trials_per_cell: int,
        max_epochs: int,
        max_concurrent: int,
        seed: int,
        startup_trials: int | None = None,
        patience: int | None = None,
    ) -> None:
        super().__init__(metric=METRIC, mode=MODE)
        self.cell_names = [c.name for c in cells]
        self.cell_arch = {c.name: c.architecture for c in cells}
        self.spaces = spaces
        self.templates = trial_templates
        self.trials_per_cell = trials_per_cell
        self.max_epochs = max_epochs
        self.patience = patience
        self.max_concurrent = max_concurrent
        self.seed = seed
        n_startup = startup_trials or max(1, math.ceil(trials_per_cell / 2))
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.studies = {
            name: optuna.create_study(
                study_name=name,
                direction="maximize",
                sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup),
            )
            for name in self.cell_names
        }
        self.issued = {name: 0 for name in self.cell_names}
        self.live: dict[str, _Issued] = {}

    # --- Tune's interface -------------------------------------------------------------------

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        # Concurrency is counted here; returning True turns Tune's limiter into a pass-through.
        self.max_concurrent = max_concurrent
        return True

    def suggest(self, trial_id: str) -> dict | str | None:
        if len(self.live) >= self.max_concurrent:
            return None
        open_cells = [c for c in self.cell_names if self.issued[c] < self.trials_per_cell]
        if not open_cells:
            return Searcher.FINISHED if not self.live else None
        cell = min(open_cells, key=lambda c: self.issued[c])  # stable: ties keep cell order
        trial = self.studies[cell].ask()
        hparams = sample_params(trial, self.spaces[self.cell_arch[cell]].params)
        self.issued[cell] += 1
        self.live[trial_id] = _Issued(cell, trial)
        return {
            **self.templates[cell],
            "cell": cell,
            "hparams": hparams,
            "optuna_trial": trial.number,
            # Replicate pairing: the n-th trial of every cell trains with the same seed.
            "seed": self.seed * 100_003 + trial.number,
            "max_epochs": self.max_epochs,
            "patience": self.patience,
        }

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        issued = self.live.get(trial_id)
        if issued is not None and self.metric in result:
            self._report(issued, result)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        issued = self.live.pop(trial_id, None)
        if issued is None:
            return
        study = self.studies[issued.cell]
        if error or not result or self.metric not in result:
            study.tell(issued.trial, state=optuna.trial.TrialState.FAIL)
            return
        # The result that made ASHA stop a trial never reached on_trial_result: record it here.
        self._report(issued, result)
        if not ran_to_end(result, self.max_epochs):
            study.tell(issued.trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(issued.trial, float(result[self.metric]))

    @staticmethod
    def _report(issued: _Issued, result: dict) -> None:
        step = int(result.get("training_iteration", 0))
        if step > issued.last_step:
            issued.trial.report(float(result[METRIC]), step=step)
            issued.last_step = step

    # --- state -------------------------------------------------------------------------------

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.__dict__, handle)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as handle:
            self.__dict__.update(pickle.load(handle))


class CellScheduler(FIFOScheduler):
    """One ASHA instance per cell: a trial is only ever compared with trials of its own cell."""

    def __init__(self, cell_names: list[str], *, max_t: int, grace_period: int, rf: float):
        super().__init__()
        self.per_cell = {
            name: AsyncHyperBandScheduler(
                time_attr="training_iteration",
                metric=METRIC,
                mode=MODE,
                max_t=max_t,
                grace_period=grace_period,
                reduction_factor=rf,
            )
            for name in cell_names
        }

    def _for(self, trial: Any) -> AsyncHyperBandScheduler:
        return self.per_cell[trial.config["cell"]]

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        if trial.status in ("TERMINATED", "ERROR"):  # restored, already finished
            return
        self._for(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        scheduler = self._for(trial)
        if trial.trial_id not in scheduler._trial_info:
            return TrialScheduler.CONTINUE
        return scheduler.on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        scheduler = self._for(trial)
        if trial.trial_id in scheduler._trial_info:
            scheduler.on_trial_complete(tune_controller, trial, result)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self.on_trial_remove(tune_controller, trial)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        scheduler = self._for(trial)
        if trial.trial_id in scheduler._trial_info:
            scheduler.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        stopped = sum(s._num_stopped for s in self.per_cell.values())
        return f"ASHA per cell ({len(self.per_cell)} cells): {stopped} trials stopped early"


class TrialProgress(Callback):
    """Prints one line per finished trial: how far the study is, and how the trial did."""

    def __init__(self, total: int, max_epochs: int, print_fn: Callable[[str], None] = print):
        self.total = total
        self.max_epochs = max_epochs
        self.print_fn = print_fn
        self.done = 0

    def _line(self, trial: Any, outcome: str) -> None:
        self.done += 1
        result = trial.last_result or {}
        score = result.get(METRIC)
        score_text = f"{score:.4f}" if isinstance(score, float) else "-"
        self.print_fn(
            f"[{self.done}/{self.total}] {trial.config.get('cell', '?')} "
            f"trial {trial.trial_id}: {outcome} after {result.get('training_iteration', 0)}/"
            f"{self.max_epochs} epochs, {METRIC} {score_text}"
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        done = ran_to_end(trial.last_result or {}, self.max_epochs)
        self._line(trial, "completed" if done else "stopped early")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trial, f"FAILED ({trial.error_file or 'see Ray logs'})")


# --- running a study ------------------------------------------------------------------------


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
    """Connect to ``address``, or start local Ray advertising at least ``cpus`` CPUs."""
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, logging_level="WARNING")
        return
    ray.init(
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
    progress: Callable[[str], None] = print,
) -> StudyRun:
    """Run every cell of a study as one Ray Tune experiment, tracked in MLflow."""
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
    client = MlflowClient(tracking_uri)
    experiment_id = get_or_create_experiment(client, spec.name)
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
    )

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
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=-1,
            trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=sweep,
            storage_path=storage_path,
            callbacks=[logger, TrialProgress(len(cells) * spec.budget.trials_per_cell,
                                             spec.budget.max_epochs, progress)],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=0,
        ),
    )
    status = "FAILED"
    try:
        results = tuner.fit()
        replicated = 0
        if spec.replicates:
            configs = replicate_configs(spec, results, progress)
            replicated = len(configs)
            progress(f"re-training the best configuration of each cell with seeds "
                     f"{spec.replicates}: {replicated} runs, evaluated once on test")
            replicate_tuner = tune.Tuner(
                tune.with_resources(trainable, resources),
                tune_config=tune.TuneConfig(
                    search_alg=FixedConfigs(configs),
                    num_samples=-1,
                    max_concurrent_trials=spec.budget.concurrent_trials,
                    trial_dirname_creator=lambda trial: f"replicate_{trial.trial_id}",
                ),
                run_config=tune.RunConfig(
                    name=f"{sweep}-replicates",
                    storage_path=storage_path,
                    callbacks=[logger, TrialProgress(replicated, spec.budget.max_epochs,
                                                     progress)],
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    verbose=0,
                ),
            )
            replicate_tuner.fit()
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


class FixedConfigs(Searcher):
    """Hands out a fixed list of configurations, in order, then finishes."""

    def __init__(self, configs: list[dict]):
        super().__init__(metric=METRIC, mode=MODE)
        self.configs = list(configs)
        self.issued = 0

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.issued >= len(self.configs):
            return Searcher.FINISHED
        self.issued += 1
        return self.configs[self.issued - 1]

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.__dict__, handle)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as handle:
            self.__dict__.update(pickle.load(handle))


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
