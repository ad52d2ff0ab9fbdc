"""Masked-LM pretraining of any architecture, as a costed, tracked, resumable stage.

``run_pretraining`` tokenizes a corpus (GUE train splits, or windows sampled from FASTA files)
into shards, trains the architecture's encoder with a masked-LM head on Ray Train
(``TorchTrainer``: data-parallel workers, 2 CPU workers locally, GPUs on a cluster), streams the
shards through Ray Data, checkpoints every ``checkpoint_every`` steps and resumes from the last
checkpoint when started again with the same spec after a kill. The result is registered in
MLflow (``ablate.tracking.writer.register_pretraining``) as a pretraining run holding the model
folder as an artifact and its full cost: wall seconds, device-hours, FLOPs and tokens seen.

A pretraining run is identified by a key: a hash of everything that determines it (recipe,
architecture, preset, overrides, tokenizer, corpus). A finished run with the same key is reused,
never repeated.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ablate.errors import AblateError
from ablate.spec import PretrainRecipe
from ablate.tracking.schema import MODEL_ARTIFACT, MetricName, Tag


@dataclass(frozen=True)
class PretrainJob:
    """One concrete pretraining run: a recipe applied to one model and one tokenizer."""

    name: str
    recipe: PretrainRecipe
    architecture: str
    preset: str
    overrides: dict
    tokenizer_value: str
    tokenizer_path: str
    gue_dir: str | None
    token_limit: int
    # GUE tasks whose dev and test sequences (and reverse complements) no corpus sequence may
    # equal, contain or lie inside: a study's tasks, or a stand-alone corpus's own tasks.
    held_out_tasks: tuple[str, ...] = ()

    def held_out(self) -> Any:
        """The ``HeldOut`` index of ``held_out_tasks`` (None without any), read once."""
        if not self.held_out_tasks or self.gue_dir is None:
            return None
        from ablate.leakage import held_out_of

        return held_out_of(self.gue_dir, self.held_out_tasks)

    @property
    def key(self) -> str:
        """Content hash of everything that determines the pretrained weights."""
        from ablate.corpus import source_hashes
        from ablate.tokenization import load_tokenizer, tokenizer_hash

        sources = source_hashes(self.recipe.corpus, self.gue_dir)
        held_out = self.held_out()
        payload = {
            "recipe": self.recipe.model_dump(mode="json"),
            "architecture": self.architecture,
            "preset": self.preset,
            "overrides": self.overrides,
            "tokenizer": tokenizer_hash(load_tokenizer(Path(self.tokenizer_path))),
            "sources": sources,
            "token_limit": self.token_limit,
        }
        if held_out is not None:
            payload["held_out"] = held_out.digest
        text = json.dumps(payload, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PretrainResult:
    run_id: str
    key: str
    model_dir: str
    wall_seconds: float
    device_hours: float
    flops: float
    tokens_seen: int
    reused: bool


# --- the Ray Train worker loop ---------------------------------------------------------------


def _batches(shard: Any, batch_size: int, pad_id: int, width: int) -> Iterator[Any]:
    """(ids, mask) tensors of full batches from a worker's shard of the corpus."""
    import torch

    from ablate.shards import split_arrays

    for table in shard.iter_batches(batch_size=batch_size, batch_format="pyarrow",
                                    drop_last=True):
        arrays = split_arrays(table, pad_id, width)
        yield (torch.from_numpy(arrays.input_ids.astype(np.int64)),
               torch.from_numpy(arrays.attention_mask()))


@dataclass(frozen=True)
class WorkerPlan:
    """What every pretraining worker needs, as plain values (no driver paths): the recipe, the
    model, the tokenizer's vocabulary and complement table, and the shards' padded width."""

    recipe: PretrainRecipe
    architecture: str
    preset: str
    overrides: dict
    vocab_size: int
    complement_ids: tuple[int, ...]
    token_limit: int
    width: int
    pad_id: int = 3  # the tokenizer's own special ids
    mask_id: int = 4
    special_ids: tuple[int, ...] = (0, 1, 2, 3, 4)  # never masked


