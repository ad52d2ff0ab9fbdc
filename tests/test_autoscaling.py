"""Scaling out, shown: a cluster that starts as a head alone, with no CPUs, and Ray's
autoscaler (its fake multi-node provider, which starts worker nodes as processes on this
machine). A study that asks for two trials at once makes the autoscaler add workers; every
trial runs on one of them; once the study is over, the idle workers are removed again.

The cluster is started here rather than with ``ray.cluster_utils.AutoscalingCluster``: that
helper builds its config from ``fake_multi_node/example.yaml``, which the installed Ray
package lacks, and runs ``ray stop --force``, which stops every Ray process of this user on
the machine."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ablate.tracking.schema import Outcome, Stage, Tag, tag_filter
from tests.helpers import free_port, kill_session
from tests.test_e2e import write_spec

pytestmark = pytest.mark.integration
RAY = str(Path(sys.executable).with_name("ray"))
WORKER_TYPE = "cpu_worker"
MAX_WORKERS = 2
HEAD_MARKER = "node:__internal_head__"  # the resource Ray gives the head node only

# Lists the cluster's nodes, dead ones included (ray.nodes() keeps them), from a fresh driver;
# with a positive wait, first waits (up to that many seconds) until no worker is alive.
_NODES = """
import json, sys, time, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
deadline = time.time() + float(sys.argv[2])
while True:
    nodes = ray.nodes()
    alive = [n for n in nodes if n["Alive"] and sys.argv[3] not in n["Resources"]]
    if not alive or time.time() > deadline:
        break
    time.sleep(1)
