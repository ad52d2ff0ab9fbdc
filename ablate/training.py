"""The trainable: one Ray Tune trial fits one configuration of one cell.

``train_trial(config, plans, split_arrays, model_files)`` is a plain function in the style of
Ray Tune's examples. ``config`` is Tune's per-trial config (a ``TrialConfig``: cell, searched
hyperparameters, seed); ``plans`` maps each cell to its ``CellPlan`` (task inputs, model,
starting point, resources, prices, epoch budget); ``split_arrays`` maps shard-set folders to
their arrays and ``model_files`` weights keys to pretrained model folders' files, both in Ray's
object store. All three reach the trainable through ``tune.with_parameters`` (see
``ablate.study``). It trains on train, evaluates dev after every epoch and calls ``tune.report``
with dev metrics, cost (wall seconds, FLOPs, device-hours, price, MFU, energy), the seed and a
checkpoint; a replicate evaluates its best-on-dev model once on test at the end. Every numeric
field it reports is logged to MLflow (``ablate.tracking``).

Everything that ran is billed. A trial's clock runs from its set-up to its last report and every
second of it is either compute (``wall_seconds``: set-up, epochs, the test evaluation, which is
also reported alone as ``test_seconds``) or checkpointing (``checkpoint_seconds``: restoring,
``torch.save`` and the upload inside ``tune.report``, which is timed after it returns and so
reaches the next report, and saving the best model). A checkpoint's own saving time is written
beside its state (``cost.json``), so a trial restored from it keeps that too; the upload of the
checkpoint a restored trial started from is in the lost time of the attempt that made it.
``device_hours`` and ``price`` are charged on both together; the final report carries no
checkpoint (test is already evaluated), so no upload goes unmeasured. The cumulative figures
live in the checkpoint, so a restored trial keeps them; the epochs a retry runs again are
charged on the driver (``lost_seconds``, ``rerun_epochs``, see ``ablate.tracking.writer``), from
the ``attempt_started``, ``restored_epoch`` and ``restored_billed_seconds`` every report
carries.

Checkpoints (``CellPlan.checkpoint_every``, the spec's ``budget.checkpoint_every``): every so
many epochs a trial's report carries its latest state (model, optimizer, schedule, progress and
the random number generators' states, so a restored trial trains on exactly as it would have),
never its last report. The best model on dev is not in it: it is written once each time it
changes (at the next checkpoint), to ``best_model-epoch<N>.pt`` in the trial's folder of the
study's storage, and a checkpoint whose latest model is that best model holds it only there.

A model failure is not a crash. A NaN or infinite training loss, or running out of device
memory (``torch.OutOfMemoryError``) at the configuration's own batch, ends the trial with one
last report that carries ``model_failure: 1``, ``failure`` (a ``FailureKind``), its cost so far
and no test score; the trainable then returns normally, so Tune does not retry what would fail
the same way again, and the trial counts against its cell. Anything else that raises is the
infrastructure's: Tune retries it (``FailureConfig.max_failures``).

The task's metric (``CellPlan.metric``: MCC, or macro F1 for virus/covid) is the trial's score:
every epoch reports it as ``dev_score`` and ``best_dev_score`` (and a replicate ``test_score``)
beside the MCC, macro-F1 and accuracy fields, and the best-on-dev model, ``best_epoch`` and
early stopping all follow it.

Searched training hyperparameters (``TrialConfig.hparams``; missing ones take
``DEFAULT_HPARAMS``):

- ``learning_rate``, ``weight_decay``: AdamW's.
- ``dropout``: of the encoder and the head (an external checkpoint's backbone too).
- ``batch_size``: the global batch of one optimizer step. Where ``CellPlan.micro_batch_size``
  is smaller, a step accumulates gradients over ``ceil(batch_size / micro_batch_size)``
  micro-batches, weighted so it equals the full-batch step.
- ``schedule``: ``"linear"`` or ``"cosine"`` decay to zero after a linear warm-up.
- ``warmup_steps`` (optimizer steps) or ``warmup_ratio`` (a fraction of all optimizer steps of
  the trial's epoch budget); ``warmup_steps`` wins if both are given.

Searched model hyperparameters (``TrialConfig.model_params``) are config overrides of the
architecture, applied on top of the cell's own.

``train_step``, ``count_step_flops`` and ``autocast_context`` are shared with masked-LM
pretraining (``ablate.pretrain``), so both count and take a step the same way.
"""

from __future__ import annotations

import io
import json
import math
import random
import re
import tempfile
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ablate.cost import (
    FLOPS_METHOD,
    Device,
    EnergyMeter,
    cost_metrics,
    current_device,
    price_for,
)
from ablate.shards import SplitArrays
from ablate.tracking.schema import RESULT_TAGS, FailureKind, MetricName, Tag
from ablate.trial import FINISHED, CellPlan, TrialConfig

if TYPE_CHECKING:
    from ablate.models.heads import SequenceClassifier

DEFAULT_HPARAMS = {
    "learning_rate": 1e-3,
    "weight_decay": 0.01,
    "dropout": 0.1,
    "warmup_ratio": 0.1,
    "batch_size": 64,
    "schedule": "linear",
}
SCHEDULES = ("linear", "cosine")
GRAD_CLIP_NORM = 1.0
# CellPlan.metric -> the field of ``classification_metrics`` it names
TASK_METRICS = {"mcc": "mcc", "f1_macro": "f1"}
# The result fields that become tags (``RESULT_TAGS``), by the tag they become.
RESULT_FIELDS = {tag: field for field, tag in RESULT_TAGS.items()}


