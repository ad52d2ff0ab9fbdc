import numpy as np
import pytest
import torch

from ablate.models.registry import build_classifier
from ablate.shards import SplitArrays
from ablate.training import (
    SplitTensors,
    autocast_context,
    classification_metrics,
    count_step_flops,
    evaluate,
    pick_device,
)

# set-up outside a Tune session: Ray warns that there is no checkpoint to restore from
pytestmark = pytest.mark.filterwarnings("ignore:`get_checkpoint` is meant:UserWarning")


def tiny_batch(rows=8, width=12, vocab=10):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (rows, width), generator=generator)
    mask = torch.ones_like(ids)
    labels = torch.arange(rows) % 2
    return ids, mask, labels


@pytest.mark.parametrize("arch", ["convnova", "transformer"])
def test_flop_count_scales_with_batch_and_backward(arch):
    model = build_classifier(arch, preset="tiny", vocab_size=10, num_classes=2, max_len=16)
    small = count_step_flops(model, tiny_batch(rows=4), backward=False)
    large = count_step_flops(model, tiny_batch(rows=8), backward=False)
    train = count_step_flops(model, tiny_batch(rows=8), backward=True)
    assert small > 0
    assert large == pytest.approx(2 * small, rel=0.01)
    assert 2.5 * large <= train <= 3.5 * large  # backward costs about twice the forward
    assert all(p.grad is None for p in model.parameters())  # counting leaves no gradients


def test_classification_metrics_hand_computed():
    labels = np.array([0, 0, 1, 1])
    metrics = classification_metrics(labels, np.array([0, 1, 1, 1]))
    assert metrics["accuracy"] == pytest.approx(0.75)
    # MCC = (TP*TN - FP*FN) / sqrt(...) = (2*1 - 1*0) / sqrt(3*2*2*1)
    assert metrics["mcc"] == pytest.approx(2 / np.sqrt(12))
    assert classification_metrics(labels, np.zeros(4, dtype=int))["mcc"] == 0.0


def test_evaluate_matches_manual_loss():
    model = build_classifier("transformer", preset="tiny", vocab_size=10, num_classes=2,
                             max_len=16)
    ids, mask, labels = tiny_batch(rows=10)
    split = SplitTensors(ids, mask, labels)
    metrics = evaluate(model, split, torch.device("cpu"), batch_size=3)
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(model(ids, mask), labels).item()
    assert metrics["loss"] == pytest.approx(expected, rel=1e-5)
    assert -1.0 <= metrics["mcc"] <= 1.0


def test_split_tensors_from_arrays():
    arrays = SplitArrays(np.array([[1, 5, 2, 3]], dtype=np.int32), np.array([3], dtype=np.int32),
                         np.array([1]))
    tensors = SplitTensors.from_arrays(arrays)
    assert tensors.input_ids.dtype == torch.int64
    assert tensors.attention_mask.tolist() == [[1, 1, 1, 0]]
    assert len(tensors) == 1


def test_cpu_device_has_no_autocast():
    device = pick_device()
    if device.type == "cpu":
        with autocast_context(device):
            assert not torch.is_autocast_enabled("cpu")


# --- a trial's set-up and epochs, on tiny models and data -------------------------------------


def tiny_inputs(num_classes=2, vocab=10):
    from ablate.shards import TaskInputs

    return TaskInputs(task="tiny/task", tokenizer="char", tokenizer_path="", vocab_size=vocab,
                      num_classes=num_classes, length_bp=12, token_limit=16,
                      splits={"train": "train", "dev": "dev", "test": "test"},
                      complement_ids=tuple(range(vocab)))


def tiny_plan(arch="transformer", *, metric="mcc", micro=None, max_epochs=2, patience=None,
              source=None, overrides=None, num_classes=2):
    from ablate.spec import Cell
    from ablate.trial import CellPlan, ModelPlan, ModelSource, Resources

    return CellPlan(
        cell=Cell(arch, "none", "char", "tiny/task"), inputs=tiny_inputs(num_classes),
        model=ModelPlan(arch, "tiny", dict(overrides or {}), token_limit=16),
        source=source or ModelSource(), resources=Resources(cpu=1), prices={},
        max_epochs=max_epochs, patience=patience, metric=metric, micro_batch_size=micro,
    )