@dataclass
class _Optimisation:
    model: Any  # the model as Ray Train wrapped it (DDP with more than one worker)
    bare: Any  # the model itself, whose state is saved
    optimizer: Any
    scheduler: Any


def _build(plan: WorkerPlan) -> tuple[_Optimisation, int, Any]:
    """The masked-LM model, wrapped for data parallelism, with AdamW and a linear schedule;
    returns it, its parameter count and the device."""
    import ray.train.torch
    import torch
    from transformers import get_linear_schedule_with_warmup

    from ablate.models.registry import build_mlm, count_parameters

    bare = build_mlm(
        plan.architecture, preset=plan.preset, vocab_size=plan.vocab_size,
        max_len=plan.token_limit, pad_id=plan.pad_id, complement_ids=list(plan.complement_ids),
        overrides=plan.overrides or None,
    )
    n_params = count_parameters(bare)
    device = ray.train.torch.get_device()
    model = ray.train.torch.prepare_model(bare)
    recipe = plan.recipe
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate,
                                  weight_decay=recipe.weight_decay)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(recipe.warmup_ratio * recipe.max_steps), recipe.max_steps
    )
    return _Optimisation(model, bare, optimizer, scheduler), n_params, device


def _restore(opt: _Optimisation, device: Any) -> dict:
    """The worker's progress, restored from Ray Train's last checkpoint if there is one."""
    import ray.train
    import torch

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return {"step": 0, "tokens_seen": 0, "flops": 0.0, "wall_seconds": 0.0}
    with checkpoint.as_directory() as folder:
        saved = torch.load(Path(folder) / "trainer_state.pt", map_location=device,
                           weights_only=False)
    opt.bare.load_state_dict(saved["model"])
    opt.optimizer.load_state_dict(saved["optimizer"])
    opt.scheduler.load_state_dict(saved["scheduler"])
    return saved["state"]


def _checkpoint_and_report(opt: _Optimisation, state: dict, metrics: dict, rank: int) -> None:
    """``ray.train.report`` the metrics; rank 0 attaches the trainer state and model folder."""
    import ray.train
    import torch

    from ablate.models.io import save_model

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank == 0:
            torch.save({"model": opt.bare.state_dict(), "optimizer": opt.optimizer.state_dict(),
                        "scheduler": opt.scheduler.state_dict(), "state": state},
                       Path(folder) / "trainer_state.pt")
            save_model(opt.bare, Path(folder) / MODEL_ARTIFACT)
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint)


def pretrain_worker(config: dict) -> None:
    """Ray Train per-worker loop (``config["plan"]``: a ``WorkerPlan``): masked-LM steps,
    checkpoints, metrics, resume.

    A step is the fine-tuning trial's own (``ablate.training.train_step``) with the masked-LM
    loss of ``MaskedLanguageModel`` through the wrapped model's ``forward``; FLOPs are counted
    by the trial's counter on the first batch.
    """
    import logging

    import ray.train
    import torch

    from ablate.models.mlm import mask_tokens
    from ablate.training import count_step_flops, masked_lm_loss, train_step

    for name in ("ray.train", "ray.tune"):  # per-report "checkpoint created" lines are noise
        logging.getLogger(name).setLevel(logging.WARNING)
    plan: WorkerPlan = config["plan"]
    recipe = plan.recipe
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(recipe.seed + rank)
    opt, n_params, device = _build(plan)
    state = _restore(opt, device)
    resumed_from = state["step"]
    generator = torch.Generator().manual_seed(recipe.seed * 7919 + rank + state["step"])
    shard = ray.train.get_dataset_shard("train")
    flops_per_step = None
    last_report = time.perf_counter()
    loss_sum, loss_count = 0.0, 0
    while state["step"] < recipe.max_steps:
        produced = False
        for ids, mask in _batches(shard, recipe.batch_size, plan.pad_id, plan.width):
            produced = True
            masked, labels = mask_tokens(ids, mask, vocab_size=plan.vocab_size,
                                         mask_prob=recipe.mask_prob, generator=generator,
                                         mask_id=plan.mask_id, special_ids=plan.special_ids)
            batch = (masked.to(device), mask.to(device), labels.to(device))
            if flops_per_step is None:  # counted once, on this worker's first batch
                flops_per_step = float(count_step_flops(opt.model, batch, backward=True,
                                                        loss_fn=masked_lm_loss))
            loss = train_step(opt.model, opt.optimizer, batch, device, loss_fn=masked_lm_loss)
            opt.scheduler.step()
            state["step"] += 1
            # Counted over all workers: every worker processes the same batch shape.
            state["tokens_seen"] += int(batch[1].sum().item()) * world
            state["flops"] += flops_per_step * world
            loss_sum += loss.item()
            loss_count += 1
            done = state["step"] >= recipe.max_steps
            if state["step"] % recipe.checkpoint_every == 0 or done:
                now = time.perf_counter()
                state["wall_seconds"] += now - last_report
                last_report = now
                metrics = {"step": state["step"], "mlm_loss": loss_sum / max(loss_count, 1),
                           "tokens_seen": state["tokens_seen"], "flops": state["flops"],
                           "wall_seconds": state["wall_seconds"],
                           "resumed_from_step": resumed_from, "n_params": n_params}
                loss_sum, loss_count = 0.0, 0
                _checkpoint_and_report(opt, state, metrics, rank)
            if done:
                break
        if not produced:
            raise RuntimeError("the pretraining corpus gave this worker no full batch")