class ModelFailure(Exception):
    """The model itself failed (``kind``: a ``FailureKind``), not the machine it ran on."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class SplitTensors:
    """A whole split as tensors, ready for batching (GUE splits fit in memory)."""

    input_ids: Any  # torch.LongTensor [N, L]
    attention_mask: Any  # torch.LongTensor [N, L]
    labels: Any  # torch.LongTensor [N]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @staticmethod
    def from_arrays(arrays: SplitArrays) -> SplitTensors:
        import torch

        return SplitTensors(
            torch.from_numpy(arrays.input_ids.astype(np.int64)),
            torch.from_numpy(arrays.attention_mask()),
            torch.tensor(arrays.labels, dtype=torch.int64),  # a copy: the source is read-only
        )

    def resident(self, device: Any) -> SplitTensors:
        """The split where batches are cut from: on a GPU it moves there whole (GUE splits are
        tens of MB), so a step's batch is an index on the device, with no host-to-device copy
        and no host sync; on a CPU it stays as it is."""
        if device.type != "cuda":
            return self
        return SplitTensors(
            *(t.to(device) for t in (self.input_ids, self.attention_mask, self.labels))
        )

    def batch(self, idx: Any, device: Any) -> tuple[Any, Any, Any]:
        """Rows ``idx`` as (ids, mask, labels) on ``device``."""
        return tuple(
            t[idx].to(device, non_blocking=True)
            for t in (self.input_ids, self.attention_mask, self.labels)
        )


def ray_gpu_ids() -> list | None:
    """The GPU ids Ray assigned to this process, or None outside a Ray worker (a plain script,
    or Ray's driver), where Ray assigns nothing and so decides nothing."""
    import ray

    if not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
        return None
    return list(ray.get_gpu_ids())


def pick_device() -> Any:
    """The GPU Ray assigned to this trial if there is one, else the CPU.

    In a Ray worker (a Tune trial, a Ray Train worker) the assignment decides, not what CUDA
    can see: Ray no longer hides the GPUs from a worker that reserved none, so such a trial
    trains on the CPU it reserved rather than on a GPU another trial holds. Ray sets
    ``CUDA_VISIBLE_DEVICES`` to the ids it assigned, so the trial's GPU is ``cuda:0``.
    Outside Ray, any visible GPU is used."""
    import torch

    assigned = ray_gpu_ids()
    if assigned is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device("cuda:0" if assigned and torch.cuda.is_available() else "cpu")


BF16, FP16, FP32 = "bf16", "fp16", "fp32"
AUTOCAST_DTYPES = {BF16: "bfloat16", FP16: "float16"}  # precision -> torch dtype name


def precision(device: Any) -> str:
    """The precision a device trains in: bf16 autocast on GPUs with native bf16 (Ampere and
    later), fp16 autocast on older GPUs (emulated bf16 would be slow, and the peak table
    gives those parts' fp16 peak), float32 on CPU."""
    import torch

    if device is None or device.type != "cuda":
        return FP32
    native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    return BF16 if native_bf16 else FP16


def autocast_context(device: Any) -> Any:
    """Autocast in the device's ``precision`` (bf16 or fp16) on GPUs; a no-op context on CPU."""
    import contextlib

    import torch

    mode = precision(device)
    if mode == FP32:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=getattr(torch, AUTOCAST_DTYPES[mode]))


# One loss scaler per optimizer, so its scale carries from step to step (and goes with it).
_SCALERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def grad_scaler(optimizer: Any, device: Any) -> Any:
    """The optimizer's ``torch.amp.GradScaler``: enabled under fp16 autocast, where small
    gradients would underflow unscaled; disabled (every call a pass-through) otherwise.

    Its scale is not checkpointed: a restored trial starts from the initial scale, which the
    scaler lowers within a few steps if it is too high (skipping those steps)."""
    import torch

    if optimizer not in _SCALERS:
        enabled = precision(device) == FP16
        _SCALERS[optimizer] = torch.amp.GradScaler(device.type, enabled=enabled)
    return _SCALERS[optimizer]