def tiny_split(rows, seed, num_classes=2, width=12, vocab=10):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, rows)
    ids = rng.integers(5, vocab, (rows, width)).astype(np.int32)
    ids[:, 0] = 5 + labels  # a learnable signal
    lengths = rng.integers(width // 2, width + 1, rows).astype(np.int32)
    for row, length in enumerate(lengths):
        ids[row, length:] = 3
    return SplitArrays(ids, lengths, labels)


def tiny_arrays(num_classes=2):
    return {name: tiny_split(rows, seed, num_classes)
            for name, rows, seed in (("train", 12, 0), ("dev", 10, 1), ("test", 9, 2))}


def tiny_trial(stage="trial", seed=7, model_params=None, **hparams):
    from ablate.trial import TrialConfig

    values = {"learning_rate": 1e-2, "weight_decay": 0.0, "dropout": 0.0, "batch_size": 4,
              **hparams}
    return TrialConfig("cell", values, seed, stage=stage, model_params=dict(model_params or {}))


@pytest.fixture(scope="module")
def local_ray():
    # epoch metrics carry the Ray node id
    import ray

    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def test_task_score_is_the_plan_metric():
    from ablate.training import task_score

    metrics = {"mcc": 0.2, "f1": 0.7, "accuracy": 0.9}
    assert task_score(metrics, "mcc") == 0.2
    assert task_score(metrics, "f1_macro") == 0.7
    with pytest.raises(ValueError, match="accuracy"):
        task_score(metrics, "accuracy")


@pytest.mark.parametrize("metric, best_epoch", [("mcc", 2), ("f1_macro", 1)])
def test_best_model_and_epoch_follow_the_task_score(metric, best_epoch):
    from ablate.training import _keep_if_best, setup_trial

    run = setup_trial(tiny_trial(), tiny_plan(metric=metric), tiny_arrays(), None)
    kept = {}
    for epoch, dev in ((1, {"mcc": 0.5, "f1": 0.8}), (2, {"mcc": 0.6, "f1": 0.7}),
                       (3, {"mcc": 0.1, "f1": 0.1})):
        with torch.no_grad():
            for param in run.model.parameters():
                param.fill_(float(epoch))
        _keep_if_best(run, epoch, dev)
        kept[epoch] = dev
    progress = run.progress
    assert progress.best_epoch == best_epoch
    assert progress.best_dev_mcc == kept[best_epoch]["mcc"]
    assert progress.best_dev_score == kept[best_epoch]["mcc" if metric == "mcc" else "f1"]
    assert all((value == best_epoch).all() for value in run.best_model.values()
               if value.is_floating_point())


def test_epochs_report_the_task_score_seed_and_test_score(local_ray):
    from ablate.training import run_epochs, setup_trial

    plan = tiny_plan("convnova", metric="f1_macro", max_epochs=3, num_classes=3)
    run = setup_trial(tiny_trial("replicate", seed=11), plan, tiny_arrays(num_classes=3), None)
    reports = []
    run_epochs(run, report=lambda _run, metrics: reports.append(dict(metrics)))
    assert [m["epoch"] for m in reports] == [1, 2, 3]
    assert all(m["seed"] == 11 for m in reports)
    assert all(m["dev_score"] == m["dev_f1"] for m in reports)
    best = max(range(3), key=lambda i: (reports[i]["dev_f1"], -i))  # the first best
    assert reports[-1]["best_dev_score"] == reports[best]["dev_f1"]
    assert reports[-1]["best_epoch"] == best + 1
    assert reports[-1]["best_dev_mcc"] == reports[best]["dev_mcc"]
    assert [m["best_dev_score"] for m in reports] == [
        max(m["dev_f1"] for m in reports[: i + 1]) for i in range(3)]
    last = reports[-1]
    assert last["finished"] == 1 and last["test_score"] == last["test_f1"]
    assert "test_score" not in reports[0]


def test_patience_counts_from_the_best_score(local_ray):
    from ablate.training import run_epochs, setup_trial

    # a learning rate of 0 leaves the model, and so its dev score, unchanged: epoch 1 is best
    plan = tiny_plan(metric="f1_macro", max_epochs=6, patience=2)
    run = setup_trial(tiny_trial(learning_rate=0.0), plan, tiny_arrays(), None)
    reports = []
    run_epochs(run, report=lambda _run, metrics: reports.append(metrics))
    assert [m["epoch"] for m in reports] == [1, 2, 3]
    assert reports[-1]["finished"] == 1 and reports[-1]["best_epoch"] == 1


def test_progress_loads_checkpoints_saved_before_the_task_score():
    from dataclasses import asdict

    from ablate.training import Progress

    old = {"epoch": 3, "best_dev_mcc": 0.4, "best_epoch": 2, "wall_seconds": 1.5, "flops": 9.0}
    progress = Progress.from_state(old, "mcc")
    assert (progress.epoch, progress.best_epoch, progress.best_dev_mcc) == (3, 2, 0.4)
    assert progress.best_dev_score == 0.4  # it kept its best model on MCC, the task's score
    # for another metric the old best's score is unknown: any next epoch's score beats it
    assert Progress.from_state(old, "f1_macro").best_dev_score < 0.0
    assert Progress.from_state(old, "f1_macro").best_dev_mcc == 0.4
    new = Progress(epoch=1, best_dev_score=0.7, best_dev_mcc=0.3, best_epoch=1)
    assert Progress.from_state(asdict(new), "f1_macro") == new


def test_schedules_and_warmup():
    from ablate.errors import AblateError
    from ablate.training import make_scheduler, warmup_steps

    assert warmup_steps({"warmup_ratio": 0.25}, 40) == 10
    assert warmup_steps({"warmup_ratio": 0.25, "warmup_steps": 3}, 40) == 3  # steps win
    assert warmup_steps({}, 40) == 4  # the default ratio, 0.1
    assert warmup_steps({"warmup_steps": 100}, 40) == 40

    def lr_at(hparams, step, total=110):
        param = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.SGD([param], lr=1.0)
        scheduler = make_scheduler(optimizer, hparams, total)
        for _ in range(step):
            optimizer.step()
            scheduler.step()
        return optimizer.param_groups[0]["lr"]

    # 10 warm-up steps, then 100 of decay; step 35 is a quarter of the way down
    assert lr_at({"warmup_steps": 10}, 5) == pytest.approx(0.5)
    assert lr_at({"warmup_steps": 10}, 10) == pytest.approx(1.0)
    assert lr_at({"warmup_steps": 10}, 35) == pytest.approx(0.75)  # linear is the default
    cosine = {"warmup_steps": 10, "warmup_ratio": 0.5, "schedule": "cosine"}
    assert lr_at(cosine, 10) == pytest.approx(1.0)
    assert lr_at(cosine, 35) == pytest.approx(0.5 * (1 + np.cos(np.pi / 4)))
    assert lr_at({"warmup_ratio": 0.5, "schedule": "cosine"}, 55) == pytest.approx(1.0)
    with pytest.raises(AblateError, match="schedule"):
        lr_at({"schedule": "constant"}, 0)


def _grads(model):
    return [None if p.grad is None else p.grad.clone() for p in model.parameters()]


def test_accumulated_step_equals_the_full_batch_step():
    import copy

    from ablate.training import accumulate_gradients, classification_loss, train_step

    torch.manual_seed(0)
    model = build_classifier("transformer", preset="tiny", vocab_size=10, num_classes=2,
                             max_len=16, dropout=0.0)
    ids, mask, labels = tiny_batch(rows=8)
    mask[:, 9:] = 0  # rows of uneven length
    batch, cpu = (ids, mask, labels), torch.device("cpu")
    twin = copy.deepcopy(model)

    full = classification_loss(model, *batch)
    full.backward()
    passes = []
    hook = twin.register_forward_hook(lambda _m, args, _out: passes.append(len(args[0])))
    loss = accumulate_gradients(twin, batch, cpu, 3)
    hook.remove()
    assert passes == [3, 3, 2]  # ceil(8 / 3) passes
    assert loss.item() == pytest.approx(full.item(), rel=1e-6)
    for a, b in zip(_grads(model), _grads(twin), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)

    model.zero_grad()
    twin.zero_grad()
    whole = torch.optim.SGD(model.parameters(), lr=0.5)
    parts = torch.optim.SGD(twin.parameters(), lr=0.5)
    assert train_step(model, whole, batch, cpu).item() == pytest.approx(
        train_step(twin, parts, batch, cpu, micro_batch_size=3).item(), rel=1e-6)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # a limit at or above the batch takes the batch in one pass
    assert train_step(model, whole, batch, cpu, micro_batch_size=8).item() == pytest.approx(
        train_step(twin, parts, batch, cpu).item(), rel=1e-5)


def test_micro_batches_train_like_the_global_batch_and_count_optimizer_steps():
    from ablate.training import setup_trial, train_epoch

    hparams = {"schedule": "cosine", "warmup_steps": 2, "learning_rate": 1e-3}
    runs = [setup_trial(tiny_trial(**hparams), tiny_plan(micro=micro), tiny_arrays(), None)
            for micro in (None, 2)]
    whole, parts = runs
    assert (whole.micro_batch_size, parts.micro_batch_size) == (None, 2)
    assert parts.eval_batch_size == 2
    # FLOPs stay per sample whatever the pass size
    assert parts.train_flops_per_sample == pytest.approx(whole.train_flops_per_sample, rel=0.01)
    for run in runs:
        train_epoch(run, 1)
    # 12 rows in global batches of 4: 3 optimizer steps of 6 in two epochs
    assert parts.scheduler.last_epoch == whole.scheduler.last_epoch == 3
    expected = 1e-3 * 0.5 * (1 + np.cos(np.pi * (3 - 2) / (6 - 2)))
    assert parts.optimizer.param_groups[0]["lr"] == pytest.approx(expected)
    for a, b in zip(whole.model.parameters(), parts.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch, field, value", [("transformer", "n_layers", 1),
                                                ("convnova", "kernel_size", 5)])
