"""Masked-LM pretraining of any architecture, as a costed, tracked, resumable stage.

``run_pretraining`` tokenizes a corpus (GUE train splits, or windows sampled from FASTA files)
into shards, trains the architecture's encoder with a masked-LM head on Ray Train
(``TorchTrainer``: data-parallel workers, 2 CPU workers locally, GPUs on a cluster), hands the
workers a corpus that fits in memory whole through Ray's object store and streams a larger one's
shards through Ray Data, checkpoints every ``checkpoint_every`` steps and resumes from the last
checkpoint when started again with the same spec after a kill.

Its MLflow run exists from the start (status RUNNING, tagged with its key) and records its cost
as it goes: the workers report their progress several times per checkpoint, and the driver
writes each report's wall time, checkpoint time, FLOPs, device-hours, price, MFU and energy
(all through ``ablate.cost``, as a fine-tuning trial does). A resumed pretraining goes on in the
same run, and the work its kill threw away (the last recorded time less the time the restored
checkpoint had) is charged as ``lost_seconds``, so the run is charged in full. At the end the
run is marked FINISHED and holds the model folder as an artifact.

A pretraining run is identified by a key: a hash of everything that determines it (recipe,
architecture, preset, overrides, tokenizer, corpus). A finished run with the same key is reused,
never repeated.
"""

from __future__ import annotations

import hashlib
import json
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


# Step batches a worker takes from Ray Data at once and cuts itself: Ray Data's cost is per
# batch it hands over, which at a step's batch size was seconds of every pass.
FETCH_STEPS = 32


def _batches(shard: Any, batch_size: int, pad_id: int, width: int) -> Iterator[Any]:
    """(ids, mask) tensors of full batches from a worker's shard of the corpus, in its order:
    rows are fetched ``FETCH_STEPS`` batches at a time and cut into batches of ``batch_size``,
    the rows left over carried into the next fetch; a last partial batch is dropped."""
    import torch

    from ablate.shards import split_arrays

    carried = None
    for table in shard.iter_batches(batch_size=batch_size * FETCH_STEPS, batch_format="pyarrow"):
        arrays = split_arrays(table, pad_id, width)
        ids = torch.from_numpy(arrays.input_ids.astype(np.int64))
        mask = torch.from_numpy(arrays.attention_mask())
        if carried is not None:
            ids, mask = torch.cat([carried[0], ids]), torch.cat([carried[1], mask])
        full = len(ids) - len(ids) % batch_size
        for first in range(0, full, batch_size):
            yield ids[first : first + batch_size], mask[first : first + batch_size]
        carried = (ids[full:], mask[full:]) if full < len(ids) else None


class _MemoryCorpus:
    """A worker's share of a corpus held whole in memory (rows ``rank``, ``rank + world``, ...,
    in the corpus's order); iterating gives one epoch of full batches, the same as streaming
    that share would (a last partial batch dropped)."""

    def __init__(self, arrays: Any, rank: int, world: int, batch_size: int):
        import torch

        self.ids = torch.from_numpy(arrays.input_ids[rank::world].astype(np.int64))
        self.mask = torch.from_numpy(arrays.attention_mask()[rank::world])
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[Any]:
        size = self.batch_size
        for first in range(0, len(self.ids) - len(self.ids) % size, size):
            yield self.ids[first : first + size], self.mask[first : first + size]


def _timed(batches: Iterator[Any], state: dict) -> Iterator[Any]:
    """``batches``, with the time spent waiting for each added to ``state["data_wait_seconds"]``."""
    while True:
        start = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            return
        finally:
            state["data_wait_seconds"] = (
                state.get("data_wait_seconds", 0.0) + time.perf_counter() - start
            )
        yield batch


# CPUs each read task of a pretraining's corpus reserves (beside its workers' own).
READ_CPUS = 0.5

# A corpus whose padded token ids take at most this many MiB is read once by the driver (it
# has just written the shards) and handed to every worker whole through Ray's object store; a
# larger one streams through Ray Data. Measured on 2 CPUs: a worker's first streamed batch of
# a 4,736-row corpus came 10.7 s after it asked, more than the run's optimizer steps, against
# milliseconds from the object store. ``ABLATE_CORPUS_IN_MEMORY_MB`` sets another limit (0:
# always stream).
CORPUS_IN_MEMORY_MB = 256