def classification_metrics(labels: np.ndarray, preds: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    return {
        "mcc": float(matthews_corrcoef(labels, preds)),
        "accuracy": float(accuracy_score(labels, preds)),
        "f1": float(f1_score(labels, preds, average="macro", zero_division=0)),
    }


def task_score(metrics: dict[str, float], metric: str) -> float:
    """The task's metric (``"mcc"`` or ``"f1_macro"``) out of ``classification_metrics``."""
    if metric not in TASK_METRICS:
        raise ValueError(f"unknown task metric {metric!r}; expected one of {list(TASK_METRICS)}")
    return float(metrics[TASK_METRICS[metric]])


def classification_loss(model: Any, ids: Any, mask: Any, labels: Any) -> Any:
    """Cross-entropy of a classifier's logits (in float32) against sequence labels."""
    import torch

    return torch.nn.functional.cross_entropy(model(ids, mask).float(), labels)


def masked_lm_loss(model: Any, ids: Any, mask: Any, labels: Any) -> Any:
    """``MaskedLanguageModel.loss``, called through ``forward`` so a DDP wrapper sees it."""
    return model(ids, mask, labels)


LossFn = Callable[[Any, Any, Any, Any], Any]


def count_step_flops(
    model: Any, batch: tuple, *, backward: bool, loss_fn: LossFn = classification_loss
) -> int:
    """FLOPs of one forward (and backward) pass, counted by ``torch.utils.flop_counter``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        if backward:
            loss_fn(model, *batch).backward()
        else:
            with torch.no_grad():
                model(*batch[:2])
    if backward:
        model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def train_step(
    model: Any,
    optimizer: Any,
    batch: tuple[Any, Any, Any],
    device: Any,
    loss_fn: LossFn = classification_loss,
    *,
    micro_batch_size: int | None = None,
    scaler: Any = None,
) -> Any:
    """One optimisation step on a batch of (ids, mask, labels): forward and loss (autocast on
    GPUs, the loss in float32), backward, gradient clipping, optimizer step. Returns the
    detached loss, left on the device (reading it would sync the host).

    With ``micro_batch_size`` smaller than the batch, the gradients are accumulated over
    micro-batches of that many rows (see ``accumulate_gradients``) before the one step.

    ``scaler`` (default: the optimizer's ``grad_scaler``) scales the loss under fp16; the
    gradients are unscaled before clipping, so the clip norm means the same in every precision,
    and a step whose gradients overflowed is skipped."""
    import torch

    scaler = grad_scaler(optimizer, device) if scaler is None else scaler
    rows = int(batch[2].shape[0])
    optimizer.zero_grad(set_to_none=True)
    if micro_batch_size is not None and micro_batch_size < rows:
        loss = accumulate_gradients(model, batch, device, micro_batch_size, loss_fn, scaler)
    else:
        with autocast_context(device):
            loss = loss_fn(model, *batch)
        scaler.scale(loss).backward()
        loss = loss.detach()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP_NORM)
    scaler.step(optimizer)
    scaler.update()
    return loss


def accumulate_gradients(
    model: Any,
    batch: tuple[Any, Any, Any],
    device: Any,
    micro_batch_size: int,
    loss_fn: LossFn = classification_loss,
    scaler: Any = None,
) -> Any:
    """Backward through ``batch`` in ``ceil(rows / micro_batch_size)`` micro-batches of (at
    most) ``micro_batch_size`` rows, adding to the parameters' gradients. Each micro-batch's
    mean loss is weighted by its share of the rows, so the gradients (and the returned detached
    loss) are those of the whole batch's mean loss (exact for a loss that averages over rows,
    as ``classification_loss`` does). With a ``scaler`` (fp16), each backward is of the scaled
    loss, so the summed gradients carry the one scale the step unscales."""
    import torch

    rows = int(batch[2].shape[0])
    total = torch.zeros((), device=device)
    for start in range(0, rows, micro_batch_size):
        micro = tuple(t[start : start + micro_batch_size] for t in batch)
        with autocast_context(device):
            loss = loss_fn(model, *micro) * (int(micro[2].shape[0]) / rows)
        (loss if scaler is None else scaler.scale(loss)).backward()
        total += loss.detach()
    return total


def warmup_steps(hparams: dict[str, Any], total_steps: int) -> int:
    """Warm-up in optimizer steps: ``warmup_steps`` if given, else ``warmup_ratio`` of
    ``total_steps``; never more than ``total_steps``."""
    if hparams.get("warmup_steps") is not None:
        steps = int(hparams["warmup_steps"])
    else:
        steps = int(
            float(hparams.get("warmup_ratio", DEFAULT_HPARAMS["warmup_ratio"])) * total_steps
        )
    return max(0, min(steps, total_steps))


def make_scheduler(optimizer: Any, hparams: dict[str, Any], total_steps: int) -> Any:
    """The learning-rate schedule ``hparams`` name: linear warm-up, then ``schedule`` decay
    ("linear" or "cosine") to zero at ``total_steps`` optimizer steps."""
    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    from ablate.errors import AblateError

    schedule = str(hparams.get("schedule", DEFAULT_HPARAMS["schedule"]))
    if schedule not in SCHEDULES:
        raise AblateError(f"unknown schedule {schedule!r}; choose one of {list(SCHEDULES)}")
    make = (
        get_cosine_schedule_with_warmup if schedule == "cosine" else get_linear_schedule_with_warmup
    )
    return make(optimizer, warmup_steps(hparams, total_steps), total_steps)


def evaluate(model: Any, split: SplitTensors, device: Any, batch_size: int) -> dict[str, float]:
    import torch

    model.eval()
    preds, loss_sum = [], torch.zeros((), device=device)
    with torch.no_grad(), autocast_context(device):
        for start in range(0, len(split), batch_size):
            ids, mask, labels = split.batch(slice(start, start + batch_size), device)
            logits = model(ids, mask).float()
            loss_sum += torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
            preds.append(logits.argmax(dim=-1))
    # One copy back to the host for the whole split, not one per batch.
    labels_np = split.labels.cpu().numpy()
    metrics = classification_metrics(labels_np, torch.cat(preds).cpu().numpy())
    metrics["loss"] = float(loss_sum) / max(len(split), 1)
    return metrics


def _unpack_files(files: Any, folder: Path) -> None:
    """Write a model folder's files (a dict of bytes, or an object ref to one) into ``folder``."""
    import ray

    files = ray.get(files) if isinstance(files, ray.ObjectRef) else files
    for name, content in files.items():
        (folder / name).write_bytes(content)


def pad_id(inputs: Any) -> int:
    """The padding id of a task's token ids."""
    from ablate.tokenization import PAD_ID

    return int(getattr(inputs, "pad_id", PAD_ID))


def build_model(
    plan: CellPlan, trial: TrialConfig, model_files: dict[str, Any] | None = None
) -> SequenceClassifier:
    """The classifier a cell plan describes, with the trial's dropout and model
    hyperparameters (``trial.model_params``, on top of the plan's overrides).

    A pretrained cell starts from the pretrained encoder, whose model folder's files arrive in
    ``model_files`` (weights key -> {file name: bytes}); every other cell starts from the same
    architecture freshly initialised. An ``external`` cell is the checkpoint with its weights,
    an ``external-config`` cell the same checkpoint's model with fresh weights.
    """
    from ablate.models.registry import build_classifier

    inputs, source = plan.inputs, plan.source
    dropout = float(trial.hparams.get("dropout", DEFAULT_HPARAMS["dropout"]))
    if source.external:
        if trial.model_params:
            from ablate.errors import AblateError

            raise AblateError(
                f"cell {plan.cell.name}: an external checkpoint's model is fixed by its config; "
                f"it takes no model_params (got {sorted(trial.model_params)})"
            )
        return _external_classifier(plan, dropout, (model_files or {})[source.weights_key])
    model = build_classifier(
        plan.model.architecture,
        preset=plan.model.preset,
        vocab_size=inputs.vocab_size,
        num_classes=inputs.num_classes,
        max_len=plan.model.token_limit or inputs.token_limit,
        pad_id=pad_id(inputs),
        dropout=dropout,
        complement_ids=list(inputs.complement_ids),
        overrides={**plan.model.overrides, **trial.model_params} or None,
    )
    if source.pretrained:
        from ablate.models.io import load_encoder_weights

        with tempfile.TemporaryDirectory() as folder:
            _unpack_files((model_files or {})[source.weights_key], Path(folder))
            load_encoder_weights(model, Path(folder))
    return model


def _external_classifier(plan: CellPlan, dropout: float, files: Any) -> SequenceClassifier:
    """A classifier on an external checkpoint whose files arrive through the object store:
    its pretrained weights (``external``) or its config at random init (``external-config``)."""
    from ablate.errors import AblateError
    from ablate.models.external import build_external_classifier

    with tempfile.TemporaryDirectory(prefix="external-") as folder:
        _unpack_files(files, Path(folder))
        model = build_external_classifier(
            folder,
            num_classes=plan.inputs.num_classes,
            dropout=dropout,
            trust_remote_code=plan.source.trust_remote_code,
            random_init=plan.source.kind == "external-config",
        )
    if model.encoder.vocab_size < plan.inputs.vocab_size:
        raise AblateError(
            f"external checkpoint vocabulary ({model.encoder.vocab_size}) is smaller than its "
            f"tokenizer's ({plan.inputs.vocab_size})"
        )
    return model


# --- one trial: set-up, epochs, reports ------------------------------------------------------


@dataclass
class Progress:
    """What a trial has done so far; saved in every checkpoint.

    ``best_dev_score`` is the best dev score (the task's metric) so far, reached at
    ``best_epoch`` by the model the checkpoint keeps; ``best_dev_mcc`` is that model's dev MCC.
    ``wall_seconds`` (compute, test included), ``checkpoint_seconds`` and ``test_seconds``
    are cumulative over every attempt of the trial.
    """

    epoch: int = 0
    best_dev_score: float = -1.0
    best_dev_mcc: float = -1.0
    best_epoch: int = 0
    wall_seconds: float = 0.0
    flops: float = 0.0
    checkpoint_seconds: float = 0.0
    test_seconds: float = 0.0
    best_saved_epoch: int = 0  # the epoch whose best model is in the storage; 0: none

    @staticmethod
    def from_state(state: dict[str, Any], metric: str = "mcc") -> Progress:
        """The progress a checkpoint saved. A checkpoint from before the task's score kept its
        best model on dev MCC: that is its score where the metric is MCC; for another metric
        its score is unknown, so the next epoch's model takes the best model's place."""
        known = {f.name for f in fields(Progress)}
        values = {k: v for k, v in state.items() if k in known}
        if "best_dev_score" not in values:
            values["best_dev_score"] = (
                float(values.get("best_dev_mcc", -1.0)) if metric == "mcc" else -math.inf
            )
        return Progress(**values)


@dataclass
class TrialRun:
    """A trial set up to train: its model, optimisation, splits on the device and meters.

    ``clock`` is the ``time.perf_counter()`` up to which the trial's time has been charged
    (to ``progress.wall_seconds`` or ``progress.checkpoint_seconds``); ``charge`` moves it."""

    trial: TrialConfig
    plan: CellPlan
    hparams: dict[str, Any]
    device: Any
    splits: dict[str, SplitTensors]
    model: Any
    optimizer: Any
    scheduler: Any
    n_params: int
    hardware: Device
    energy: EnergyMeter
    train_flops_per_sample: float
    eval_flops_per_sample: float
    clock: float
    progress: Progress
    best_model: dict | None = None
    samples_this_epoch: int = 0  # training samples of the current epoch's finished steps
    # This attempt (a start, or a restore after a crash or a resume): when its set-up began,
    # and the epoch and billed seconds of the checkpoint it restored (0 for a fresh start).
    attempt_started: float = field(default_factory=time.time)
    restored_epoch: int = 0
    restored_billed: float = 0.0

    @property
    def batch_size(self) -> int:
        """The global batch: rows per optimizer step."""
        return int(self.hparams["batch_size"])

    @property
    def micro_batch_size(self) -> int | None:
        """Rows per forward/backward pass where a step accumulates over several, else None."""
        micro = self.plan.micro_batch_size
        return int(micro) if micro is not None and micro < self.batch_size else None

    @property
    def eval_batch_size(self) -> int:
        # Under a micro-batch limit an evaluation pass (no gradients) takes no more rows than a
        # training pass, so it fits wherever training fits.
        if self.micro_batch_size is not None:
            return self.micro_batch_size
        return max(self.batch_size, 256)

    def charge(self, account: str = "wall") -> float:
        """Charge the time since the last charge to ``account`` (``"wall"`` or
        ``"checkpoint"``); the seconds charged."""
        now = time.perf_counter()
        seconds, self.clock = now - self.clock, now
        name = f"{account}_seconds"
        setattr(self.progress, name, getattr(self.progress, name) + seconds)
        return seconds


def load_splits(
    plan: CellPlan, trial: TrialConfig, split_arrays: dict[str, Any], device: Any
) -> dict[str, SplitTensors]:
    """The splits a trial uses (train, dev, and test for a replicate), on its device."""
    import ray

    splits = plan.inputs.splits
    if trial.evaluate_test and "test" not in splits:
        raise FileNotFoundError(f"task {plan.inputs.task} has no test split to evaluate on")
    names = ["train", "dev"] + (["test"] if trial.evaluate_test else [])
    out = {}
    for name in names:
        arrays = split_arrays[splits[name]]
        arrays = ray.get(arrays) if isinstance(arrays, ray.ObjectRef) else arrays
        out[name] = SplitTensors.from_arrays(arrays).resident(device)
    return out


def _flops_per_sample(
    model: Any, split: SplitTensors, batch_size: int, device: Any, *, backward: bool
) -> float:
    """FLOPs per sample of a split, counted once on its first batch: every batch of a split
    has the same padded width."""
    rows = slice(0, min(batch_size, len(split)))
    probe = tuple(t[rows].to(device) for t in (split.input_ids, split.attention_mask, split.labels))
    return count_step_flops(model, probe, backward=backward) / len(probe[2])


def setup_trial(
    trial: TrialConfig,
    plan: CellPlan,
    split_arrays: dict[str, Any],
    model_files: dict[str, Any] | None,
) -> TrialRun:
    """Seed, load the splits, build the model and optimizer, count FLOPs, restore a checkpoint.

    The trial's clock starts here: its set-up is charged as compute, restoring a checkpoint as
    checkpointing."""
    import torch

    from ablate.models.registry import count_parameters

    hparams = {**DEFAULT_HPARAMS, **trial.hparams}
    device = pick_device()
    setup_start = time.perf_counter()
    splits = load_splits(plan, trial, split_arrays, device)
    hardware = trial_hardware(plan, device)
    energy = EnergyMeter()
    energy.start()

    # Seeded right before the model is built: whatever ran before in this process (an earlier
    # trial of a reused actor, a one-off measurement) leaves its start as it would be anyway.
    torch.manual_seed(trial.seed)
    np.random.seed(trial.seed % 2**32)
    random.seed(trial.seed)
    model = build_model(plan, trial, model_files).to(device)
    batch_size = int(hparams["batch_size"])
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=float(hparams["learning_rate"]),
        weight_decay=float(hparams["weight_decay"]),
    )
    # Optimizer steps, one per global batch, whatever the micro-batches.
    total_steps = math.ceil(len(splits["train"]) / batch_size) * plan.max_epochs
    scheduler = make_scheduler(optimizer, hparams, total_steps)
    # FLOPs are counted per sample on one forward/backward pass of the size training runs.
    pass_rows = min(batch_size, plan.micro_batch_size or batch_size)
    run = TrialRun(
        trial=trial,
        plan=plan,
        hparams=hparams,
        device=device,
        splits=splits,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        n_params=count_parameters(model),
        hardware=hardware,
        energy=energy,
        train_flops_per_sample=_flops_per_sample(
            model, splits["train"], pass_rows, device, backward=True
        ),
        eval_flops_per_sample=_flops_per_sample(
            model, splits["dev"], pass_rows, device, backward=False
        ),
        clock=setup_start,
        progress=Progress(),
    )
    _restore(run)
    return run