# --- the driver side -------------------------------------------------------------------------


def model_dir_of(client: Any, run: Any, work_dir: Path) -> Path:
    """Local copy of a pretraining run's model folder (downloaded once from MLflow)."""
    target = Path(work_dir) / "pretrained" / run.data.tags[Tag.PRETRAIN_KEY]
    if not (target / MODEL_ARTIFACT / "config.json").is_file():
        staging = Path(tempfile.mkdtemp(prefix=".dl-", dir=_ensure(target.parent)))
        client.download_artifacts(run.info.run_id, MODEL_ARTIFACT, str(staging))
        shutil.rmtree(target, ignore_errors=True)
        os.rename(staging, target)
    return target / MODEL_ARTIFACT


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _result_from_run(client: Any, run: Any, work_dir: Path, reused: bool) -> PretrainResult:
    metrics = run.data.metrics
    return PretrainResult(
        run_id=run.info.run_id,
        key=run.data.tags[Tag.PRETRAIN_KEY],
        model_dir=str(model_dir_of(client, run, work_dir)),
        wall_seconds=float(metrics.get(MetricName.WALL_SECONDS, 0.0)),
        device_hours=float(metrics.get(MetricName.DEVICE_HOURS, 0.0)),
        flops=float(metrics.get(MetricName.FLOPS, 0.0)),
        tokens_seen=int(metrics.get(MetricName.TOKENS_SEEN, 0)),
        reused=reused,
    )


def _trainer(job: PretrainJob, manifest: Any, shard_dir: Path, storage_path: str) -> Any:
    """The Ray Train ``TorchTrainer`` of a job, streaming its corpus shards through Ray Data."""
    import ray.data
    import ray.train
    import ray.util
    from ray.train.torch import TorchTrainer

    from ablate.errors import AblateError
    from ablate.tokenization import complement_ids, load_tokenizer, special_ids

    recipe = job.recipe
    tokenizer = load_tokenizer(Path(job.tokenizer_path))  # read here: workers get its values
    ids = special_ids(tokenizer, source=job.tokenizer_path)
    if ids.mask is None:
        raise AblateError(f"{job.tokenizer_path}: the tokenizer has no mask token, which "
                          "masked-LM pretraining needs")
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    # The corpus shards sit on the driver's node: read them there.
    here = {f"node:{ray.util.get_node_ip_address()}": 0.001}
    dataset = ray.data.read_parquet(manifest.paths(shard_dir), num_cpus=0.5, resources=here)
    return TorchTrainer(
        pretrain_worker,
        train_loop_config={"plan": WorkerPlan(
            recipe=recipe, architecture=job.architecture, preset=job.preset,
            overrides=dict(job.overrides), vocab_size=tokenizer.get_vocab_size(),
            complement_ids=tuple(complement_ids(tokenizer)), token_limit=job.token_limit,
            width=manifest.max_tokens, pad_id=ids.pad, mask_id=ids.mask,
            special_ids=tuple(ids.ids),
        )},
        scaling_config=ray.train.ScalingConfig(
            num_workers=recipe.workers,
            use_gpu=recipe.use_gpu,
            resources_per_worker={"CPU": recipe.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            # Same key, same name: starting again after a kill resumes from the last checkpoint.
            name=f"pretrain-{job.key}",
            storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=2),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
        ),
        datasets={"train": dataset},
    )