def corpus_in_memory(manifest: Any) -> bool:
    """Whether a corpus of this manifest goes to the workers whole (see ``CORPUS_IN_MEMORY_MB``)."""
    limit = float(os.environ.get("ABLATE_CORPUS_IN_MEMORY_MB", CORPUS_IN_MEMORY_MB))
    return manifest.num_rows * manifest.max_tokens * 8 <= limit * 2**20

# A worker keeps its share of the corpus in memory after the first pass when it takes at most
# this much (token ids and mask), and replays it: a streamed pass costs seconds of Ray Data
# start-up, more than a small corpus's steps. The batches and their order are the same.
EPOCH_CACHE_BYTES = 512 * 2**20


class _EpochCache:
    """Iterating gives one epoch of batches: streamed from ``stream()`` on the first pass (and
    every pass, once the corpus proved larger than ``limit`` bytes), replayed afterwards."""

    def __init__(self, stream: Callable[[], Iterator[Any]], limit: int = EPOCH_CACHE_BYTES):
        self.stream = stream
        self.limit = limit
        self.batches: list | None = None  # a complete first pass, once one was kept
        self.too_large = False

    def __iter__(self) -> Iterator[Any]:
        if self.batches is not None:
            yield from self.batches
            return
        kept: list | None = None if self.too_large else []
        size = 0
        for batch in self.stream():
            if kept is not None:
                size += sum(t.element_size() * t.nelement() for t in batch)
                if size > self.limit:
                    kept, self.too_large = None, True
                else:
                    kept.append(batch)
            yield batch
        # Only a pass that ran to its end is a whole epoch (a consumer may stop mid-way).
        if kept is not None:
            self.batches = kept


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
    progress: Any = None  # the driver's queue of progress records (a ray.util.queue.Queue)
    corpus: Any = None  # the whole corpus's SplitArrays (an object ref), else it streams


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
        plan.architecture,
        preset=plan.preset,
        vocab_size=plan.vocab_size,
        max_len=plan.token_limit,
        pad_id=plan.pad_id,
        complement_ids=list(plan.complement_ids),
        overrides=plan.overrides or None,
    )
    n_params = count_parameters(bare)
    device = ray.train.torch.get_device()
    model = ray.train.torch.prepare_model(bare)
    recipe = plan.recipe
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay
    )
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
        return {"step": 0, "tokens_seen": 0, "flops": 0.0, "wall_seconds": 0.0,
                "optimizer_seconds": 0.0}
    with checkpoint.as_directory() as folder:
        saved = torch.load(
            Path(folder) / "trainer_state.pt", map_location=device, weights_only=False
        )
    opt.bare.load_state_dict(saved["model"])
    opt.optimizer.load_state_dict(saved["optimizer"])
    opt.scheduler.load_state_dict(saved["scheduler"])
    return saved["state"]


# Rank 0's seconds inside its optimizer steps, cumulative over resumes (a pretraining metric).
OPTIMIZER_SECONDS = "optimizer_seconds"
# Rank 0's seconds waiting for the corpus's next batch (streamed passes; replays are free).
DATA_WAIT_SECONDS = "data_wait_seconds"

# Seconds between a worker's progress records (besides one at every checkpoint), so a kill
# loses at most about that much from the record of what ran. They go to the driver through a
# queue, not through ``ray.train.report``: Ray Train takes one report per worker every couple
# of seconds and holds a worker that reports faster.
PROGRESS_EVERY_SECONDS = 10.0


class _Clock:
    """A worker's time, charged to ``state["wall_seconds"]`` (compute) or
    ``state["checkpoint_seconds"]`` (saving, uploading, restoring) since the last charge."""

    def __init__(self, state: dict) -> None:
        self.state = state
        self.mark = time.perf_counter()

    def charge(self, account: str = "wall") -> None:
        now = time.perf_counter()
        key = f"{account}_seconds"
        self.state[key] = self.state.get(key, 0.0) + now - self.mark
        self.mark = now


