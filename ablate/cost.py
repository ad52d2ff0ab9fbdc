"""What a run costs: device, device-hours, FLOPs, achieved FLOP/s and MFU, energy, price.

Measured where it can be: wall time by the clock, FLOPs by ``torch.utils.flop_counter`` (the
method is recorded with every run), energy from NVML's cumulative energy counter of the GPU the
process trains on. The peak used for MFU comes from a table of vendor figures (dense bf16/fp16
tensor throughput) on GPUs and, on CPU, from a large matmul timed on the threads the process
uses. Prices come from the study's price table, matched to the device's name like the peaks.

Device-hours are what a run is billed for: on GPUs, GPU-hours (fractions of a GPU attributed);
on CPU, core-hours (the CPUs reserved). The two are never added together.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

FLOPS_METHOD = "torch.utils.flop_counter"
UNPRICED = "unpriced"  # the price source of a device the price table does not cover
KINDS = ("cpu", "gpu")  # device kinds; a price-table key equal to one prices that whole kind


class Peak(NamedTuple):
    """A device's peak FLOP/s and where the figure comes from."""

    flops: float
    source: str


def _datasheet(part: str, precision: str = "dense bf16") -> str:
    return f"datasheet:NVIDIA {part}, {precision}"


# Dense (not sparse) bf16 tensor-core peak in FLOP/s, fp16 where the part has no bf16 (V100,
# T4), from the vendors' datasheets. Keys are matched to device names by ``match_device``: all
# of a key's words must be in the name, the key with the most words (then the longest) wins,
# so "H100 PCIe" takes "NVIDIA H100 PCIe" and "H100" the SXM part ("NVIDIA H100 80GB HBM3").
GPU_PEAK_FLOPS: dict[str, Peak] = {
    "H100": Peak(989.4e12, _datasheet("H100 SXM")),
    "H100 PCIe": Peak(756e12, _datasheet("H100 PCIe")),
    "H100 NVL": Peak(835.5e12, _datasheet("H100 NVL")),
    "H200": Peak(989.4e12, _datasheet("H200 SXM")),
    "H200 NVL": Peak(835.5e12, _datasheet("H200 NVL")),
    "GH200": Peak(989.4e12, _datasheet("GH200 Grace Hopper Superchip (its H100/H200 GPU)")),
    "B200": Peak(2250e12, _datasheet("HGX B200, per GPU")),
    "A100": Peak(312e12, _datasheet("A100 (SXM and PCIe)")),
    "L40S": Peak(362.05e12, _datasheet("L40S")),
    "L40": Peak(181.05e12, _datasheet("L40")),
    "L4": Peak(121e12, _datasheet("L4")),
    "A10G": Peak(70e12, "vendor figure:NVIDIA A10G (AWS G5 instances), dense bf16"),
    "A10": Peak(125e12, _datasheet("A10")),
    "A40": Peak(149.7e12, _datasheet("A40")),
    "RTX A6000": Peak(154.8e12, _datasheet("RTX A6000")),
    "A30": Peak(165e12, _datasheet("A30")),
    "RTX 4090": Peak(
        165.2e12, _datasheet("GeForce RTX 4090 (Ada whitepaper)", "dense bf16 with fp32 accumulate")
    ),
    "V100": Peak(125e12, _datasheet("V100 SXM2", "dense fp16 (no bf16)")),
    "V100 PCIe": Peak(112e12, _datasheet("V100 PCIe", "dense fp16 (no bf16)")),
    "V100S": Peak(130e12, _datasheet("V100S PCIe", "dense fp16 (no bf16)")),
    "T4": Peak(65e12, _datasheet("T4", "dense fp16 (no bf16)")),
}

CPU_PEAK_SIZE = 1024  # side of the float32 matmul that measures a CPU peak
_CPU_PEAKS: dict[int, float] = {}  # measured CPU peak FLOP/s by torch thread count


@dataclass(frozen=True)
class Device:
    """Where a run executes.

    Attributes:
        kind: ``"cpu"`` or ``"gpu"``.
        name: The device's name (``torch.cuda.get_device_name`` on GPUs, ``"cpu"`` on CPU).
        count: What the run is billed for per hour of wall time: the share of a GPU (fractions
            allowed), or the CPUs reserved (device-hours on CPU are core-hours).
        peak_flops: On GPUs the datasheet peak of one device; on CPU the measured peak of this
            process (on the threads it uses, which Ray sets from the reservation).
        peak_source: Where ``peak_flops`` comes from.
    """

    kind: str
    name: str
    count: float
    peak_flops: float
    peak_source: str

    @property
    def available_peak_flops(self) -> float:
        """The peak the run could reach: the process's measured peak on CPU, the datasheet
        peak times the share of the GPU on GPUs."""
        return self.peak_flops if self.kind == "cpu" else self.peak_flops * self.count


# --- matching names to table keys ---------------------------------------------------------


def _words(text: str) -> tuple[str, ...]:
    return tuple(re.findall(r"[a-z0-9]+", text.lower()))


