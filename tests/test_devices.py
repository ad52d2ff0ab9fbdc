"""Which device a trial trains on, what it is billed for, its precision and its memory.

Real torch and a real local Ray throughout. Where this machine has no GPU, CUDA is made to look
available (``torch.cuda.is_available``) only to show that Ray's assignment, not CUDA, decides;
tests that need a real GPU are skipped without one.
"""

import copy

import pytest
import torch

from ablate.cost import current_device
from ablate.models.registry import build_classifier
from ablate.spec import ResourcesSpec
from ablate.tracking.schema import FailureKind, MetricName
from ablate.training import (
    BF16,
    FP16,
    FP32,
    accumulate_gradients,
    autocast_context,
    grad_scaler,
    pick_device,
    precision,
    train_step,
)
from tests.test_training import tiny_arrays, tiny_batch, tiny_plan, tiny_trial

HAS_GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")
CPU = torch.device("cpu")

pytestmark = pytest.mark.filterwarnings("ignore:`get_checkpoint` is meant:UserWarning")


@pytest.fixture(scope="module")
def ray_with_a_gpu():
    """A local Ray with one GPU in its resources (declared where the machine has none: Ray then
    assigns its id and sets ``CUDA_VISIBLE_DEVICES`` all the same)."""
    import ray

    ray.init(
        address="local", num_cpus=2, num_gpus=1, include_dashboard=False, logging_level="WARNING"
    )
    yield
    ray.shutdown()


def _device_in_worker() -> tuple[str, list, str | None]:
    """pick_device() in a Ray worker, as a GPU machine would see it: CUDA available."""
    import os

    import ray

    real = torch.cuda.is_available
    if not real():
        torch.cuda.is_available = lambda: True
    try:
        return str(pick_device()), ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES")
    finally:
        torch.cuda.is_available = real


# --- the device: Ray's assignment decides -----------------------------------------------------


def test_a_worker_given_a_gpu_trains_on_it(ray_with_a_gpu):
    import ray

    device, ids, visible = ray.get(ray.remote(num_gpus=1)(_device_in_worker).remote())
    assert ids and visible == ",".join(str(i) for i in ids)
    assert device == "cuda:0"  # the one GPU CUDA_VISIBLE_DEVICES leaves the process


def test_a_worker_given_no_gpu_trains_on_cpu_though_cuda_sees_one(ray_with_a_gpu):
    import ray

    task = ray.remote(num_gpus=0)(_device_in_worker)
    device, ids, _ = ray.get(task.remote())
    assert ids == [] and device == "cpu"

    @ray.remote(num_cpus=1, num_gpus=0)
    class Trial:  # a Tune trial runs in an actor like this one
        def device(self):
            return _device_in_worker()

    actor = Trial.remote()
    assert ray.get(actor.device.remote())[0] == "cpu"
    ray.kill(actor)


def test_outside_ray_any_visible_gpu_is_used(monkeypatch):
    import ray

    assert not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE
    assert pick_device().type == ("cuda" if HAS_GPU else "cpu")
    if not HAS_GPU:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        assert pick_device().type == "cuda"


# --- billing: the device trained on, the share reserved ----------------------------------------


def test_a_trial_that_reserved_no_gpu_is_billed_as_cpu(monkeypatch):
    if not HAS_GPU:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU is visible
    for hardware in (current_device(0.0, 4), current_device(0.0, 4, CPU)):
        assert (hardware.kind, hardware.name, hardware.count) == ("cpu", "cpu", 4)
    # the picked device decides: a trial on CPU is billed for its cores whatever it reserved
    assert current_device(0.5, 2, CPU).kind == "cpu"
    assert current_device(0.5, 2, CPU).count == 2


@needs_gpu
@pytest.mark.parametrize("fraction, billed", [(0.25, 0.25), (1.0, 1.0), (0.0, 1.0)])
def test_a_gpu_is_billed_for_its_share(fraction, billed):
    hardware = current_device(fraction, 4, torch.device("cuda:0"))
    assert hardware.kind == "gpu" and hardware.count == billed
    assert hardware.name == torch.cuda.get_device_name(0)


# --- resources: one device per trial ----------------------------------------------------------


@pytest.mark.parametrize("gpu", [0, 0.25, 0.5, 1, 1.0])
def test_a_trial_reserves_at_most_one_gpu(gpu):
    assert ResourcesSpec(gpu=gpu).gpu == gpu


@pytest.mark.parametrize("gpu", [2, 1.5, 8])
def test_multi_gpu_trials_are_refused(gpu):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="multi-GPU trials are not supported"):
        ResourcesSpec(gpu=gpu)


# --- precision ---------------------------------------------------------------------------------