def _save_checkpoint(opt: _Optimisation, state: dict, folder: Path) -> Any:
    """Write the trainer state and the model folder into ``folder``; the Ray Train checkpoint."""
    import ray.train
    import torch

    from ablate.models.io import save_model

    torch.save(
        {
            "model": opt.bare.state_dict(),
            "optimizer": opt.optimizer.state_dict(),
            "scheduler": opt.scheduler.state_dict(),
            "state": state,
        },
        folder / "trainer_state.pt",
    )
    save_model(opt.bare, folder / MODEL_ARTIFACT)
    return ray.train.Checkpoint.from_directory(folder)


class _Progress:
    """A worker's progress records: its state, clock, device and energy as a dict, sent to the
    driver's queue (``WorkerPlan.progress``) every ``PROGRESS_EVERY_SECONDS`` and at every
    checkpoint. ``sent`` counts them since the worker started: the first tells the driver a
    worker group started from the restored figures ``resumed``."""

    def __init__(
        self,
        plan: WorkerPlan,
        state: dict,
        resumed: dict,
        hardware: Any,
        energy: Any,
        n_params: int,
        rank: int,
        world: int,
    ) -> None:
        self.queue, self.state, self.resumed = plan.progress, state, resumed
        self.hardware, self.energy, self.n_params = hardware, energy, n_params
        self.rank, self.world = rank, world
        self.energy_before = state["energy_kwh"]
        self.loss_sum, self.loss_count, self.sent = 0.0, 0, 0
        self.last_sent = time.perf_counter()

    def add_loss(self, loss: float) -> None:
        self.loss_sum += loss
        self.loss_count += 1

    def metrics(self) -> dict:
        """The record now (the masked-LM loss is the mean since the last one)."""
        state, hardware, kwh = self.state, self.hardware, self.energy.kwh()
        if kwh is not None:
            state["energy_kwh"] = self.energy_before + kwh
        out = {
            "step": state["step"],
            "mlm_loss": self.loss_sum / max(self.loss_count, 1),
            "tokens_seen": state["tokens_seen"],
            "flops": state["flops"],
            "wall_seconds": state["wall_seconds"],
            "optimizer_seconds": state.get("optimizer_seconds", 0.0),
            "data_wait_seconds": state.get("data_wait_seconds", 0.0),
            "checkpoint_seconds": state["checkpoint_seconds"],
            "resumed_from_step": self.resumed["step"],
            "resumed_wall_seconds": self.resumed["wall_seconds"],
            "resumed_checkpoint_seconds": self.resumed["checkpoint_seconds"],
            "n_params": self.n_params,
            "rank": self.rank,
            "world_size": self.world,
            "device_type": hardware.kind,
            "device_name": hardware.name,
            "device_count": hardware.count,
            "peak_flops": hardware.peak_flops,
            "peak_source": hardware.peak_source,
        }
        if kwh is not None:
            out["energy_kwh"] = state["energy_kwh"]
        self.loss_sum, self.loss_count = 0.0, 0
        return out

    def due(self) -> bool:
        """Whether a record is due (there is a queue and its interval has passed)."""
        return (
            self.queue is not None
            and time.perf_counter() - self.last_sent >= PROGRESS_EVERY_SECONDS
        )

    def send(self, metrics: dict | None = None) -> None:
        """Send a record (``metrics``, or one made now) to the driver."""
        if self.queue is None:
            return
        self.sent += 1
        self.queue.put({**(metrics or self.metrics()), "sent_since_start": self.sent})
        self.last_sent = time.perf_counter()


def _checkpoint(opt: _Optimisation, clock: _Clock, progress: _Progress) -> None:
    """Save (rank 0), record and ``ray.train.report`` a checkpoint; the record is made after the
    save, so it carries it, and the upload inside the report is charged after it returns."""
    import ray.train

    clock.charge("wall")
    with tempfile.TemporaryDirectory() as folder:
        saved = _save_checkpoint(opt, clock.state, Path(folder)) if progress.rank == 0 else None
        clock.charge("checkpoint")
        metrics = progress.metrics()
        progress.send(metrics)
        ray.train.report(metrics, checkpoint=saved)
    clock.charge("checkpoint")