def test_model_params_reach_the_model(arch, field, value):
    from ablate.training import build_model

    plan = tiny_plan(arch, overrides={field: 3, "hidden_size": 16})
    assert getattr(build_model(plan, tiny_trial()).encoder.config, field) == 3
    model = build_model(plan, tiny_trial(model_params={field: value}))
    assert getattr(model.encoder.config, field) == value  # the searched value wins
    assert model.encoder.config.hidden_size == 16  # the plan's other overrides stay


def test_pad_id_comes_from_the_task_inputs_when_they_name_one():
    from types import SimpleNamespace

    from ablate.tokenization import PAD_ID
    from ablate.training import pad_id

    assert pad_id(tiny_inputs()) == PAD_ID
    assert pad_id(SimpleNamespace(pad_id=0)) == 0


@pytest.mark.parametrize("kind", ["external", "external-config"])
def test_external_checkpoint_and_its_random_init_twin(tmp_path, kind):
    from transformers import BertModel

    from ablate.training import build_model
    from ablate.trial import ModelSource
    from tests.test_external import make_checkpoint

    folder = make_checkpoint(tmp_path / "ckpt")
    files = {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}
    saved = BertModel.from_pretrained(folder).embeddings.word_embeddings.weight.detach()
    source = ModelSource(kind=kind, weights_key="ckpt")
    plan = tiny_plan(source=source, num_classes=3)
    model = build_model(plan, tiny_trial(dropout=0.3), {"ckpt": files})
    assert model(*tiny_batch(rows=2)[:2]).shape == (2, 3)
    same_shape = [t for t in model.state_dict().values() if t.shape == saved.shape]
    assert same_shape
    assert any(torch.equal(t, saved) for t in same_shape) == (kind == "external")
    dropouts = {m.p for m in model.encoder.modules() if isinstance(m, torch.nn.Dropout)}
    assert 0.3 in dropouts  # the searched dropout reaches the backbone
    with pytest.raises(Exception, match="model_params"):
        build_model(plan, tiny_trial(model_params={"n_layers": 1}), {"ckpt": files})