def test_cpu_trains_in_float32_without_a_loss_scale():
    assert precision(CPU) == FP32
    with autocast_context(CPU):
        assert not torch.is_autocast_enabled("cpu")
        assert not torch.is_autocast_enabled("cuda")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scaler = grad_scaler(optimizer, CPU)
    assert not scaler.is_enabled()
    assert grad_scaler(optimizer, CPU) is scaler  # one per optimizer, kept step to step


def _tiny_model():
    torch.manual_seed(0)
    return build_classifier(
        "transformer", preset="tiny", vocab_size=10, num_classes=2, max_len=16, dropout=0.0
    )


@pytest.mark.parametrize("micro", [None, 3])
def test_a_scaled_step_equals_the_unscaled_step(micro):
    """A loss scale (fp16's) leaves the step unchanged: the gradients are unscaled before they
    are clipped, in the accumulated step too. A large learning rate makes clipping matter."""
    model = _tiny_model()
    twin = copy.deepcopy(model)
    batch = tiny_batch(rows=8)
    plain = torch.optim.SGD(model.parameters(), lr=5.0)
    scaled = torch.optim.SGD(twin.parameters(), lr=5.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    for _ in range(2):
        a = train_step(model, plain, batch, CPU, micro_batch_size=micro)
        b = train_step(twin, scaled, batch, CPU, micro_batch_size=micro, scaler=scaler)
        assert a.item() == pytest.approx(b.item(), rel=1e-5)  # the loss, unscaled
    assert scaler.get_scale() == 2.0**12  # nothing overflowed
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_a_step_whose_scaled_gradients_overflow_is_skipped():
    model = _tiny_model()
    before = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)

    def overflowing(model, ids, mask, labels):
        return model(ids, mask).float().sum() * float("inf")

    train_step(model, optimizer, tiny_batch(rows=4), CPU, overflowing, scaler=scaler)
    assert scaler.get_scale() == 2.0**11  # backed off
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, before[name])


def test_accumulating_with_a_scaler_sums_scaled_gradients():
    model = _tiny_model()
    twin = copy.deepcopy(model)
    batch = tiny_batch(rows=8)
    accumulate_gradients(model, batch, CPU, 3)
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    accumulate_gradients(twin, batch, CPU, 3, scaler=scaler)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        if p.grad is not None:
            torch.testing.assert_close(p.grad * 8.0, q.grad, rtol=1e-5, atol=1e-6)


@needs_gpu
def test_gpus_autocast_in_bf16_where_native_else_fp16():
    device = torch.device("cuda:0")
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    assert precision(device) == (BF16 if native else FP16)
    with autocast_context(device):
        assert torch.get_autocast_dtype("cuda") == (torch.bfloat16 if native else torch.float16)
    model = _tiny_model().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = tuple(t.to(device) for t in tiny_batch(rows=8))
    assert grad_scaler(optimizer, device).is_enabled() == (not native)
    for micro in (None, 3):
        assert torch.isfinite(train_step(model, optimizer, batch, device, micro_batch_size=micro))


# --- what a trial reports ----------------------------------------------------------------------


def test_a_trial_reports_its_precision_and_its_gpu_memory_only_on_a_gpu(ray_with_a_gpu):
    from ablate.training import setup_trial, trial_cost

    run = setup_trial(tiny_trial(), tiny_plan(), tiny_arrays(), None)
    cost = trial_cost(run)
    mode = precision(run.device)
    assert cost[MetricName.BF16_AUTOCAST] == float(mode == BF16)
    assert cost[MetricName.FP16_AUTOCAST] == float(mode == FP16)
    if run.device.type == "cuda":
        assert cost[MetricName.PEAK_GPU_MEMORY_GB] > 0
    else:
        assert (cost[MetricName.BF16_AUTOCAST], cost[MetricName.FP16_AUTOCAST]) == (0.0, 0.0)
        assert MetricName.PEAK_GPU_MEMORY_GB not in cost


def test_out_of_memory_in_a_micro_batch_is_a_model_failure(ray_with_a_gpu):
    from ablate.training import run_epochs, setup_trial

    run = setup_trial(
        tiny_trial(batch_size=4), tiny_plan(micro=2, max_epochs=3), tiny_arrays(), None
    )
    assert run.micro_batch_size == 2
    passes, reports = [], []

    def second_micro_batch_fails(*_):
        passes.append(1)
        if len(passes) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def report(run, metrics):
        reports.append(dict(metrics))
        run.model.register_forward_pre_hook(second_micro_batch_fails)

    run_epochs(run, report)
    first, failed = reports
    assert failed["failure"] == FailureKind.OUT_OF_MEMORY and failed["epoch"] == 2
    assert failed[MetricName.MODEL_FAILURE] == 1
    assert failed[MetricName.FLOPS] == first[MetricName.FLOPS]  # no step of epoch 2 finished