def pretrain_worker(config: dict) -> None:
    """Ray Train per-worker loop (``config["plan"]``: a ``WorkerPlan``): masked-LM steps,
    progress records, checkpoints, metrics, resume.

    A step is the fine-tuning trial's own (``ablate.training.train_step``) with the masked-LM
    loss of ``MaskedLanguageModel`` through the wrapped model's ``forward``; FLOPs are counted
    by the trial's counter on the first batch. The worker's time from its start (building the
    model, restoring, streaming, stepping, checkpointing) is in ``wall_seconds`` and
    ``checkpoint_seconds``, cumulative over resumes; every record also names its device
    (``ablate.cost.current_device``) and the energy NVML measured. ``optimizer_seconds`` is the
    part of it spent in the steps themselves (masking, the step, the schedule), the study's
    useful work, and ``data_wait_seconds`` the part spent waiting for the corpus's batches.
    """
    import logging

    import ray
    import ray.train
    import torch

    from ablate.cost import EnergyMeter, current_device
    from ablate.models.mlm import mask_tokens
    from ablate.training import count_step_flops, masked_lm_loss, train_step

    for name in ("ray.train", "ray.tune"):  # per-report "checkpoint created" lines are noise
        logging.getLogger(name).setLevel(logging.WARNING)
    plan: WorkerPlan = config["plan"]
    recipe = plan.recipe
    started = time.perf_counter()
    energy = EnergyMeter()
    energy.start()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(recipe.seed + rank)
    opt, n_params, device = _build(plan)
    hardware = current_device(1.0 if recipe.use_gpu else 0.0, recipe.cpus_per_worker)
    restore_start = time.perf_counter()
    state = {"checkpoint_seconds": 0.0, "energy_kwh": 0.0, **_restore(opt, device)}
    # What the restored checkpoint had charged: the driver charges what ran after it as lost.
    resumed = {
        "step": state["step"],
        "wall_seconds": state["wall_seconds"],
        "checkpoint_seconds": state["checkpoint_seconds"],
    }
    state["wall_seconds"] += restore_start - started
    state["checkpoint_seconds"] += time.perf_counter() - restore_start
    clock = _Clock(state)
    progress = _Progress(plan, state, resumed, hardware, energy, n_params, rank, world)
    generator = torch.Generator().manual_seed(recipe.seed * 7919 + rank + state["step"])
    flops_per_step = None
    if plan.corpus is not None:  # the whole corpus, from the object store
        fetch_start = time.perf_counter()
        epochs = _MemoryCorpus(ray.get(plan.corpus), rank, world, recipe.batch_size)
        state["data_wait_seconds"] = (
            state.get("data_wait_seconds", 0.0) + time.perf_counter() - fetch_start
        )
    else:
        shard = ray.train.get_dataset_shard("train")
        epochs = _EpochCache(
            lambda: _timed(_batches(shard, recipe.batch_size, plan.pad_id, plan.width), state))
    while state["step"] < recipe.max_steps:
        produced = False
        for ids, mask in epochs:
            produced = True
            step_start = time.perf_counter()
            masked, labels = mask_tokens(
                ids,
                mask,
                vocab_size=plan.vocab_size,
                mask_prob=recipe.mask_prob,
                generator=generator,
                mask_id=plan.mask_id,
                special_ids=plan.special_ids,
            )
            batch = (masked.to(device), mask.to(device), labels.to(device))
            if flops_per_step is None:  # counted once, on this worker's first batch
                flops_per_step = float(
                    count_step_flops(opt.model, batch, backward=True, loss_fn=masked_lm_loss)
                )
                step_start = time.perf_counter()  # the count above is set-up, not a step
            loss = train_step(opt.model, opt.optimizer, batch, device, loss_fn=masked_lm_loss)
            opt.scheduler.step()
            state["step"] += 1
            # Counted over all workers: every worker processes the same batch shape.
            state["tokens_seen"] += int(batch[1].sum().item()) * world
            state["flops"] += flops_per_step * world
            progress.add_loss(loss.item())
            state["optimizer_seconds"] = (
                state.get("optimizer_seconds", 0.0) + time.perf_counter() - step_start
            )
            done = state["step"] >= recipe.max_steps
            if state["step"] % recipe.checkpoint_every == 0 or done:
                _checkpoint(opt, clock, progress)
            elif progress.due():
                clock.charge("wall")
                progress.send()
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