def match_device(keys: Iterable[str], name: str, kind: str | None = None) -> str | None:
    """The table key that matches a device, most specific first; None when none does.

    A key matches when all its words (runs of letters and digits, case-insensitive) are words of
    ``name``: ``"A100"`` matches ``"NVIDIA A100-SXM4-80GB"``, ``"L4"`` does not match
    ``"NVIDIA L40S"``. Among matching keys the one with the most words wins, then the longest,
    then the first in alphabetical order. Keys equal to a device kind (``"cpu"``, ``"gpu"``)
    match by ``kind`` only, after every name key.
    """
    keys = list(keys)
    words = set(_words(name))
    named = [
        k for k in keys if k.strip().lower() not in KINDS and _words(k) and set(_words(k)) <= words
    ]
    if named:
        return min(named, key=lambda k: (-len(_words(k)), -len(k), k))
    if kind is not None:
        for key in keys:
            if key.strip().lower() == kind.lower():
                return key
    return None


def gpu_peak(name: str) -> tuple[float, str]:
    """Peak FLOP/s of a GPU by its name (as ``torch.cuda.get_device_name`` gives it), and where
    the figure comes from; NaN and the reason for a GPU the table does not know."""
    key = match_device(GPU_PEAK_FLOPS, name)
    if key is None:
        return float("nan"), f"unknown GPU {name!r}: no peak, MFU not computed"
    return GPU_PEAK_FLOPS[key]


def price_for(prices: Mapping[str, float] | None, kind: str, name: str) -> tuple[float | None, str]:
    """Price per device-hour of a device from a price table, and its source.

    ``prices`` maps device names or kinds to a price per device-hour (per GPU-hour on GPUs, per
    core-hour on CPU), e.g. ``{"A100": 2.5, "cpu": 0.05}``. Keys are matched to ``name`` like
    the peak table (``match_device``: case-insensitive, most specific first), then to ``kind``.
    Returns ``(price, key)``, or ``(None, "unpriced")`` when no key matches.
    """
    key = match_device(prices or {}, name, kind)
    if key is None:
        return None, UNPRICED
    return float(prices[key]), key  # type: ignore[index]


# --- the device a process trains on -------------------------------------------------------


def measure_cpu_peak(size: int = CPU_PEAK_SIZE, repeats: int = 3) -> float:
    """FLOP/s of a large float32 matmul on this process's threads (best of ``repeats``)."""
    import torch

    # Its own generator: the process's global one seeds the next trial's model, which must not
    # depend on whether this process measured its peak before (it does so once).
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def cpu_peak() -> tuple[float, str]:
    """Peak FLOP/s of this process on CPU, measured once per thread count, and its source.

    The threads are ``torch.get_num_threads()``: what the process actually uses (Ray sets them
    from the trial's CPU reservation), so MFU compares the run with what those threads can do.
    """
    import torch

    threads = torch.get_num_threads()
    if threads not in _CPU_PEAKS:
        _CPU_PEAKS[threads] = measure_cpu_peak()
    return _CPU_PEAKS[threads], (
        f"measured: float32 matmul {CPU_PEAK_SIZE}^3 on {threads} "
        f"thread{'s' if threads != 1 else ''}"
    )


def current_device(gpu_fraction: float = 0.0, cpus: float = 1.0, device: Any = None) -> Device:
    """The device this process trains on, with the share of it the run is billed for.

    ``device`` is the torch device the process trains on (``ablate.training.pick_device``).
    Without it, the process is taken to train on a GPU only where it reserved one
    (``gpu_fraction > 0``) and CUDA sees one: a run that reserved no GPU is billed as CPU, even
    where GPUs are visible (Ray no longer hides them from such a worker).

    On a GPU (the current CUDA device): its name, ``gpu_fraction`` (a fraction is billed as
    that fraction; 1 where the device is a GPU nothing reserved, outside Ray) and the datasheet
    peak. On CPU: ``cpus`` (the CPUs reserved: device-hours are core-hours) and the peak
    measured on the process's threads.
    """
    import torch

    if device is None:
        on_gpu = gpu_fraction > 0 and torch.cuda.is_available()
    else:
        on_gpu = torch.device(device).type == "cuda"
    if on_gpu:
        name = torch.cuda.get_device_name(torch.cuda.current_device())
        peak, source = gpu_peak(name)
        return Device("gpu", name, gpu_fraction if gpu_fraction > 0 else 1.0, peak, source)
    peak, source = cpu_peak()
    return Device("cpu", "cpu", cpus, peak, source)


# --- energy -------------------------------------------------------------------------------


def nvml_uuids(torch_uuid: Any) -> list[str]:
    """The NVML UUID strings a CUDA device's UUID may have, to look the device up in NVML.

    ``torch.cuda.get_device_properties(i).uuid`` prints as bare hex groups
    (``"5e6a1f3c-..."``); NVML names a GPU ``"GPU-5e6a1f3c-..."`` and a MIG instance
    ``"MIG-..."``. A string already carrying a prefix is kept as it is.
    """
    import uuid

    text = str(torch_uuid).strip()
    if text[:4].upper() in ("GPU-", "MIG-"):
        return [text]
    try:
        text = str(uuid.UUID(text))  # canonical: lower-case, hyphenated
    except ValueError:
        return []
    return [f"GPU-{text}", f"MIG-{text}"]


