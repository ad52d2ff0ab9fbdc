"""A real two-node Ray cluster on 127.0.0.1: trials land on both nodes, and a lost node's
trials are retried from their checkpoints until the study has its full budget."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ablate.tracking.schema import Outcome, Stage, Tag, tag_filter
from tests.helpers import free_port, kill_session
from tests.test_e2e import write_spec

pytestmark = pytest.mark.integration
RAY = str(Path(sys.executable).with_name("ray"))








@pytest.fixture
def two_nodes(tmp_path):
    """`ray start --head` and a second `ray start --address` node, each in its own session."""
    port = free_port()
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    common = ["--num-cpus=2", "--object-store-memory=300000000", "--disable-usage-stats"]
    head = subprocess.Popen([RAY, "start", "--head", f"--port={port}",
                             "--node-ip-address=127.0.0.1", "--include-dashboard=false", *common,
                             "--block"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    worker = None
    try:
        address = f"127.0.0.1:{port}"
        for _ in range(120):
            probe = subprocess.run([RAY, "status", f"--address={address}"], env=env,
                                   capture_output=True, text=True)
            if probe.returncode == 0:
                break
            time.sleep(1)
        worker = subprocess.Popen([RAY, "start", f"--address={address}",
                                   "--node-ip-address=127.0.0.1", *common, "--block"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        for _ in range(120):
            probe = subprocess.run([RAY, "status", f"--address={address}"], env=env,
                                   capture_output=True, text=True)
            if probe.stdout.count("node_") >= 2 or "4.0 CPU" in probe.stdout:
                break
            time.sleep(1)
        yield address, env, worker
    finally:
        for process in (worker, head):
            if process is not None:
                kill_session(process.pid)
                process.wait()


def run_against(tmp_path, address, env, name, budget, kill=None):
    spec = write_spec(
        tmp_path, name=name,
        data={"synthetic": {"scale": 0.1, "seed": 7}, "tasks": ["prom/prom_core_tata"]},
        axes={"architecture": ["cnn"], "pretraining": ["none"], "tokenizer": ["char", "kmer:3"]},
        budget=budget,
    )
    log_path = tmp_path / f"{name}.log"
    with open(log_path, "w") as log:
        study = subprocess.Popen([sys.executable, "-m", "ablate.cli", "run", str(spec),
                                  "--address", address], cwd=tmp_path, env=env, stdout=log,
                                 stderr=subprocess.STDOUT)
        if kill is not None:
            kill(log_path, study)
        assert study.wait(timeout=900) == 0, log_path.read_text()[-4000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    experiment = client.get_experiment_by_name(name).experiment_id
    return client.search_runs([experiment], tag_filter(Tag.STAGE, Stage.TRIAL)), log_path


def worker_node_id(address, env):
    """The id of the cluster's node that is not the head, asked of Ray itself."""
    probe = (
        f"import ray; ray.init(address={address!r}, logging_level='ERROR');"
        "print([n['NodeID'] for n in ray.nodes()"
        " if n['Alive'] and 'node:__internal_head__' not in n['Resources']][0])"
    )
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def running_on(client, experiment_name, node_id):
    """Whether a trial run of the experiment is still open and last reported from node_id."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return False
    runs = client.search_runs([experiment.experiment_id], tag_filter(Tag.STAGE, Stage.TRIAL))
    return any(r.info.status == "RUNNING" and r.data.tags.get(Tag.NODE_ID) == node_id
               for r in runs)


def test_study_spreads_over_two_nodes_and_survives_losing_one(tmp_path, two_nodes):
    address, env, worker = two_nodes
    runs, _ = run_against(tmp_path, address, env, "spread",
                          {"trials_per_cell": 3, "max_epochs": 2, "concurrent_trials": 4})
    assert len(runs) == 6
    nodes = Counter(r.data.tags[Tag.NODE_ID] for r in runs)
    assert len(nodes) == 2, nodes  # trials ran on both nodes

    worker_id = worker_node_id(address, env)
    tracking = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")

    def kill_worker_node(log_path, study):
        # Kill the second node while one of its trials is known to be mid-way: a trial run still
        # open whose latest result came from that node.
        deadline = time.time() + 300
        while time.time() < deadline and not running_on(tracking, "node-lost", worker_id):
            assert study.poll() is None, log_path.read_text()[-3000:]
            time.sleep(0.2)
        kill_session(worker.pid)  # the second node, with whatever trials it was running

    runs, log_path = run_against(
        tmp_path, address, env, "node-lost",
        {"trials_per_cell": 3, "max_epochs": 6, "grace_epochs": 6, "concurrent_trials": 4,
         "max_failures": 3},
        kill=kill_worker_node,
    )
    per_cell = Counter(r.data.tags[Tag.CELL] for r in runs)
    assert sorted(per_cell.values()) == [3, 3]  # the full budget despite the lost node
    assert all(r.data.tags[Tag.OUTCOME] in (Outcome.COMPLETED, Outcome.PRUNED) for r in runs)
    retried = [r for r in runs if int(r.data.tags.get(Tag.RETRIES, 0)) > 0]
    assert retried, "no trial was running on the lost node"  # the kill did hit trials