def test_a_nan_loss_ends_the_trial_with_one_report_of_its_failure(local_ray):
    from ablate.tracking.schema import FailureKind, MetricName
    from ablate.training import run_epochs, setup_trial
    from ablate.trial import ran_to_end

    # A learning rate this large blows the weights up at the first step.
    run = setup_trial(tiny_trial("replicate", learning_rate=1e30), tiny_plan("cnn", max_epochs=3),
                      tiny_arrays(), None)
    reports = []
    run_epochs(run, report=lambda _run, metrics: reports.append(dict(metrics)))
    (failed,) = reports
    assert failed[MetricName.MODEL_FAILURE] == 1 and failed["failure"] == FailureKind.NAN_LOSS
    assert failed["epoch"] == 1 and failed["finished"] == 0
    assert MetricName.TEST_SCORE not in failed and MetricName.DEV_SCORE not in failed
    assert failed[MetricName.BEST_DEV_SCORE] == -1.0  # no epoch reached dev
    # Its cost so far: set-up and the failed epoch, whose steps all ran.
    assert failed[MetricName.WALL_SECONDS] > 0 and failed[MetricName.DEVICE_HOURS] > 0
    assert failed[MetricName.FLOPS] == pytest.approx(run.train_flops_per_sample * 12)
    # Even at its last epoch, a failed model never ran to its end (no replicate, no COMPLETE).
    assert not ran_to_end({**failed, "training_iteration": 3}, 3)