def trial_hardware(plan: CellPlan, device: Any) -> Device:
    """The device the trial is billed for (``current_device`` on the device it trains on). On
    a GPU its peak-memory counter restarts here, so the trial's peak memory is its own where
    Tune reuses the process for its successor."""
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return current_device(plan.resources.gpu, plan.resources.cpu, device)


def device_metrics(device: Any) -> dict[str, float]:
    """The precision a trial trains in (``bf16_autocast``, ``fp16_autocast``: 1 or 0, both 0
    in float32) and, on a GPU, the peak memory its tensors took since its set-up (this
    attempt's) in GB; nothing before a device was picked.

    MFU's peak matches the precision: the table is of dense bf16 peaks, and fp16 peaks for the
    parts without bf16 (V100, T4), the only ones that train in fp16 (bf16 is native from
    Ampere on, where dense fp16 tensor throughput equals bf16's anyway)."""
    import torch

    if device is None:
        return {}
    mode = precision(device)
    metrics = {
        MetricName.BF16_AUTOCAST: float(mode == BF16),
        MetricName.FP16_AUTOCAST: float(mode == FP16),
    }
    if device.type == "cuda":
        metrics[MetricName.PEAK_GPU_MEMORY_GB] = torch.cuda.max_memory_allocated(device) / 1e9
    return metrics