class PretrainLedger:
    """The cost of one pretraining run over all its attempts, from its workers' records.

    ``wall_seconds`` and ``checkpoint_seconds`` are rank 0's cumulative figures (restored with
    every checkpoint); a worker group's first record after a restore charges what the run had
    recorded beyond the restored checkpoint as ``lost_seconds``. Device-hours, price, MFU and
    energy come from ``ablate.cost`` on the workers' devices (``current_device`` on each, times
    the number of workers), billed on compute + checkpoint + lost seconds.
    """

    def __init__(
        self, recorded: dict[str, float] | None = None, prices: dict[str, float] | None = None
    ) -> None:
        recorded = recorded or {}
        self.prices = dict(prices or {})
        self.wall = float(recorded.get(MetricName.WALL_SECONDS, 0.0))
        self.optimizer = float(recorded.get(OPTIMIZER_SECONDS, 0.0))
        self.data_wait = float(recorded.get(DATA_WAIT_SECONDS, 0.0))
        self.checkpoint = float(recorded.get(MetricName.CHECKPOINT_SECONDS, 0.0))
        self.lost = float(recorded.get(MetricName.LOST_SECONDS, 0.0))
        self.charged = 0.0  # seconds of this driver's fit its records charged
        self.restored = (0.0, 0.0)  # (wall, checkpoint seconds) the last worker group restored
        self.latest: dict[int, dict] = {}  # rank -> its latest record
        self.records = 0  # rank 0's records this driver took

    def record(self, worker: dict) -> tuple[dict[str, float], dict[str, str]] | None:
        """Take one worker's record; the run's (metrics, tags) after it when it is rank 0's
        (the one whose figures the run's are), else None."""
        self.latest[int(worker["rank"])] = worker
        if int(worker["rank"]) != 0:
            return None
        before = self.wall + self.checkpoint + self.lost
        if int(worker["sent_since_start"]) == 1:
            # A worker group started (first, resumed or restarted): from the restored state.
            self.restored = (
                float(worker["resumed_wall_seconds"]),
                float(worker["resumed_checkpoint_seconds"]),
            )
            restored = sum(self.restored)
            lost = max(0.0, self.wall + self.checkpoint - restored)
            self.lost += lost
            # Work lost before this driver started (a killed driver's) is not of its fit.
            before = restored + self.lost - (lost if self.records else 0.0)
        self.records += 1
        self.wall = float(worker["wall_seconds"])
        self.optimizer = float(worker.get("optimizer_seconds", 0.0))
        self.data_wait = float(worker.get("data_wait_seconds", 0.0))
        self.checkpoint = float(worker["checkpoint_seconds"])
        self.charged += max(0.0, self.wall + self.checkpoint + self.lost - before)
        return self.metrics()

    def metrics(self, overhead_seconds: float = 0.0) -> tuple[dict[str, float], dict[str, str]]:
        """(metrics, tags) of the latest records, with ``overhead_seconds`` of the driver's fit
        that no worker measured (starting the workers, say) added to compute time."""
        from ablate.cost import Device, cost_metrics, price_for

        first = self.latest[0]
        workers = int(first["world_size"])
        kind = str(first["device_type"])
        # Billed for every worker's devices; a CPU peak is one process's (cost.Device), so the
        # workers' processes add up, where a GPU's peak is per device.
        device = Device(
            kind,
            str(first["device_name"]),
            float(first["device_count"]) * workers,
            float(first["peak_flops"]) * (workers if kind == "cpu" else 1),
            str(first["peak_source"]),
        )
        energies = [float(w["energy_kwh"]) for w in self.latest.values() if "energy_kwh" in w]
        wall = self.wall + overhead_seconds
        values = cost_metrics(
            device,
            wall_seconds=wall,
            flops=float(first["flops"]),
            prices=self.prices,
            energy_kwh=sum(energies) if energies else None,
            billed_seconds=wall + self.checkpoint + self.lost,
        )
        values.update(
            {
                MetricName.WALL_SECONDS: wall,
                "step_seconds": self.wall,
                OPTIMIZER_SECONDS: self.optimizer,
                DATA_WAIT_SECONDS: self.data_wait,
                MetricName.CHECKPOINT_SECONDS: self.checkpoint,
                MetricName.LOST_SECONDS: self.lost,
                MetricName.FLOPS: float(first["flops"]),
                MetricName.TOKENS_SEEN: float(first["tokens_seen"]),
                MetricName.MLM_LOSS: float(first["mlm_loss"]),
                "steps": float(first["step"]),
                "devices": float(workers),
                "resumed_from_step": float(first["resumed_from_step"]),
                # what the checkpoint it resumed from had charged (the rest is lost_seconds)
                "resumed_wall_seconds": self.restored[0],
                "resumed_checkpoint_seconds": self.restored[1],
                MetricName.N_PARAMS: float(first["n_params"]),
            }
        )
        tags = {
            Tag.DEVICE_NAME: device.name,
            Tag.PEAK_SOURCE: device.peak_source,
            Tag.PRICE_SOURCE: price_for(self.prices, device.kind, device.name)[1],
        }
        return values, tags


