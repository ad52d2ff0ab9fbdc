"""What code ran, and where: ablate's version and commit, the packages, the machines.

``environment()`` (ablate's version, its git commit with a dirty flag and a hash of the
uncommitted diff, Python and the main packages' versions) and ``hardware()`` (the driver's CPU,
cores, memory and GPUs, and every Ray node's resources) are plain dicts, written as JSON beside
a sweep's results by ``ablate.provenance``.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "ray", "mlflow", "optuna", "transformers", "tokenizers", "pyarrow",
            "numpy", "scipy", "pandas", "scikit-learn", "pydantic")


def _git(folder: Path, *args: str) -> str | None:
    if shutil.which("git") is None:
        return None
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state(package_dir: Path | None = None) -> dict[str, Any]:
    """The commit of the checkout ablate runs from, whether it has uncommitted changes (tracked
    files anywhere, untracked files inside the package) and a hash of the diff; ``"unknown"``
    when ablate is not run from a git checkout (an installed wheel)."""
    package_dir = Path(package_dir or Path(__file__).resolve().parent)
    top = _git(package_dir, "rev-parse", "--show-toplevel")
    if top is None or _git(package_dir, "ls-files", "--error-unmatch", "__init__.py") is None:
        return {"commit": "unknown", "dirty": None}
    root = Path(top.strip())
    commit = (_git(root, "rev-parse", "HEAD") or "unknown").strip()
    status = _git(root, "status", "--porcelain", "--untracked-files=all") or ""
    package = package_dir.relative_to(root).as_posix() + "/"
    changed = [line[3:] for line in status.splitlines()
               if line and (not line.startswith("??") or line[3:].startswith(package))]
    diff = _git(root, "diff", "HEAD") or ""
    return {"commit": commit, "dirty": bool(changed), "changed": changed[:200],
            "diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if changed else None,
            "root": str(root)}


def environment() -> dict[str, Any]:
    """``environment.json``: ablate's version and commit, Python and the main packages."""
    from importlib import metadata

    import ablate

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {
        "ablate": {"version": version("ablate") or ablate.__version__, "git": git_state()},
        "python": {"version": platform.python_version(),
                   "implementation": platform.python_implementation(),
                   "executable": sys.executable},
        "platform": platform.platform(),
        "packages": {name: version(name) for name in PACKAGES},
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _gpus() -> dict[str, Any]:
    import torch

    gpus = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpus.append({"index": index, "name": props.name, "memory_bytes": props.total_memory,
                         "capability": f"{props.major}.{props.minor}"})
    driver = None
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version",
                                  "--format=csv,noheader"], capture_output=True, text=True,
                                 timeout=30)
            driver = out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError, IndexError):
            driver = None
    return {"gpus": gpus, "cuda": torch.version.cuda, "nvidia_driver": driver}


def driver_hardware() -> dict[str, Any]:
    """The machine the driver runs on: CPU model, cores, memory, GPUs."""
    memory = None
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"hostname": platform.node(), "machine": platform.machine(), "cpu_model": _cpu_model(),
            "cpu_count": os.cpu_count(), "cpus_usable": usable, "memory_bytes": memory,
            **_gpus()}


def cluster_hardware() -> dict[str, Any]:
    """Every Ray node's resources (CPU, GPU, memory, accelerator type), and the totals."""
    import ray

    if not ray.is_initialized():
        return {"note": "Ray was not started", "nodes": []}
    nodes = [{"node_id": n.get("NodeID"), "hostname": n.get("NodeManagerHostname"),
              "address": n.get("NodeManagerAddress"), "alive": n.get("Alive"),
              "resources": dict(n.get("Resources") or {})} for n in ray.nodes()]
    return {"nodes": nodes, "total": dict(ray.cluster_resources())}


def hardware() -> dict[str, Any]:
    """``hardware.json``: the driver's machine and the Ray cluster."""
    return {"driver": driver_hardware(), "cluster": cluster_hardware()}
