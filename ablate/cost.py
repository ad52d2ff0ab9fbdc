"""What a run costs: device, device-hours, FLOPs, achieved FLOP/s and MFU, energy, price.

Measured where it can be: wall time by the clock, FLOPs by ``torch.utils.flop_counter`` (the
method is recorded with every run), energy from NVML's cumulative energy counter on GPUs. The
peak used for MFU comes from a table of vendor figures for common GPUs (dense bf16/fp16 tensor
throughput) and, on CPU, from a large matmul timed once per process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

FLOPS_METHOD = "torch.utils.flop_counter"

# Dense bf16 (fp16 where the part has no bf16) tensor-core peak, FLOP/s, from vendor datasheets.
GPU_PEAK_FLOPS = {
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10G": 70e12,
    "A10": 125e12,
    "V100": 125e12,
    "T4": 65e12,
}

_CPU_PEAK: float | None = None


@dataclass(frozen=True)
class Device:
    """Where a run executes: the kind of device, its name and how many (fractions allowed)."""

    kind: str  # "cpu" or "gpu"
    name: str
    count: float
    peak_flops: float
    peak_source: str


def measure_cpu_peak(size: int = 1024, repeats: int = 3) -> float:
    """FLOP/s of a large float32 matmul on this process's threads (best of ``repeats``)."""
    import torch

    a = torch.randn(size, size)
    b = torch.randn(size, size)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def gpu_peak(name: str) -> tuple[float, str]:
    """Peak FLOP/s of a GPU by its name, and where the figure comes from."""
    for key, peak in GPU_PEAK_FLOPS.items():
        if key in name:
            return peak, f"datasheet:{key}"
    return float("nan"), "unknown GPU: no peak, MFU not computed"


def current_device(gpu_fraction: float = 0.0, cpus: float = 1.0) -> Device:
    """The device this process trains on, with the share of it the run was given."""
    global _CPU_PEAK
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        peak, source = gpu_peak(name)
        return Device("gpu", name, gpu_fraction or 1.0, peak, source)
    if _CPU_PEAK is None:
        _CPU_PEAK = measure_cpu_peak()
    return Device("cpu", "cpu", cpus, _CPU_PEAK, "measured: float32 matmul 1024^3")


class EnergyMeter:
    """Energy used by GPU 0 since ``start()``, from NVML's counter; None without NVML or a GPU."""

    def __init__(self) -> None:
        self._handle: Any = None
        self._start_mj: int | None = None
        try:
            import pynvml  # provided by the nvidia-ml-py package, present on GPU images

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._nvml = pynvml
        except Exception:  # no NVML library or no GPU: energy is simply not measured
            self._handle = None

    def start(self) -> None:
        if self._handle is not None:
            self._start_mj = self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)

    def kwh(self) -> float | None:
        if self._handle is None or self._start_mj is None:
            return None
        used_mj = self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) - self._start_mj
        return used_mj / 3.6e9  # millijoules -> kWh


def cost_metrics(
    device: Device,
    *,
    wall_seconds: float,
    flops: float,
    prices: dict[str, float] | None = None,
    energy_kwh: float | None = None,
) -> dict[str, float]:
    """Cost figures of a run so far, ready to report as metrics."""
    device_hours = wall_seconds / 3600 * device.count
    achieved = flops / wall_seconds if wall_seconds > 0 else 0.0
    peak_share = device.peak_flops * device.count
    metrics = {
        "device_count": float(device.count),
        "device_hours": device_hours,
        "achieved_flops_per_s": achieved,
        "mfu": achieved / peak_share if peak_share and peak_share == peak_share else float("nan"),
    }
    price = (prices or {}).get(device.name, (prices or {}).get(device.kind))
    if price is not None:
        metrics["price"] = device_hours * price
    if energy_kwh is not None:
        metrics["energy_kwh"] = energy_kwh
    return metrics