def _trainer(
    job: PretrainJob,
    manifest: Any,
    shard_dir: Path,
    storage_path: str,
    progress: Any = None,
    work_dir: Path = Path("."),
) -> Any:
    """The Ray Train ``TorchTrainer`` of a job, its corpus handed over whole through the object
    store or streamed through Ray Data (``corpus_in_memory``); its workers send progress records
    to ``progress`` (a ``ray.util.queue.Queue``) if given."""
    import ray
    import ray.data
    import ray.train
    import ray.util
    from ray.train.torch import TorchTrainer

    from ablate.errors import AblateError
    from ablate.shards import read_placement, read_shard_set
    from ablate.storage import shard_source
    from ablate.tokenization import complement_ids, load_tokenizer, special_ids

    recipe = job.recipe
    tokenizer = load_tokenizer(Path(job.tokenizer_path))  # read here: workers get its values
    ids = special_ids(tokenizer, source=job.tokenizer_path)
    if ids.mask is None:
        raise AblateError(
            f"{job.tokenizer_path}: the tokenizer has no mask token, which "
            "masked-LM pretraining needs"
        )
    corpus, datasets = None, {}
    if corpus_in_memory(manifest):
        # The driver wrote these shards: its copy, through the object store, reaches workers
        # on any node.
        corpus = ray.put(read_shard_set(shard_dir, ids.pad))
    else:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        # From the study's storage if it has one apart from the work folder, so workers on any
        # node can stream the corpus; else on the driver's node, where it was written.
        source = shard_source(shard_dir, manifest.files, storage_path, work_dir)
        datasets["train"] = ray.data.read_parquet(
            source.paths, **read_placement([source], READ_CPUS))
    return TorchTrainer(
        pretrain_worker,
        train_loop_config={
            "plan": WorkerPlan(
                recipe=recipe,
                architecture=job.architecture,
                preset=job.preset,
                overrides=dict(job.overrides),
                vocab_size=tokenizer.get_vocab_size(),
                complement_ids=tuple(complement_ids(tokenizer)),
                token_limit=job.token_limit,
                width=manifest.max_tokens,
                pad_id=ids.pad,
                mask_id=ids.mask,
                special_ids=tuple(ids.ids),
                progress=progress,
                corpus=corpus,
            )
        },
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
        datasets=datasets,
    )


