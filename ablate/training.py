"""The trainable: one Ray Tune trial fits one configuration of one cell.

``train_trial(config)`` is a plain function in the style of Ray Tune's examples: it reads the
cell's shards through Ray Data, trains on train, evaluates dev after every epoch, and calls
``tune.report`` with dev metrics, cost (wall seconds, FLOPs) and a checkpoint. Search, resources
and scheduling live outside it (``ablate.sweep``).

The config it receives (built by ``ablate.sweep.CellSearcher``) has these keys:
``cell`` (name), ``inputs`` (``TaskInputs.as_dict()``), ``model`` ({architecture, preset,
overrides}), ``hparams`` (learning_rate, weight_decay, dropout, warmup_ratio, batch_size),
``max_epochs`` and ``seed``.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ablate.cost import FLOPS_METHOD, EnergyMeter, cost_metrics, current_device
from ablate.shards import SplitArrays

DEFAULT_HPARAMS = {
    "learning_rate": 1e-3,
    "weight_decay": 0.01,
    "dropout": 0.1,
    "warmup_ratio": 0.1,
    "batch_size": 64,
}
GRAD_CLIP_NORM = 1.0


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
        return SplitTensors(*(t.to(device) for t in (self.input_ids, self.attention_mask,
                                                     self.labels)))

    def batch(self, idx: Any, device: Any) -> tuple[Any, Any, Any]:
        """Rows ``idx`` as (ids, mask, labels) on ``device``."""
        return tuple(t[idx].to(device, non_blocking=True)
                     for t in (self.input_ids, self.attention_mask, self.labels))


def ran_to_end(result: dict, max_epochs: int) -> bool:
    """Whether a trial's last result ends it by its own rule (max epochs or dev patience).

    Anything else that ends a trial early (ASHA) makes it a pruned trial, not a completed one.
    """
    return bool(result.get("finished")) or int(result.get("training_iteration", 0)) >= max_epochs


def pick_device() -> Any:
    """The GPU Ray assigned to this trial if there is one, else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_context(device: Any) -> Any:
    """bf16 autocast on GPUs that support it; a no-op context on CPU."""
    import contextlib

    import torch

    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def classification_metrics(labels: np.ndarray, preds: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    return {
        "mcc": float(matthews_corrcoef(labels, preds)),
        "accuracy": float(accuracy_score(labels, preds)),
        "f1": float(f1_score(labels, preds, average="macro", zero_division=0)),
    }


def count_step_flops(model: Any, batch: tuple, *, backward: bool) -> int:
    """FLOPs of one forward (and backward) pass, counted by ``torch.utils.flop_counter``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    ids, mask, labels = batch
    counter = FlopCounterMode(display=False)
    with counter:
        if backward:
            loss = torch.nn.functional.cross_entropy(model(ids, mask), labels)
            loss.backward()
        else:
            with torch.no_grad():
                model(ids, mask)
    if backward:
        model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def train_step(model: Any, optimizer: Any, batch: tuple[Any, Any, Any], device: Any) -> Any:
    """One optimisation step on a batch of (ids, mask, labels): forward (bf16 autocast on GPUs),
    cross-entropy, backward, gradient clipping, optimizer step. Returns the detached loss,
    left on the device (reading it would sync the host)."""
    import torch

    ids, mask, labels = batch
    with autocast_context(device):
        logits = model(ids, mask)
    loss = torch.nn.functional.cross_entropy(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP_NORM)
    optimizer.step()
    return loss.detach()


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


def build_model(config: dict, weights: dict[str, Any] | None = None) -> Any:
    """The classifier a trial config describes (architecture, preset, vocabulary, classes).

    A pretrained cell (``config["pretrained"]``) starts from the pretrained encoder, whose model
    folder's files arrive in ``weights`` (pretraining key -> {file name: bytes}); every other
    cell starts from the same architecture freshly initialised.
    """
    from ablate.models.registry import build_classifier
    from ablate.tokenization import PAD_ID, complement_ids, load_tokenizer

    inputs = config["inputs"]
    model_cfg = config["model"]
    pretrained = config.get("pretrained")
    if model_cfg.get("external"):
        return _external_classifier(config, (weights or {})[pretrained["key"]])
    tokenizer = load_tokenizer(Path(inputs["tokenizer_path"]))
    model = build_classifier(
        model_cfg["architecture"],
        preset=model_cfg["preset"],
        vocab_size=inputs["vocab_size"],
        num_classes=inputs["num_classes"],
        max_len=model_cfg.get("max_len") or inputs["token_limit"],
        pad_id=PAD_ID,
        dropout=float(config["hparams"]["dropout"]),
        complement_ids=complement_ids(tokenizer),
        overrides=model_cfg.get("overrides") or None,
    )
    if pretrained:
        import ray

        from ablate.models.io import load_encoder_weights

        files = (weights or {})[pretrained["key"]]
        files = ray.get(files) if isinstance(files, ray.ObjectRef) else files
        with tempfile.TemporaryDirectory() as folder:
            for name, content in files.items():
                (Path(folder) / name).write_bytes(content)
            load_encoder_weights(model, Path(folder))
    return model


def _external_classifier(config: dict, files: Any) -> Any:
    """A classifier on an external checkpoint whose files arrive through the object store."""
    import ray

    from ablate.errors import AblateError
    from ablate.models.external import build_external_classifier

    files = ray.get(files) if isinstance(files, ray.ObjectRef) else files
    with tempfile.TemporaryDirectory(prefix="external-") as folder:
        for name, content in files.items():
            (Path(folder) / name).write_bytes(content)
        model = build_external_classifier(
            folder,
            num_classes=config["inputs"]["num_classes"],
            dropout=float(config["hparams"]["dropout"]),
            trust_remote_code=bool(config["model"]["external"].get("trust_remote_code")),
        )
    if model.encoder.vocab_size < config["inputs"]["vocab_size"]:
        raise AblateError(
            f"external checkpoint vocabulary ({model.encoder.vocab_size}) is smaller than its "
            f"tokenizer's ({config['inputs']['vocab_size']})"
        )
    return model


def train_trial(
    config: dict, data: dict[str, Any] | None = None, weights: dict[str, Any] | None = None
) -> None:
    """Ray Tune function trainable; see the module docstring for the config it expects.

    ``data`` maps shard-set folders to ``SplitArrays`` (or Ray object refs to them), read once by
    the driver through Ray Data (``ablate.shards.read_shard_sets``) and shared via the object
    store. Without it the trial reads its own shard sets through Ray Data.
    """
    import logging

    import ray
    import torch
    from ray import tune
    from transformers import get_linear_schedule_with_warmup

    from ablate.models.registry import count_parameters
    from ablate.tokenization import PAD_ID

    for name in ("ray.train", "ray.tune"):  # one "checkpoint created" line per epoch is noise
        logging.getLogger(name).setLevel(logging.WARNING)
    hp = {**DEFAULT_HPARAMS, **config["hparams"]}
    seed = int(config["seed"])
    max_epochs = int(config["max_epochs"])
    patience = config.get("patience")
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    device = pick_device()

    setup_start = time.perf_counter()
    inputs = config["inputs"]
    evaluate_test = bool(config.get("evaluate_test"))
    if evaluate_test and "test" not in inputs["splits"]:
        raise FileNotFoundError(f"task {inputs['task']} has no test split to evaluate on")
    names = ["train", "dev"] + (["test"] if evaluate_test else [])
    folders = [inputs["splits"][name] for name in names]
    if data is None:
        from ablate.shards import read_shard_sets

        data = read_shard_sets(folders, PAD_ID)
    arrays = [data[f] for f in folders]
    arrays = [ray.get(a) if isinstance(a, ray.ObjectRef) else a for a in arrays]
    splits = {name: SplitTensors.from_arrays(a).resident(device)
              for name, a in zip(names, arrays, strict=True)}
    train, dev = splits["train"], splits["dev"]
    resources = config.get("resources") or {}
    hardware = current_device(float(resources.get("gpu", 0.0)), float(resources.get("cpu", 1.0)))
    energy = EnergyMeter()
    energy.start()

    model = build_model(config, weights).to(device)
    n_params = count_parameters(model)
    batch_size = int(hp["batch_size"])
    steps_per_epoch = math.ceil(len(train) / batch_size)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=float(hp["learning_rate"]), weight_decay=float(hp["weight_decay"])
    )
    total_steps = steps_per_epoch * max_epochs
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(float(hp["warmup_ratio"]) * total_steps), total_steps
    )

    # Per-sample FLOPs, counted once: every batch of a split has the same padded width.
    probe = slice(0, min(batch_size, len(train)))
    probe_batch = tuple(t[probe].to(device) for t in (train.input_ids, train.attention_mask,
                                                      train.labels))
    train_flops_per_sample = count_step_flops(model, probe_batch, backward=True) / len(
        probe_batch[2]
    )
    dev_probe = tuple(t[: min(batch_size, len(dev))].to(device)
                      for t in (dev.input_ids, dev.attention_mask, dev.labels))
    dev_flops_per_sample = count_step_flops(model, dev_probe, backward=False) / len(dev_probe[2])

    state = {"epoch": 0, "best_dev_mcc": -1.0, "best_epoch": 0, "wall_seconds": 0.0,
             "flops": 0.0}
    setup_seconds = time.perf_counter() - setup_start
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            saved = torch.load(Path(folder) / "state.pt", map_location=device, weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = saved["state"]
        best_model = saved["best_model"]
    else:
        best_model = None

    generator = torch.Generator().manual_seed(seed)
    for epoch in range(state["epoch"] + 1, max_epochs + 1):
        start = time.perf_counter()
        model.train()
        generator.manual_seed(seed * 1000 + epoch)
        order = torch.randperm(len(train), generator=generator).to(train.labels.device)
        # Summed on the device and read once per epoch: no host sync per step.
        loss_sum, seen = torch.zeros((), device=device), 0
        for step in range(steps_per_epoch):
            idx = order[step * batch_size : (step + 1) * batch_size]
            loss = train_step(model, optimizer, train.batch(idx, device), device)
            scheduler.step()
            loss_sum += loss * len(idx)
            seen += len(idx)
        train_loss = float(loss_sum) / max(seen, 1)
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"training loss became {train_loss} in epoch {epoch}")
        train_seconds = time.perf_counter() - start
        dev_metrics = evaluate(model, dev, device, batch_size=max(batch_size, 256))
        epoch_seconds = time.perf_counter() - start

        state["epoch"] = epoch
        # Wall time charged to the trial: its set-up (once per start or restart) and epochs.
        state["wall_seconds"] += epoch_seconds + setup_seconds
        setup_seconds = 0.0
        state["flops"] += train_flops_per_sample * seen + dev_flops_per_sample * len(dev)
        if best_model is None or dev_metrics["mcc"] > state["best_dev_mcc"]:
            # The checkpoint keeps the best model seen on dev next to the latest state.
            best_model = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            state["best_dev_mcc"] = dev_metrics["mcc"]
            state["best_epoch"] = epoch
        # Early stopping on dev: the same patience rule in every cell.
        out_of_patience = patience is not None and epoch - state["best_epoch"] >= int(patience)
        finished = epoch >= max_epochs or out_of_patience
        kwh = energy.kwh()
        metrics = {
            **cost_metrics(
                hardware,
                wall_seconds=state["wall_seconds"],
                flops=state["flops"],
                prices=config.get("prices"),
                energy_kwh=None if kwh is None else kwh * min(hardware.count, 1.0),
            ),
            "node_id": ray.get_runtime_context().get_node_id(),
            "device_type": hardware.kind,
            "device_name": hardware.name,
            "peak_source": hardware.peak_source,
            "flops_method": FLOPS_METHOD,
            "epoch": epoch,
            "dev_mcc": dev_metrics["mcc"],
            "dev_accuracy": dev_metrics["accuracy"],
            "dev_f1": dev_metrics["f1"],
            "dev_loss": dev_metrics["loss"],
            "train_loss": train_loss,
            "best_dev_mcc": state["best_dev_mcc"],
            "epoch_seconds": epoch_seconds,
            "wall_seconds": state["wall_seconds"],
            "flops": state["flops"],
            "train_samples_per_second": seen / max(train_seconds, 1e-9),
            "n_params": n_params,
            "best_epoch": state["best_epoch"],
            "finished": int(finished),
        }
        if finished and evaluate_test:
            # Test is touched once, by the model chosen on dev.
            model.load_state_dict(best_model)
            test = evaluate(model, splits["test"], device, batch_size=max(batch_size, 256))
            metrics.update({f"test_{k}": v for k, v in test.items()})
            metrics["flops"] += dev_flops_per_sample * len(splits["test"])
        with tempfile.TemporaryDirectory() as folder:
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "state": state,
                    "best_model": best_model,
                },
                Path(folder) / "state.pt",
            )
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
        if finished:
            break