def _restore(run: TrialRun) -> None:
    """Continue from the trial's last checkpoint, if Tune hands one over (a retry, a resume),
    with the cost it had charged; this set-up is added to it."""
    import torch
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return
    setup_seconds = time.perf_counter() - run.clock
    run.clock = time.perf_counter()
    with checkpoint.as_directory() as folder:
        saved = torch.load(Path(folder) / "state.pt", map_location=run.device, weights_only=False)
        cost = Path(folder) / COST_FILE
        saved_cost = json.loads(cost.read_text()) if cost.exists() else {}
    run.progress = Progress.from_state({**saved["state"], **saved_cost}, run.plan.metric)
    run.restored_epoch = run.progress.epoch
    run.restored_billed = run.progress.wall_seconds + run.progress.checkpoint_seconds
    if "best_model" in saved:  # a checkpoint that kept its own copy of the best model
        run.best_model = saved["best_model"]
    elif run.progress.best_saved_epoch:
        run.best_model = load_best_model(run.progress.best_saved_epoch)
    # A checkpoint taken when the latest model was the best holds it only as the best model.
    run.model.load_state_dict(saved["model"] if saved["model"] is not None else run.best_model)
    run.optimizer.load_state_dict(saved["optimizer"])
    run.scheduler.load_state_dict(saved["scheduler"])
    if "rng" in saved:
        set_rng_state(saved["rng"], run.device)
    run.progress.wall_seconds += setup_seconds
    run.charge("checkpoint")  # downloading and loading it