def pci_bus_id(domain: int, bus: int, device: int) -> str:
    """A PCI address in NVML's form, ``"DDDDDDDD:BB:DD.0"`` (hexadecimal)."""
    return f"{domain:08X}:{bus:02X}:{device:02X}.0"


def _nvml_handle(nvml: Any, index: int) -> Any:
    """The NVML handle of CUDA device ``index``: by its UUID, else by its PCI address. CUDA's
    indices are not NVML's where ``CUDA_VISIBLE_DEVICES`` remaps or reorders the GPUs."""
    import torch

    props = torch.cuda.get_device_properties(index)
    for candidate in nvml_uuids(getattr(props, "uuid", "")):
        try:
            return nvml.nvmlDeviceGetHandleByUUID(candidate)
        except Exception:  # not this form of the UUID
            continue
    parts = [getattr(props, f"pci_{p}_id", None) for p in ("domain", "bus", "device")]
    if all(isinstance(p, int) for p in parts):
        return nvml.nvmlDeviceGetHandleByPciBusId(pci_bus_id(*parts))
    raise LookupError(f"CUDA device {index} not found in NVML")


class EnergyMeter:
    """Energy used since ``start()`` by the GPU this process trains on, from NVML's counter.

    ``device`` is a CUDA device index (default: the current CUDA device); it is looked up in
    NVML by its UUID (or PCI address), so the reading is of that GPU on a multi-GPU node too.
    ``kwh()`` is None without NVML, without a GPU, or where the GPU has no energy counter (a
    MIG instance, GPUs before Volta); nothing here raises for lack of them.
    """

    def __init__(self, device: int | None = None) -> None:
        self._handle: Any = None
        self._start_mj: int | None = None
        try:
            import torch

            if not torch.cuda.is_available():
                return
            import pynvml  # provided by the nvidia-ml-py package, present on GPU images

            pynvml.nvmlInit()
            index = torch.cuda.current_device() if device is None else device
            self._handle = _nvml_handle(pynvml, index)
            self._nvml = pynvml
        except Exception:  # no NVML library or no GPU: energy is simply not measured
            self._handle = None

    def _read(self) -> int | None:
        try:
            return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        except Exception:  # the device has no energy counter
            return None

    def start(self) -> None:
        """Read the counter now; ``kwh()`` is the energy used since."""
        if self._handle is not None:
            self._start_mj = self._read()

    def kwh(self) -> float | None:
        """Energy used since ``start()`` in kWh, or None where it is not measured."""
        if self._handle is None or self._start_mj is None:
            return None
        now = self._read()
        return None if now is None else (now - self._start_mj) / 3.6e9  # millijoules -> kWh


# --- a run's cost -------------------------------------------------------------------------


def cost_metrics(
    device: Device,
    *,
    wall_seconds: float,
    flops: float,
    prices: Mapping[str, float] | None = None,
    energy_kwh: float | None = None,
    billed_seconds: float | None = None,
) -> dict[str, float]:
    """Cost figures of a run so far, ready to report as metrics.

    Args:
        device: Where the run executes (``current_device``).
        wall_seconds: Compute time (set-up, epochs, evaluation): MFU is FLOPs over it.
        flops: FLOPs done so far.
        prices: The study's price table (``price_for``); the run's price source is
            ``price_for(prices, device.kind, device.name)[1]``.
        energy_kwh: Energy measured for the run, if any.
        billed_seconds: Device time charged: compute plus checkpoint saving and uploading plus
            work lost to crashes and run again; default ``wall_seconds``.

    Returns:
        ``device_count``, ``billed_seconds``, ``device_hours`` (``billed_seconds / 3600 *
        device.count``: GPU-hours, or core-hours on CPU), ``achieved_flops_per_s``, ``mfu``
        (achieved over ``device.available_peak_flops``; NaN without a peak), ``price``
        (``device_hours`` times the matched price; absent when unpriced) and ``energy_kwh``
        (when given).
    """
    billed = wall_seconds if billed_seconds is None else billed_seconds
    device_hours = billed / 3600 * device.count
    achieved = flops / wall_seconds if wall_seconds > 0 else 0.0
    peak = device.available_peak_flops
    metrics = {
        "device_count": float(device.count),
        "billed_seconds": float(billed),
        "device_hours": device_hours,
        "achieved_flops_per_s": achieved,
        "mfu": achieved / peak if peak > 0 else float("nan"),  # False for NaN too
    }
    price, _ = price_for(prices, device.kind, device.name)
    if price is not None:
        metrics["price"] = device_hours * price
    if energy_kwh is not None:
        metrics["energy_kwh"] = energy_kwh
    return metrics