def _run_params(job: PretrainJob, num_rows: int) -> dict[str, Any]:
    """The params of a pretraining's MLflow run: its recipe, model, tokenizer and corpus."""
    recipe = job.recipe
    return {
        **{k: v for k, v in recipe.model_dump(mode="json").items() if k != "corpus"},
        **{f"corpus.{k}": v for k, v in recipe.corpus.model_dump(mode="json").items()},
        "architecture": job.architecture,
        "preset": job.preset,
        "tokenizer": job.tokenizer_value,
        "corpus_sequences": num_rows,
    }


def _fit_recording(
    trainer_for: Callable[[Any], Any],
    ledger: PretrainLedger,
    write: Callable[[dict, dict, int], None],
    progress: Callable[[str], None],
) -> Any:
    """``fit()`` the trainer ``trainer_for(queue)`` builds, writing its workers' progress
    records through ``write`` (from a thread of this driver) as they arrive; the fit's
    result. Records still queued when the fit returns are written before this returns."""
    import threading

    import ray
    from ray.util.queue import Empty, Queue

    queue = Queue(actor_options={"num_cpus": 0})
    done = threading.Event()
    failed: list[str] = []

    def relay() -> None:
        while True:
            try:
                worker = queue.get(timeout=0.5)
            except Empty:
                if done.is_set():
                    return
                continue
            try:
                recorded = ledger.record(worker)
                if recorded is not None:
                    write(*recorded, int(worker["step"]))
            except Exception as exc:  # the record is best effort; the final one is not
                if not failed:
                    progress(f"could not record pretraining progress ({exc}); going on")
                failed.append(str(exc))

    thread = threading.Thread(target=relay, name="pretrain-record", daemon=True)
    thread.start()
    try:
        return trainer_for(queue).fit()
    finally:
        done.set()
        thread.join()
        ray.kill(queue.actor)