COST_FILE = "cost.json"  # beside a checkpoint's state.pt: its cost once saved


def rng_state(device: Any) -> dict[str, Any]:
    """The random number generators' states a trial's next epoch draws from (dropout, and
    anything seeded globally): saved in its checkpoints."""
    import torch

    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: Any) -> None:
    import torch

    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


# --- the best model, in the trial's folder of the study's storage ----------------------------

BEST_MODEL_FILE = "best_model-epoch{epoch}.pt"
_BEST_MODEL_NAME = re.compile(r"best_model-epoch(\d+)\.pt$")


def _trial_folder() -> tuple[Any, str]:
    """(pyarrow file system, path) of this trial's folder in the study's storage."""
    from ray import tune

    storage = tune.get_context().get_storage()
    return storage.storage_filesystem, storage.trial_fs_path


def save_best_model(run: TrialRun) -> bool:
    """Write the best model to the trial's folder if it changed since it was last written;
    the file of the checkpoint before is kept (Tune may still restore that one), older ones
    are removed. Whether it wrote."""
    import pyarrow.fs as pafs
    import torch

    progress = run.progress
    if run.best_model is None or progress.best_saved_epoch == progress.best_epoch:
        return False
    filesystem, folder = _trial_folder()
    filesystem.create_dir(folder, recursive=True)
    buffer = io.BytesIO()
    torch.save(run.best_model, buffer)
    with filesystem.open_output_stream(
        f"{folder}/{BEST_MODEL_FILE.format(epoch=progress.best_epoch)}"
    ) as out:
        out.write(buffer.getbuffer())
    keep = {progress.best_epoch, progress.best_saved_epoch}
    progress.best_saved_epoch = progress.best_epoch
    for info in filesystem.get_file_info(pafs.FileSelector(folder)):
        match = _BEST_MODEL_NAME.search(info.path)
        if match and int(match.group(1)) not in keep:
            filesystem.delete_file(info.path)
    return True


def load_best_model(epoch: int) -> dict:
    """The best model this trial wrote at ``epoch``, on the CPU."""
    import torch

    filesystem, folder = _trial_folder()
    with filesystem.open_input_file(f"{folder}/{BEST_MODEL_FILE.format(epoch=epoch)}") as handle:
        data = handle.read()
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def train_epoch(run: TrialRun, epoch: int) -> tuple[float, int, float]:
    """One pass over train in a seeded order: (mean loss, samples seen, seconds).

    Raises ``ModelFailure`` (``FailureKind.NAN_LOSS``) when the loss is NaN or infinite."""
    import torch

    start = time.perf_counter()
    train, device, batch_size = run.splits["train"], run.device, run.batch_size
    run.model.train()
    generator = torch.Generator().manual_seed(run.trial.seed * 1000 + epoch)
    order = torch.randperm(len(train), generator=generator).to(train.labels.device)
    # Summed on the device and read once per epoch: no host sync per step.
    loss_sum, seen = torch.zeros((), device=device), 0
    run.samples_this_epoch = 0
    for step in range(math.ceil(len(train) / batch_size)):
        idx = order[step * batch_size : (step + 1) * batch_size]
        loss = train_step(
            run.model,
            run.optimizer,
            train.batch(idx, device),
            device,
            micro_batch_size=run.micro_batch_size,
        )
        run.scheduler.step()
        loss_sum += loss * len(idx)
        seen += len(idx)
        run.samples_this_epoch = seen
    train_loss = float(loss_sum) / max(seen, 1)
    if not math.isfinite(train_loss):
        raise ModelFailure(
            FailureKind.NAN_LOSS, f"training loss became {train_loss} in epoch {epoch}"
        )
    return train_loss, seen, time.perf_counter() - start


def _keep_if_best(run: TrialRun, epoch: int, dev: dict[str, float]) -> None:
    """The checkpoint keeps the best model seen on dev (by the task's score) next to the
    latest state."""
    score = task_score(dev, run.plan.metric)
    if run.best_model is None or score > run.progress.best_dev_score:
        run.best_model = {
            k: v.detach().to("cpu", copy=True) for k, v in run.model.state_dict().items()
        }
        run.progress.best_dev_score = score
        run.progress.best_dev_mcc = dev["mcc"]
        run.progress.best_epoch = epoch