def test_out_of_memory_at_its_own_batch_is_a_model_failure(local_ray):
    from ablate.tracking.schema import FailureKind, MetricName
    from ablate.training import run_epochs, setup_trial

    run = setup_trial(tiny_trial(), tiny_plan(max_epochs=3), tiny_arrays(), None)
    reports = []

    def exhausted(*_):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def report(run, metrics):
        reports.append(dict(metrics))
        run.model.register_forward_pre_hook(exhausted)  # the next epoch's batch does not fit

    run_epochs(run, report)
    first, failed = reports
    assert failed["failure"] == FailureKind.OUT_OF_MEMORY and failed["epoch"] == 2
    assert failed[MetricName.MODEL_FAILURE] == 1
    assert failed[MetricName.BEST_DEV_SCORE] == first[MetricName.BEST_DEV_SCORE]
    assert failed[MetricName.WALL_SECONDS] >= first[MetricName.WALL_SECONDS]
    assert failed[MetricName.FLOPS] == first[MetricName.FLOPS]  # no step of epoch 2 finished


def test_a_model_too_large_for_its_device_fails_in_its_set_up(local_ray):
    from ablate.tracking.schema import FailureKind, MetricName
    from ablate.training import report_setup_failure
    from ablate.trial import ran_to_end

    reports = []
    report_setup_failure(tiny_trial(), tiny_plan(max_epochs=3), 2.5, report=reports.append)
    (failed,) = reports
    assert failed["failure"] == FailureKind.OUT_OF_MEMORY
    assert failed[MetricName.MODEL_FAILURE] == 1 and failed["epoch"] == 1
    assert failed[MetricName.WALL_SECONDS] == 2.5  # its set-up is charged
    assert failed[MetricName.DEVICE_HOURS] == pytest.approx(2.5 / 3600 * failed["device_count"])
    assert MetricName.N_PARAMS not in failed  # it was never built
    assert MetricName.BEST_DEV_SCORE in failed  # Tune's searcher metric is in every result
    assert not ran_to_end(failed, 3)


def test_a_trial_starts_alike_whatever_ran_before_it_in_its_process():
    """Tune reuses a worker process for the next trial: a trial's initial weights (and the
    dropout draws after them) depend on its seed alone, not on whether the process had to
    measure its CPU peak first (it draws random matrices, once per process) or trained
    another trial before it."""
    import torch

    from ablate import cost
    from ablate.training import setup_trial

    def start() -> list:
        run = setup_trial(tiny_trial("trial", seed=6), tiny_plan("cnn"), tiny_arrays(), None)
        return [p.detach().clone() for p in run.model.parameters()] + [torch.rand(4)]

    cost._CPU_PEAKS.clear()  # as in a fresh process: the first set-up measures the peak
    first = start()
    torch.rand(1000)  # what an earlier trial leaves in the global generator
    again = start()  # the peak is known now
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
