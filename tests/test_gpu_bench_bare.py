"""bench/gpu_efficiency.py runs on a bare GPU machine: torch and transformers, but no Ray,
MLflow, Optuna, pyarrow or einops.

Those five are made unimportable in every Python process of the run, the packed trials' spawned
children included, by a ``sitecustomize.py`` put first on ``PYTHONPATH``: it sets their
``sys.modules`` entries to None (``import`` then raises ModuleNotFoundError and
``importlib.util.find_spec`` answers None, as where a package is not installed) and puts a
``sys.meta_path`` finder first that refuses them should an entry be removed. A control run
checks that the blocking holds, so an ablate import chain that reaches any of them fails here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.checkpoints import DNABERT2_FOLDER

pytestmark = pytest.mark.integration

PROJECT = Path(__file__).resolve().parents[1]
SCRIPT = PROJECT / "bench" / "gpu_efficiency.py"
BLOCKED = ("ray", "mlflow", "optuna", "pyarrow", "einops")
CASES = {"dnabert2_mfu", "packing", "dnabert2_remote_mfu", "checkpoint"}

SITECUSTOMIZE = textwrap.dedent(f"""\
    import sys

    BLOCKED = {BLOCKED!r}


    class BareMachine:
        \"\"\"Refuses the packages a bare GPU machine does not have.\"\"\"

        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}} (bare machine)",
                                          name=name)
            return None


    sys.meta_path.insert(0, BareMachine())
    for _name in BLOCKED:
        sys.modules[_name] = None
""")


@pytest.fixture(scope="module")
def bare_env(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("bare-site")
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(PROJECT)])}
    env.pop("ABLATE_BENCH_SANDBOX", None)
    return env


def run(args: list[str], env: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, cwd=PROJECT, capture_output=True,
                          text=True, timeout=timeout)


def test_the_blocked_packages_cannot_be_imported(bare_env):
    """The control: were the blocking broken, the runs below would prove nothing."""
    check = textwrap.dedent(f"""\
        import importlib, importlib.util
        for name in {BLOCKED!r}:
            assert importlib.util.find_spec(name) is None, name
            try:
                importlib.import_module(name)
            except ImportError:
                continue
            raise SystemExit(f"{{name}} imported")
        import torch, transformers  # what a bare GPU machine has
        print("blocked")
    """)
    done = run(["-c", check], bare_env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "blocked" in done.stdout
    # and through a spawned child, as the packed trials are started
    child = textwrap.dedent("""\
        import multiprocessing as mp
        import importlib.util
        if __name__ == "__main__":
            with mp.get_context("spawn").Pool(1) as pool:
                assert pool.apply(importlib.util.find_spec, ("pyarrow",)) is None
            print("child blocked")
    """)
    done = run(["-c", child], bare_env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "child blocked" in done.stdout


def test_help_runs_without_the_heavy_packages(bare_env):
    done = run([str(SCRIPT), "--help"], bare_env, timeout=120)
    assert done.returncode == 0, done.stderr
    for option in ("--device", "--compile", "--dnabert2-dir", "--packed", "--tiny"):
        assert option in done.stdout


def test_cpu_smoke_run_has_every_case(bare_env, tmp_path):
    out = tmp_path / "result.json"
    done = run([str(SCRIPT), "--device", "cpu", "--tiny", "--batch-size", "4", "--tokens", "32",
                "--warmup", "1", "--steps", "2", "--packed", "2", "--packed-steps", "4",
                "--checkpoint-repeats", "1", "--json", str(out)], bare_env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["benchmark"] == "gpu_efficiency"
    assert result["status"] == "ok"
    details = result["details"]
    assert set(details["cases"]) >= CASES
    assert not set(details["imported"]) & set(BLOCKED)
    assert details["einops"] == "fallback"  # blocked here, so DNABERT-2 ran on the fallback
    rows = result["rows"]
    assert len(rows) == 4
    assert all(row["target"] for row in rows)
    assert all(row["met"] is None for row in rows)  # targets are judged on GPUs only
    remote = details["cases"]["dnabert2_remote_mfu"]
    if (DNABERT2_FOLDER / "config.json").is_file():
        assert remote["flops_per_step"] > 0 and remote["mfu"] > 0
        assert details["cases"]["checkpoint"]["model"].startswith("DNABERT-2")
    ours = details["cases"]["dnabert2_mfu"]
    assert ours["flops_per_step"] > 0 and ours["mfu"] > 0
    assert details["cases"]["packing"]["packed"]["trials"] == 2
    assert details["cases"]["checkpoint"]["bytes"] > 0


def test_fallback_einops_matches_einops(monkeypatch):
    """The patterns DNABERT-2's code uses, against einops itself where it is installed."""
    einops = pytest.importorskip("einops")
    import torch

    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("gpu_efficiency_under_test", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    fallback = bench.fallback_einops()
    cases = [
        (torch.randn(2, 5, 72), "b s (t h d) -> b s t h d", {"t": 3, "h": 4}),
        (torch.randn(7, 4, 6), "nnz h d -> nnz (h d)", {}),
        (torch.randn(10, 6), "(b s) d -> b s d", {"b": 2}),
        (torch.randn(3, 4, 5), "b ... -> b (...)", {}),
        (torch.randn(3, 4), "b ... -> b (...)", {}),
        (torch.randn(3, 4, 5, 2), "b s ... -> (b s) ...", {}),
        (torch.randn(12, 5, 2), "(b s) ... -> b s ...", {"b": 3}),
        (torch.randn(2, 3, 4), "a b c -> c a b", {}),
    ]
    for tensor, pattern, sizes in cases:
        assert torch.equal(fallback.rearrange(tensor, pattern, **sizes),
                           einops.rearrange(tensor, pattern, **sizes)), pattern
    indices = torch.arange(5)
    assert torch.equal(fallback.repeat(indices, "z -> z d", d=3),
                       einops.repeat(indices, "z -> z d", d=3))