def trial_cost(run: TrialRun) -> dict[str, Any]:
    """The trial's cost so far, as reported: compute and checkpoint seconds, FLOPs, device-hours
    and price on both (``cost_metrics`` with ``billed_seconds``), MFU on the compute time,
    energy where NVML measures it, and where the figures come from (device, price, peak)."""
    import ray

    progress, hardware = run.progress, run.hardware
    kwh = run.energy.kwh()
    _, price_source = price_for(run.plan.prices, hardware.kind, hardware.name)
    cost = cost_metrics(
        hardware,
        wall_seconds=progress.wall_seconds,
        flops=progress.flops,
        prices=run.plan.prices,
        energy_kwh=None if kwh is None else kwh * min(hardware.count, 1.0),
        billed_seconds=progress.wall_seconds + progress.checkpoint_seconds,
    )
    cost.update(
        {
            MetricName.WALL_SECONDS: progress.wall_seconds,
            MetricName.CHECKPOINT_SECONDS: progress.checkpoint_seconds,
            MetricName.FLOPS: progress.flops,
            RESULT_FIELDS[Tag.NODE_ID]: ray.get_runtime_context().get_node_id(),
            RESULT_FIELDS[Tag.DEVICE_TYPE]: hardware.kind,
            RESULT_FIELDS[Tag.DEVICE_NAME]: hardware.name,
            RESULT_FIELDS[Tag.PEAK_SOURCE]: hardware.peak_source,
            RESULT_FIELDS[Tag.FLOPS_METHOD]: FLOPS_METHOD,
            RESULT_FIELDS[Tag.PRICE_SOURCE]: price_source,
            MetricName.ATTEMPT_STARTED: run.attempt_started,
            MetricName.RESTORED_EPOCH: run.restored_epoch,
            MetricName.RESTORED_BILLED_SECONDS: run.restored_billed,
            **device_metrics(run.device),
        }
    )
    if run.trial.evaluate_test:
        cost[MetricName.TEST_SECONDS] = progress.test_seconds
    return cost


def epoch_metrics(
    run: TrialRun,
    epoch: int,
    dev: dict[str, float],
    train_loss: float,
    seen: int,
    train_seconds: float,
    epoch_seconds: float,
    finished: bool,
) -> dict[str, Any]:
    """What a trial reports after an epoch: dev metrics, progress and cost so far."""
    progress = run.progress
    return {
        **trial_cost(run),
        "epoch": epoch,
        MetricName.SEED: run.trial.seed,
        MetricName.DEV_SCORE: task_score(dev, run.plan.metric),
        MetricName.BEST_DEV_SCORE: progress.best_dev_score,
        MetricName.DEV_MCC: dev["mcc"],
        "dev_accuracy": dev["accuracy"],
        "dev_f1": dev["f1"],
        "dev_loss": dev["loss"],
        "train_loss": train_loss,
        MetricName.BEST_DEV_MCC: progress.best_dev_mcc,
        "epoch_seconds": epoch_seconds,
        "train_samples_per_second": seen / max(train_seconds, 1e-9),
        MetricName.N_PARAMS: run.n_params,
        "best_epoch": progress.best_epoch,
        FINISHED: int(finished),
    }


def failure_metrics(run: TrialRun, epoch: int, kind: str) -> dict[str, Any]:
    """The one last report of a trial whose model failed in ``epoch``: its cost so far, its
    best dev score before the failure (Tune's searcher metric must be in every result) and the
    failure. No test score: a failed replicate has none."""
    progress = run.progress
    return {
        **trial_cost(run),
        "epoch": epoch,
        MetricName.SEED: run.trial.seed,
        MetricName.BEST_DEV_SCORE: progress.best_dev_score,
        MetricName.BEST_DEV_MCC: progress.best_dev_mcc,
        MetricName.N_PARAMS: run.n_params,
        "best_epoch": progress.best_epoch,
        FINISHED: 0,
        MetricName.MODEL_FAILURE: 1,
        RESULT_FIELDS[Tag.FAILURE]: kind,
    }


def _test_metrics(run: TrialRun) -> dict[str, float]:
    """Test is touched once, by the model chosen on dev; its time and FLOPs are charged."""
    start = time.perf_counter()
    run.model.load_state_dict(run.best_model)
    test = evaluate(run.model, run.splits["test"], run.device, batch_size=run.eval_batch_size)
    run.progress.test_seconds += time.perf_counter() - start
    run.progress.flops += run.eval_flops_per_sample * len(run.splits["test"])
    return {
        **{f"test_{k}": v for k, v in test.items()},
        MetricName.TEST_SCORE: task_score(test, run.plan.metric),
    }


def is_final(metrics: dict[str, Any]) -> bool:
    """Whether a report is the trial's last: it finished, or its model failed."""
    return bool(metrics.get(FINISHED) or metrics.get(MetricName.MODEL_FAILURE))


def checkpoint_due(run: TrialRun, metrics: dict[str, Any]) -> bool:
    """Whether this report carries a checkpoint: every ``checkpoint_every`` epochs, never on
    the trial's last report (nothing would restore it)."""
    every = max(int(run.plan.checkpoint_every), 1)
    return not is_final(metrics) and run.progress.epoch % every == 0


