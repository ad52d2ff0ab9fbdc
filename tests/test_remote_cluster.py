"""A cluster as the cloud gives one: the head node reserves no CPUs (so nothing of a study can
run there), and the only worker node cannot see the driver's files (it runs in its own mount
namespace, with an empty tmpfs over the study folder), so everything a trial or a pretraining
worker needs must reach it through the object store or the study's storage, here S3 (moto's
server). A study with a pretraining runs and completes on it, and its runs say where."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from ablate.tracking.schema import PRETRAIN_EXPERIMENT, Outcome, Stage, Tag, tag_filter
from tests.helpers import free_port, kill_session
from tests.test_e2e import write_spec


def _can_mask_folders() -> bool:
    """Whether this machine lets a process mount a tmpfs in its own mount namespace (root with
    CAP_SYS_ADMIN and unshare(1); some containers forbid it)."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                                f"mount -t tmpfs none {folder}"], capture_output=True)
    return probe.returncode == 0


pytestmark = pytest.mark.integration
masks = pytest.mark.skipif(not _can_mask_folders(),
                           reason="needs to mount a tmpfs in its own mount namespace (root)")
RAY = str(Path(sys.executable).with_name("ray"))


def _wait_for(address: str, env: dict, nodes: int) -> None:
    for _ in range(120):
        probe = subprocess.run([RAY, "status", f"--address={address}"], env=env,
                               capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.count(" node_") >= nodes:
            return
        time.sleep(1)
    raise RuntimeError(f"the cluster at {address} never had {nodes} nodes:\n{probe.stdout}")


@pytest.fixture
def masked_cluster(tmp_path, s3_server):
    """A head with no CPUs and a 3-CPU worker that sees an empty ``tmp_path``."""
    study = tmp_path / "study"
    study.mkdir()
    port = free_port()
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    common = ["--object-store-memory=300000000", "--disable-usage-stats", "--block"]
    address = f"127.0.0.1:{port}"
    head = subprocess.Popen([RAY, "start", "--head", f"--port={port}", "--num-cpus=0",
                             "--node-ip-address=127.0.0.1", "--include-dashboard=false",
                             *common], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    worker = None
    try:
        _wait_for(address, env, 1)
        # The worker's own view of the machine: the study folder is empty there (as on a cloud
        # node).
        start = " ".join([RAY, "start", f"--address={address}", "--num-cpus=3",
                          "--node-ip-address=127.0.0.1", *common])
        worker = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c",
             f"mount -t tmpfs none {study} && exec {start}"],
            env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        _wait_for(address, env, 2)
        yield study, address, env, s3_server
    finally:
        for process in (worker, head):
            if process is not None:
                kill_session(process.pid)
                process.wait()


@masks
def test_study_runs_on_a_node_that_cannot_see_the_driver_files(masked_cluster):
    from mlflow import MlflowClient

    study, address, env, s3 = masked_cluster
    storage = s3.bucket() + "/runs"
    spec = write_spec(
        study, name="masked",
        data={"synthetic": {"scale": 0.1, "seed": 4}, "tasks": ["prom/prom_core_tata"]},
        axes={"architecture": ["cnn"], "pretraining": ["none", "mlm:small"],
              "tokenizer": ["char"]},
        budget={"trials_per_cell": 2, "max_epochs": 1, "concurrent_trials": 2},
        pretrain_specs={"small": {"max_steps": 10, "batch_size": 16, "checkpoint_every": 5,
                                  "workers": 1}},
    )
    log_path = study / "run.log"
    # A corpus this small would go to the worker whole through the object store; streaming it
    # is the path that needs the study's storage, so that is the one this cluster tests.
    env = {**env, "ABLATE_CORPUS_IN_MEMORY_MB": "0"}
    with open(log_path, "w") as log:
        run = subprocess.run([sys.executable, "-m", "ablate.cli", "run", str(spec),
                              "--address", address, "--storage", storage], cwd=study, env=env,
                             stdout=log, stderr=subprocess.STDOUT, timeout=900)
    assert run.returncode == 0, log_path.read_text()[-5000:]

    client = MlflowClient(f"sqlite:///{study / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("masked").experiment_id
    runs = client.search_runs([experiment], tag_filter(Tag.STAGE, Stage.TRIAL))
    assert len(runs) == 4, log_path.read_text()[-3000:]
    assert {r.info.status for r in runs} == {"FINISHED"}
    # The head has no CPUs, so every trial ran on the worker, which never saw the study folder.
    head_id = next(n["NodeID"] for n in _nodes(address, env) if n["Resources"].get("CPU", 0) == 0)
    nodes = Counter(r.data.tags[Tag.NODE_ID] for r in runs)
    assert len(nodes) == 1 and head_id not in nodes, nodes
    pretraining = client.get_experiment_by_name(PRETRAIN_EXPERIMENT).experiment_id
    [pretrained] = client.search_runs([pretraining])
    assert pretrained.info.status == "FINISHED"
    # The shards the worker read, and Tune's experiment, are on S3.
    keys = s3.keys(storage)
    assert any(k.endswith(".parquet") and "/shards/" in k for k in keys)
    assert any(k.endswith(".parquet") and "/pretrain_shards/" in k for k in keys)
    assert any("experiment_state" in k for k in keys)


def _nodes(address: str, env: dict) -> list[dict]:
    """The cluster's alive nodes, as Ray lists them (asked from a fresh driver process)."""
    import json

    code = (f"import json, ray; ray.init(address='{address}', logging_level='ERROR'); "
            "print(json.dumps([n for n in ray.nodes() if n['Alive']]))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_study_killed_and_resumed_from_s3_storage(tmp_path, s3_server):
    """Tune's experiment state and the trials' checkpoints live on S3: a driver killed
    mid-search is resumed from there, and the study ends with its whole budget."""
    from mlflow import MlflowClient

    from tests.test_e2e import ablate

    storage = s3_server.bucket() + "/runs"
    spec = write_spec(
        tmp_path, name="s3-resume",
        data={"synthetic": {"scale": 0.1, "seed": 6}, "tasks": ["prom/prom_core_tata"]},
        axes={"architecture": ["cnn"], "pretraining": ["none"], "tokenizer": ["char"]},
        budget={"trials_per_cell": 4, "max_epochs": 3, "concurrent_trials": 2},
    )
    log_path = tmp_path / "first.log"
    with open(log_path, "w") as log:
        first = subprocess.Popen([sys.executable, "-m", "ablate.cli", "run", str(spec),
                                  "--storage", storage], cwd=tmp_path, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.time() + 400
            while time.time() < deadline and "[2/4]" not in log_path.read_text():
                assert first.poll() is None, log_path.read_text()[-3000:]
                time.sleep(0.5)
            assert "[2/4]" in log_path.read_text(), "study too slow to interrupt"
        finally:
            kill_session(first.pid)
            first.wait()
    assert any("experiment_state" in k for k in s3_server.keys(storage))
    assert any("checkpoint" in k for k in s3_server.keys(storage))

    resumed = ablate("run", str(spec), "--storage", storage, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming sweep" in resumed.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("s3-resume").experiment_id
    runs = client.search_runs([experiment], tag_filter(Tag.STAGE, Stage.TRIAL))
    counted = [r for r in runs if r.data.tags.get(Tag.OUTCOME) != Outcome.LOST]
    assert len(counted) == 4 and {r.info.status for r in counted} == {"FINISHED"}