def _run_record(job: PretrainJob, num_rows: int, metrics: dict,
                elapsed: float) -> tuple[dict, dict]:
    """(params, metrics) of a finished pretraining's MLflow run, with its full cost: the whole
    fit (workers' start-up, data, steps), not only the step time."""
    recipe = job.recipe
    devices = recipe.workers  # one GPU per worker with use_gpu, else one CPU worker each
    wall_seconds = max(elapsed, float(metrics.get("wall_seconds", 0.0)))
    params = {
        **{k: v for k, v in recipe.model_dump(mode="json").items() if k != "corpus"},
        **{f"corpus.{k}": v for k, v in recipe.corpus.model_dump(mode="json").items()},
        "architecture": job.architecture,
        "preset": job.preset,
        "tokenizer": job.tokenizer_value,
        "corpus_sequences": num_rows,
    }
    values = {
        "wall_seconds": wall_seconds,
        "step_seconds": float(metrics.get("wall_seconds", 0.0)),
        "device_hours": wall_seconds / 3600 * devices,
        "flops": float(metrics.get("flops", 0.0)),
        "tokens_seen": float(metrics.get("tokens_seen", 0)),
        "mlm_loss": float(metrics.get("mlm_loss", math.nan)),
        "steps": float(metrics.get("step", 0)),
        "devices": float(devices),
        "resumed_from_step": float(metrics.get("resumed_from_step", 0)),
        "n_params": float(metrics.get("n_params", 0)),
    }
    return params, values


def run_pretraining(
    job: PretrainJob,
    *,
    tracking_uri: str,
    work_dir: Path,
    storage: str | None = None,
    progress: Callable[[str], None] = print,
    extra_tags: dict[str, str] | None = None,
) -> PretrainResult:
    """Pretrain ``job`` on Ray Train (or reuse a finished run with the same key)."""
    from mlflow import MlflowClient

    from ablate.corpus import prepare_corpus
    from ablate.shards import ShardManifest
    from ablate.tracking.reader import find_finished_pretraining
    from ablate.tracking.writer import register_pretraining

    client = MlflowClient(tracking_uri)
    key = job.key
    finished = find_finished_pretraining(client, key)
    if finished is not None:
        progress(f"pretraining {job.name} ({key}) already done: run {finished.info.run_id}")
        return _result_from_run(client, finished, work_dir, reused=True)

    progress(f"pretraining {job.name} ({key}): filtering and tokenizing the corpus")
    corpus = prepare_corpus(job.recipe.corpus, seed=job.recipe.seed, gue_dir=job.gue_dir,
                            tokenizer_path=job.tokenizer_path, key=key, work_dir=work_dir,
                            held_out=job.held_out())
    if corpus.leaks is not None:
        progress(f"pretraining {job.name}: {corpus.leaks.summary()}")
    shard_dir = corpus.path
    manifest = ShardManifest.read(shard_dir)
    storage_path = storage or str(Path(work_dir).resolve() / "ray_results")
    trainer = _trainer(job, manifest, shard_dir, storage_path)
    progress(
        f"pretraining {job.architecture}/{job.preset} with {job.tokenizer_value} on "
        f"{manifest.num_rows} sequences: {job.recipe.max_steps} steps x {job.recipe.workers} "
        "workers"
    )
    started = time.perf_counter()
    result = trainer.fit()
    elapsed = time.perf_counter() - started
    if result.checkpoint is None:
        raise RuntimeError(f"pretraining {job.name} produced no checkpoint: {result.error}")
    params, values = _run_record(job, manifest.num_rows, result.metrics or {}, elapsed)
    if corpus.leaks is not None:
        values.update(corpus.leaks.as_metrics())
    with result.checkpoint.as_directory() as folder:
        run_id = register_pretraining(
            client, key=key, name=job.name, architecture=job.architecture,
            tokenizer=job.tokenizer_value, device_type="gpu" if job.recipe.use_gpu else "cpu",
            params=params, metrics=values, model_folder=Path(folder) / MODEL_ARTIFACT,
            extra_tags=extra_tags,
        )
    progress(
        f"pretraining {job.name} done: run {run_id}, {values['wall_seconds']:.0f} s, "
        f"{values['flops']:.3g} FLOPs, final masked-LM loss {values['mlm_loss']:.3f}"
    )
    return _result_from_run(client, client.get_run(run_id), work_dir, reused=False)