def run_pretraining(
    job: PretrainJob,
    *,
    tracking_uri: str,
    work_dir: Path,
    storage: str | None = None,
    progress: Callable[[str], None] = print,
    extra_tags: dict[str, str] | None = None,
    prices: dict[str, float] | None = None,
) -> PretrainResult:
    """Pretrain ``job`` on Ray Train (or reuse a finished run with the same key).

    The run's MLflow run is opened first (or found again, unfinished, by its key) and records
    the cost as the workers report; ``prices`` (per device-hour, by device name or kind, as a
    study's price table) price it."""
    from mlflow import MlflowClient
    from mlflow.entities import Param

    from ablate.corpus import prepare_corpus
    from ablate.shards import ShardManifest
    from ablate.tracking.reader import find_finished_pretraining
    from ablate.tracking.writer import (
        finish_pretraining,
        log_pretraining_progress,
        open_pretraining,
        pretraining_tags,
    )

    client = MlflowClient(tracking_uri)
    key = job.key
    finished = find_finished_pretraining(client, key)
    if finished is not None:
        progress(f"pretraining {job.name} ({key}) already done: run {finished.info.run_id}")
        return _result_from_run(client, finished, work_dir, reused=True)

    tags = pretraining_tags(
        key=key,
        name=job.name,
        architecture=job.architecture,
        tokenizer=job.tokenizer_value,
        device_type="gpu" if job.recipe.use_gpu else "cpu",
        extra_tags=extra_tags,
    )
    run_id, recorded = open_pretraining(
        client, tags=tags, run_name=f"{job.name}-{job.architecture}", params={}
    )
    if recorded:
        progress(
            f"pretraining {job.name} ({key}): resuming in run {run_id}, "
            f"{recorded.get(MetricName.WALL_SECONDS, 0.0):.0f} s recorded so far"
        )
    progress(f"pretraining {job.name} ({key}): filtering and tokenizing the corpus")
    corpus = prepare_corpus(
        job.recipe.corpus,
        seed=job.recipe.seed,
        gue_dir=job.gue_dir,
        tokenizer_path=job.tokenizer_path,
        key=key,
        work_dir=work_dir,
        held_out=job.held_out(),
    )
    if corpus.leaks is not None:
        progress(f"pretraining {job.name}: {corpus.leaks.summary()}")
    shard_dir = corpus.path
    manifest = ShardManifest.read(shard_dir)
    client.log_batch(
        run_id,
        params=[Param(k, str(v)[:6000]) for k, v in _run_params(job, manifest.num_rows).items()],
    )
    storage_path = storage or str(Path(work_dir).resolve() / "ray_results")
    progress(
        f"pretraining {job.architecture}/{job.preset} with {job.tokenizer_value} on "
        f"{manifest.num_rows} sequences: {job.recipe.max_steps} steps x {job.recipe.workers} "
        "workers"
    )
    ledger = PretrainLedger(recorded, prices)
    started = time.perf_counter()
    try:
        result = _fit_recording(
            lambda queue: _trainer(job, manifest, shard_dir, storage_path, queue, work_dir),
            ledger,
            lambda metrics, tags, step: log_pretraining_progress(
                client, run_id, metrics, step, tags
            ),
            progress,
        )
        if result.checkpoint is None or 0 not in ledger.latest:
            raise RuntimeError(f"pretraining {job.name} produced no checkpoint: {result.error}")
    except BaseException:
        client.set_terminated(run_id, status="FAILED")  # resumable: found again by its key
        raise
    # The driver's fit beyond what its workers measured (starting them, streaming set-up).
    overhead = max(0.0, time.perf_counter() - started - ledger.charged)
    values, final_tags = ledger.metrics(overhead)
    if corpus.leaks is not None:
        values.update(corpus.leaks.as_metrics())
    with result.checkpoint.as_directory() as folder:
        finish_pretraining(
            client,
            run_id,
            values,
            Path(folder) / MODEL_ARTIFACT,
            step=int(values["steps"]),
            tags=final_tags,
        )
    progress(
        f"pretraining {job.name} done: run {run_id}, {values[MetricName.WALL_SECONDS]:.0f} s "
        f"(+{values[MetricName.LOST_SECONDS]:.0f} s lost), {values[MetricName.FLOPS]:.3g} "
        f"FLOPs, final masked-LM loss {values[MetricName.MLM_LOSS]:.3f}"
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
    choice = parse_tokenizer_choice(spec.tokenizer, default_k=spec.tokenizers.kmer_k, base_dir=base)
    if choice.kind == "bpe" and choice.path is None and not corpus.gue_tasks:
        raise AblateError(
            "tokenizer 'bpe' (trained) needs corpus.gue_tasks to train on; "
            "give bpe:PATH to use an existing tokenizer with a FASTA corpus"
        )
    progress(f"building tokenizer {spec.tokenizer}")
    _, tok_file = resolve_tokenizer(
        choice,
        gue_root=Path(gue_dir) if gue_dir else base,
        tasks=corpus.gue_tasks or [],
        work_dir=spec.work_path,
        bpe_vocab_size=spec.tokenizers.bpe_vocab_size,
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
    device: str = "gpu",
    device_name: str | None = None,
    price_per_hour: float | None = None,
    extra_tags: dict[str, str] | None = None,
) -> PretrainResult:
    """Record an external checkpoint as a pretraining run with its declared cost (once): its
    device-hours, of which kind of device (``device``: "gpu" or "cpu"), and when declared the
    device's name and price per device-hour. A checkpoint declared again with another cost is
    another run."""
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
    declared = json.dumps([device_hours, device, device_name, price_per_hour])
    cost = hashlib.sha256(declared.encode()).hexdigest()[:8]
    key = f"external-{digest.hexdigest()[:16]}-{device_hours:g}-{cost}"
    client = MlflowClient(tracking_uri)
    finished = find_finished_pretraining(client, key)
    run_id = (
        finished.info.run_id
        if finished is not None
        else writer.register_external(
            client,
            key=key,
            name=name,
            folder=folder,
            device_hours=device_hours,
            device=device,
            device_name=device_name,
            price_per_hour=price_per_hour,
            extra_tags=extra_tags,
        )
    )
    return PretrainResult(
        run_id=run_id,
        key=key,
        model_dir=str(folder),
        wall_seconds=0.0,
        device_hours=float(device_hours),
        flops=0.0,
        tokens_seen=0,
        reused=True,
    )