print("nodes:", json.dumps(nodes))
"""


def autoscaler_config(gcs_address: str) -> dict:
    """A cluster config for the fake multi-node provider: a head without CPUs and up to
    ``MAX_WORKERS`` one-CPU workers, none to begin with, removed after 12 s without work.
    The autoscaler reads the file as it is (no defaults are merged in), so every field it
    reads is written out here."""
    return {
        "cluster_name": "ablate-autoscaling",
        "max_workers": MAX_WORKERS,
        "provider": {
            "type": "fake_multinode",
            "gcs_address": gcs_address,  # where the fake workers join (the default is :6379)
            "use_node_id_as_ip": True,  # every node has the same IP here
            "disable_node_updaters": True,  # no SSH, no setup commands: nodes start in-process
            "disable_launch_config_check": True,
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            WORKER_TYPE: {
                "resources": {"CPU": 1, "object_store_memory": 150_000_000},
                "node_config": {},
                "min_workers": 0,
                "max_workers": MAX_WORKERS,
            },
        },
        "head_node_type": "ray.head.default",
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.2,
        "auth": {},
        "docker": {},
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


@pytest.fixture
def autoscaling_cluster(tmp_path):
    """The head node, started with the autoscaler config; the autoscaler (a process of the
    head) starts and stops the workers, so all of the cluster is in the head's session."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    # A short folder of the cluster's own (Ray's socket paths must stay under ~100
    # characters), where the autoscaler's log can be found.
    ray_tmp = Path(tempfile.mkdtemp(prefix="as-"))
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_TMPDIR": str(ray_tmp),
    }
    config = tmp_path / "autoscaler.yaml"
    config.write_text(json.dumps(autoscaler_config(address), indent=1))  # JSON is YAML
    head_env = {**env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    with open(tmp_path / "head.log", "w") as log:
        head = subprocess.Popen(
            [
                RAY,
                "start",
                "--head",
                f"--port={port}",
                "--num-cpus=0",
                "--include-dashboard=false",
                "--object-store-memory=150000000",
                "--disable-usage-stats",
                f"--autoscaling-config={config}",
                "--block",
            ],
            env=head_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        for _ in range(120):
            probe = subprocess.run(
                [RAY, "status", f"--address={address}"], env=env, capture_output=True, text=True
            )
            if probe.returncode == 0 and "ray.head.default" in probe.stdout:
                break
            assert head.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
            time.sleep(1)
        else:
            raise RuntimeError(f"the head at {address} never came up:\n{probe.stdout}")
        yield address, env, ray_tmp / "ray" / "session_latest" / "logs" / "monitor.log"
    finally:
        kill_session(head.pid)  # the head, its autoscaler and every worker node it started
        head.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def nodes(address: str, env: dict, wait_for_no_workers: float = 0) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-c", _NODES, address, str(wait_for_no_workers), HEAD_MARKER],
        env=env,
        capture_output=True,
        text=True,
        timeout=wait_for_no_workers + 120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    [listed] = [line for line in out.stdout.splitlines() if line.startswith("nodes: ")]
    return json.loads(listed.removeprefix("nodes: "))


def active_workers(monitor_log: str) -> list[int]:
    """How many workers each of the autoscaler's status reports counts as active."""
    counts = []
    for report in monitor_log.split("======== Autoscaler status")[1:]:
        if "Active:" not in report:
            continue
        active = report.split("Active:", 1)[1].split("Pending:", 1)[0]
        found = re.search(rf"(\d+) {re.escape(WORKER_TYPE)}\b", active)
        counts.append(int(found.group(1)) if found else 0)
    return counts


def test_autoscaler_adds_workers_for_trials_and_removes_them_when_idle(
    tmp_path, autoscaling_cluster
):
    from mlflow import MlflowClient

    address, env, monitor_log = autoscaling_cluster
    [head] = nodes(address, env)  # the head alone: min_workers is 0
    assert head["Resources"].get("CPU", 0) == 0 and HEAD_MARKER in head["Resources"]

    study = tmp_path / "study"
    study.mkdir()
    # Shards and Tune's state in a folder every node reaches (all are on this machine), as on
    # a cloud cluster; the head has no CPUs, so even the shard reads wait for a worker.
    storage = tmp_path / "shared"
    trials = 4
    spec = write_spec(
        study,
        name="autoscale",
        data={"synthetic": {"scale": 0.1, "seed": 5}, "tasks": ["prom/prom_core_tata"]},
        axes={"architecture": ["cnn"], "pretraining": ["none"], "tokenizer": ["char"]},
        budget={"trials_per_cell": trials, "max_epochs": 1, "concurrent_trials": MAX_WORKERS},
        resources={"cpu": 1, "gpu": 0},
    )
    log_path = study / "run.log"
    with open(log_path, "w") as log:
        driver = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ablate.cli",
                "run",
                str(spec),
                "--address",
                address,
                "--storage",
                str(storage),
            ],
            cwd=study,
            env={**env, "PYTHONUNBUFFERED": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            returncode = driver.wait(timeout=400)
        finally:
            kill_session(driver.pid)
    assert returncode == 0, log_path.read_text()[-5000:]

    # (c) Idle workers are removed: none is alive a while after the study.
    listed = nodes(address, env, wait_for_no_workers=90)
    workers = {n["NodeID"]: n for n in listed if n["NodeID"] != head["NodeID"]}
    assert workers, "no worker node ever joined"
    still_up = [w for w, n in workers.items() if n["Alive"]]
    assert not still_up, f"workers still up after the study: {still_up}"
    # Ray lists a removed node with the reason it went; here, each was the autoscaler's.
    reasons = {n["DeathReasonMessage"] for n in workers.values()}
    assert all("autoscaler" in reason.lower() for reason in reasons), reasons
    # (a) The autoscaler added them, up to max_workers at once, as its own reports and
    # events say.
    log = monitor_log.read_text()
    assert re.search(rf"Adding \d+ node\(s\) of type {WORKER_TYPE}", log), log[-3000:]
    assert re.search(rf"Removing \d+ nodes of type {WORKER_TYPE} \(idle\)", log), log[-3000:]
    peak = max(active_workers(log), default=0)
    assert peak == MAX_WORKERS, f"at most {peak} workers were active at once"

    # (b) The study completed its budget, every trial on a worker the autoscaler added.
    client = MlflowClient(f"sqlite:///{study / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("autoscale").experiment_id
    runs = client.search_runs([experiment], tag_filter(Tag.STAGE, Stage.TRIAL))
    assert len(runs) == trials, log_path.read_text()[-3000:]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags[Tag.OUTCOME] for r in runs} <= {Outcome.COMPLETED, Outcome.PRUNED}
    ran_on = {r.data.tags[Tag.NODE_ID] for r in runs}
    assert ran_on <= set(workers), (ran_on, set(workers), head["NodeID"])