def report_epoch(run: TrialRun, metrics: dict[str, Any]) -> None:
    """``tune.report`` the metrics, with a checkpoint of the latest state when one is due
    (``checkpoint_due``), after writing the best model if it changed (``save_best_model``).

    Saving is charged to ``checkpoint_seconds`` before the report (its cost fields are
    refreshed); the upload inside ``tune.report`` is timed after it returns, so the next report
    carries it. The last report needs no checkpoint, so no upload of it goes unmeasured."""
    import torch
    from ray import tune

    if not checkpoint_due(run, metrics):
        tune.report(metrics)
        return
    run.charge("wall")  # building the metrics
    save_best_model(run)
    latest_is_best = run.progress.best_saved_epoch == run.progress.epoch
    with tempfile.TemporaryDirectory() as folder:
        torch.save(
            {
                "model": None if latest_is_best else run.model.state_dict(),
                "optimizer": run.optimizer.state_dict(),
                "scheduler": run.scheduler.state_dict(),
                "state": asdict(run.progress),
                "rng": rng_state(run.device),
            },
            Path(folder) / "state.pt",
        )
        run.charge("checkpoint")
        # The state cannot hold its own saving time; this does, so a restored trial keeps it.
        (Path(folder) / COST_FILE).write_text(
            json.dumps({"checkpoint_seconds": run.progress.checkpoint_seconds}))
        metrics.update(trial_cost(run))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
    run.charge("checkpoint")  # the upload and the local copy's removal: in the next report


def _release_memory(run: TrialRun | None = None) -> None:
    """Free what a failed step left on the device, so the last report can still be made."""
    import gc

    import torch

    if run is not None:
        run.optimizer.zero_grad(set_to_none=True)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def train_trial(
    config: dict,
    plans: dict[str, CellPlan],
    split_arrays: dict[str, Any],
    model_files: dict[str, Any] | None = None,
    ended: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Ray Tune function trainable; see the module docstring for its arguments.

    ``ended`` (on a resume) maps the trial ids of trials that had ended before the earlier
    driver stopped, though Tune's saved state has them running, to their last result: such a
    trial reports that result again and returns, and trains nothing twice.
    """
    import logging

    import torch
    from ray import tune

    for name in ("ray.train", "ray.tune"):  # one "checkpoint created" line per epoch is noise
        logging.getLogger(name).setLevel(logging.WARNING)
    last = (ended or {}).get(tune.get_context().get_trial_id())
    if last is not None:
        tune.report(last)
        return
    trial = TrialConfig.from_tune(config)
    plan = plans[trial.cell]
    start = time.perf_counter()
    try:
        run = setup_trial(trial, plan, split_arrays, model_files)
    except torch.OutOfMemoryError:
        # The model (or its FLOP count at the configuration's batch) does not fit the device.
        _release_memory()
        report_setup_failure(trial, plan, time.perf_counter() - start)
        return
    run_epochs(run)


def report_setup_failure(
    trial: TrialConfig,
    plan: CellPlan,
    seconds: float,
    kind: str = FailureKind.OUT_OF_MEMORY,
    report: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """The last report (to ``report``, default ``tune.report``) of a trial whose model failed
    before its first epoch, ``seconds`` into its set-up."""
    if report is None:
        from ray import tune

        report = tune.report
    hardware = current_device(plan.resources.gpu, plan.resources.cpu, pick_device())
    run = TrialRun(
        trial=trial,
        plan=plan,
        hparams={},
        device=None,
        splits={},
        model=None,
        optimizer=None,
        scheduler=None,
        n_params=0,
        hardware=hardware,
        energy=EnergyMeter(),
        train_flops_per_sample=0.0,
        eval_flops_per_sample=0.0,
        clock=time.perf_counter(),
        progress=Progress(wall_seconds=seconds),
    )
    metrics = failure_metrics(run, 1, kind)
    del metrics[MetricName.N_PARAMS]  # never built
    report(metrics)


def run_epochs(
    run: TrialRun, report: Callable[[TrialRun, dict[str, Any]], None] = report_epoch
) -> None:
    """Train the epochs a set-up trial has left, handing each epoch's metrics to ``report``
    (``report_epoch``: to Tune, with a checkpoint), until the epoch budget or dev patience
    ends it, or its model fails (``failure_metrics`` is then its last report)."""
    import torch

    for epoch in range(run.progress.epoch + 1, run.plan.max_epochs + 1):
        try:
            metrics = _epoch(run, epoch)
        except (ModelFailure, torch.OutOfMemoryError) as failure:
            kind = failure.kind if isinstance(failure, ModelFailure) else FailureKind.OUT_OF_MEMORY
            _release_memory(run)
            # The failed epoch's finished steps ran, and are charged.
            run.progress.flops += run.train_flops_per_sample * run.samples_this_epoch
            run.charge("wall")
            report(run, failure_metrics(run, epoch, kind))
            return
        report(run, metrics)
        if metrics[FINISHED]:
            return


def _epoch(run: TrialRun, epoch: int) -> dict[str, Any]:
    """Train and evaluate one epoch (and test, if it is a replicate's last); its metrics."""
    trial, plan, progress = run.trial, run.plan, run.progress
    start = time.perf_counter()
    train_loss, seen, train_seconds = train_epoch(run, epoch)
    dev = evaluate(run.model, run.splits["dev"], run.device, batch_size=run.eval_batch_size)
    epoch_seconds = time.perf_counter() - start
    progress.epoch = epoch
    progress.flops += run.train_flops_per_sample * seen + run.eval_flops_per_sample * len(
        run.splits["dev"]
    )
    run.samples_this_epoch = 0  # charged with the epoch
    _keep_if_best(run, epoch, dev)
    # Early stopping on the dev score: the same patience rule in every cell.
    out_of_patience = plan.patience is not None and epoch - progress.best_epoch >= int(
        plan.patience
    )
    finished = epoch >= plan.max_epochs or out_of_patience
    test = _test_metrics(run) if finished and trial.evaluate_test else {}
    run.charge("wall")  # set-up (after a start), the epoch, the test
    return {
        **epoch_metrics(run, epoch, dev, train_loss, seen, train_seconds, epoch_seconds, finished),
        **test,
    }