def job_from_spec(spec: Any, progress: Callable[[str], None] = print) -> PretrainJob:
    """The job a stand-alone pretraining spec (``ablate pretrain``) describes."""
    from ablate.data.gue import get_dataset
    from ablate.shards import resolve_tokenizer
    from ablate.spec import load_search_space
    from ablate.tokenization import parse_tokenizer_choice, token_limit

    base = Path(spec.base_dir)
    gue_dir = str(spec.path(spec.gue_dir)) if spec.gue_dir else None
    corpus = spec.corpus
    if corpus.fasta:
        corpus = corpus.model_copy(update={"fasta": [str(spec.path(p)) for p in corpus.fasta]})
    recipe = PretrainRecipe.model_validate(
        {**spec.model_dump(include=set(PretrainRecipe.model_fields)), "corpus": corpus}
    )
    choice = parse_tokenizer_choice(spec.tokenizer, default_k=spec.tokenizers.kmer_k,
                                    base_dir=base)
    if choice.kind == "bpe" and choice.path is None and not corpus.gue_tasks:
        raise AblateError("tokenizer 'bpe' (trained) needs corpus.gue_tasks to train on; "
                          "give bpe:PATH to use an existing tokenizer with a FASTA corpus")
    progress(f"building tokenizer {spec.tokenizer}")
    _, tok_file = resolve_tokenizer(
        choice, gue_root=Path(gue_dir) if gue_dir else base, tasks=corpus.gue_tasks or [],
        work_dir=spec.work_path, bpe_vocab_size=spec.tokenizers.bpe_vocab_size,
    )
    if corpus.fasta:
        bp = corpus.window_bp
    else:
        bp = max(get_dataset(t).length_bp for t in corpus.gue_tasks)
    preset = spec.preset or load_search_space(spec.search_space_path, spec.architecture).preset
    return PretrainJob(
        name=spec.name,
        recipe=recipe,
        architecture=spec.architecture,
        preset=preset,
        overrides=dict(spec.overrides),
        tokenizer_value=spec.tokenizer,
        tokenizer_path=str(tok_file),
        gue_dir=gue_dir,
        token_limit=token_limit(choice, bp),
        # the corpus tasks' own dev and test stay out of it
        held_out_tasks=tuple(corpus.gue_tasks or ()),
    )


def register_external(
    name: str,
    folder: Path,
    *,
    device_hours: float,
    tracking_uri: str,
    extra_tags: dict[str, str] | None = None,
) -> PretrainResult:
    """Record an external checkpoint as a pretraining run with its declared cost (once)."""
    from mlflow import MlflowClient

    from ablate.corpus import file_sha256
    from ablate.tracking import writer
    from ablate.tracking.reader import find_finished_pretraining

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise AblateError(f"{folder}: external checkpoint has no config.json")
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        digest.update(path.name.encode())
        digest.update(file_sha256(path).encode())
    key = f"external-{digest.hexdigest()[:16]}-{device_hours:g}"
    client = MlflowClient(tracking_uri)
    finished = find_finished_pretraining(client, key)
    run_id = finished.info.run_id if finished is not None else writer.register_external(
        client, key=key, name=name, folder=folder, device_hours=device_hours,
        extra_tags=extra_tags)
    return PretrainResult(
        run_id=run_id, key=key, model_dir=str(folder), wall_seconds=0.0,
        device_hours=float(device_hours), flops=0.0, tokens_seen=0, reused=True,
    )
