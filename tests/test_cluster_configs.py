"""Offline checks of the deployment configs in cluster/.

Ray cluster launcher configs go through Ray's own config preparation and validation (its JSON
schema and cross-field checks) and through its autoscaler's bin-packing; the provider bootstrap
that would call AWS or Google is never run. KubeRay manifests, the MLflow manifests and the
compose file get structural checks, cross-checked against the installed Ray, MLflow and ablate
CLI. The SLURM batch script runs against stub `srun`, `scontrol`, `ray` and `ablate` commands.
Nothing here contacts a cloud, a Kubernetes cluster, a SLURM controller or a Docker engine.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import shutil
import subprocess
from functools import partial
from pathlib import Path

import pytest
import ray
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
LAUNCHERS = ["aws.yaml", "gcp.yaml"]
KUBERAY = CLUSTER / "kuberay"
MLFLOW = CLUSTER / "mlflow"
SBATCH = CLUSTER / "slurm" / "ablate.sbatch"
EXPECTED_FILES = [
    "README.md",
    ".gitignore",
    "aws.yaml",
    "gcp.yaml",
    "kuberay/raycluster.yaml",
    "kuberay/rayjob.yaml",
    "kuberay/ray-networkpolicy.yaml",
    "kuberay/Dockerfile",
    "kuberay/Dockerfile.dockerignore",
    "mlflow/docker-compose.yaml",
    "mlflow/mlflow-k8s.yaml",
    "slurm/ablate.sbatch",
]
# Addresses that would expose a service on every interface.
ANY_ADDRESS = {"0.0.0.0", "::", "[::]", ""}
PUBLIC_SERVICE_TYPES = {"NodePort", "LoadBalancer"}
SMALL_TRIAL = {"CPU": 1, "GPU": 0.25}  # `resources: {cpu: 1, gpu: 0.25}` in a study spec


def load_docs(path: Path) -> list[dict]:
    """All non-empty YAML documents of a file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def load_one(path: Path) -> dict:
    docs = load_docs(path)
    assert len(docs) == 1, f"{path} should hold exactly one YAML document"
    return docs[0]


def launcher(name: str) -> dict:
    return load_one(CLUSTER / name)


def prepared(name: str) -> dict:
    """The launcher config as `ray up` sees it after merging Ray's provider defaults."""
    from ray.autoscaler._private.util import prepare_config

    return prepare_config(copy.deepcopy(launcher(name)))


def worker_types(config: dict) -> dict[str, dict]:
    head = config["head_node_type"]
    return {k: v for k, v in config["available_node_types"].items() if k != head}


def start_commands(config: dict) -> list[str]:
    return config["head_start_ray_commands"] + config["worker_start_ray_commands"]


def all_commands(config: dict) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands",
            "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
    return [cmd for key in keys for cmd in config.get(key, [])]


def is_spot(name: str, node_config: dict) -> bool:
    if name == "aws.yaml":
        return node_config.get("InstanceMarketOptions", {}).get("MarketType") == "spot"
    scheduling = node_config.get("scheduling", {})
    return scheduling.get("provisioningModel") == "SPOT" or scheduling.get("preemptible") is True


def ray_cluster_specs() -> list[tuple[str, dict]]:
    """(file, RayCluster spec) for raycluster.yaml and the cluster inside rayjob.yaml."""
    return [
        ("raycluster.yaml", load_one(KUBERAY / "raycluster.yaml")["spec"]),
        ("rayjob.yaml", load_one(KUBERAY / "rayjob.yaml")["spec"]["rayClusterSpec"]),
    ]


def spec_id(value: object) -> str:
    """Test ids for (file, spec) parameters: the file name."""
    return value if isinstance(value, str) else ""


def entrypoint_flags(entrypoint: str) -> dict[str, str]:
    """The options of an `ablate run STUDY --flag value ...` entrypoint."""
    args = shlex.split(entrypoint)[3:]
    return dict(zip(args[::2], args[1::2], strict=True))


def container(template: dict) -> dict:
    """KubeRay runs Ray in the first container of a pod template."""
    return template["spec"]["containers"][0]


def server_flags(script: str) -> dict[str, str | None]:
    """The flags of the `mlflow server` call in a container's shell script."""
    tokens = shlex.split(script.split("exec mlflow server", 1)[1])
    flags: dict[str, str | None] = {}
    for i, token in enumerate(tokens):
        if token.startswith("--"):
            following = tokens[i + 1] if i + 1 < len(tokens) else None
            flags[token] = None if following is None or following.startswith("--") else following
    return flags


@pytest.fixture(scope="module")
def mlflow_server_options() -> set[str]:
    from mlflow.cli import server

    return {opt for param in server.params for opt in param.opts}


@pytest.fixture(scope="module")
def ablate_run_options() -> set[str]:
    import typer

    from ablate.cli import app

    command = typer.main.get_command(app).commands["run"]
    return {opt for param in command.params for opt in param.opts}


# ----------------------------------------------------------------------------- every file


def test_every_expected_file_exists():
    missing = [name for name in EXPECTED_FILES if not (CLUSTER / name).is_file()]
    assert not missing, f"missing from cluster/: {missing}"


@pytest.mark.parametrize("path", sorted(CLUSTER.rglob("*.yaml")), ids=lambda p: p.name)
def test_every_yaml_file_parses_to_mappings(path):
    docs = load_docs(path)
    assert docs, f"{path} is empty"
    assert all(isinstance(doc, dict) for doc in docs)


@pytest.mark.parametrize("name", [n for n in EXPECTED_FILES if n != "README.md"])
def test_every_file_opens_with_a_comment_and_is_in_the_readme(name):
    assert (CLUSTER / name).read_text().startswith("#"), f"{name} should open with a comment"
    readme = (CLUSTER / "README.md").read_text()
    assert f"`{name}`" in readme or f"`{name} " in readme or f"{name}`" in readme, (
        f"cluster/README.md does not mention {name}"
    )


def test_every_placeholder_is_explained_in_the_readme():
    readme = (CLUSTER / "README.md").read_text()
    placeholders = set()
    for path in CLUSTER.rglob("*"):
        if path.is_file() and path.name != "README.md":
            placeholders |= set(re.findall(r"REPLACE_WITH_[A-Z_]+", path.read_text()))
    assert placeholders, "the configs should mark what a user must fill in"
    assert not [p for p in placeholders if p not in readme]


def test_no_dashboard_on_any_address_anywhere():
    pattern = re.compile(r"dashboard[-_]host\s*[=:]\s*[\"']?(0\.0\.0\.0|::|\[::\])", re.I)
    for path in CLUSTER.rglob("*"):
        if path.is_file():
            assert not pattern.search(path.read_text()), f"{path} binds the dashboard publicly"


# ------------------------------------------------------------------ Ray cluster launcher


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_passes_rays_own_validation(name):
    from ray.autoscaler._private.util import validate_config

    validate_config(launcher(name))  # the file as written
    validate_config(prepared(name))  # after Ray's provider defaults are merged in


@pytest.mark.parametrize(
    "break_it",
    [
        lambda c: c.update(dashboard_host="0.0.0.0"),  # unknown key: the schema refuses it
        lambda c: c.update(head_node_type="missing"),
        lambda c: c["available_node_types"]["gpu_1x"].update(min_workers=99),
    ],
    ids=["unknown-key", "unknown-head-type", "min-over-max"],
)
def test_rays_validation_catches_a_broken_launcher_config(break_it):
    import jsonschema
    from ray.autoscaler._private.util import validate_config

    config = launcher("aws.yaml")
    break_it(config)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        validate_config(config)


@pytest.mark.parametrize("name", LAUNCHERS)
def test_head_is_an_on_demand_cpu_node(name):
    config = launcher(name)
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert "guestAccelerators" not in head["node_config"]
    assert not is_spot(name, head["node_config"]), "losing a spot head loses the driver"
    assert head["resources"].get("CPU", 0) >= 2, "the driver and Ray Data reads need CPUs"


@pytest.mark.parametrize("name", LAUNCHERS)
def test_gpu_workers_are_spot_scale_from_zero_and_come_in_1_and_8(name):
    workers = worker_types(prepared(name))
    gpus = sorted(spec["resources"].get("GPU", 0) for spec in workers.values())
    assert gpus == [1, 8]
    for type_name, spec in workers.items():
        assert spec["min_workers"] == 0, f"{type_name} should scale to zero"
        assert spec["max_workers"] >= 1
        assert is_spot(name, spec["node_config"]), f"{type_name} should be spot/preemptible"
        if name == "gcp.yaml":
            assert spec["node_config"]["scheduling"]["onHostMaintenance"] == "TERMINATE"


@pytest.mark.parametrize("name", LAUNCHERS)
def test_autoscaler_packs_four_small_trials_per_gpu_and_never_on_the_head(name):
    from ray.autoscaler._private.node_provider_availability_tracker import (
        NodeAvailabilitySummary,
    )
    from ray.autoscaler._private.resource_demand_scheduler import (
        _default_utilization_scorer,
        get_nodes_for,
    )

    config = prepared(name)
    head = config["head_node_type"]
    single = next(k for k, v in worker_types(config).items() if v["resources"]["GPU"] == 1)
    scorer = partial(_default_utilization_scorer,
                     node_availability_summary=NodeAvailabilitySummary({}))

    def plan(trials: int) -> tuple[dict, list]:
        added, residual = get_nodes_for(config["available_node_types"], {head: 1}, head,
                                        config["max_workers"], [SMALL_TRIAL] * trials, scorer)
        return dict(added), residual

    assert plan(4) == ({single: 1}, [])
    assert plan(5) == ({single: 2}, [])
    added, residual = plan(40)
    assert head not in added and not residual


@pytest.mark.parametrize("name", LAUNCHERS)
def test_dashboard_listens_on_loopback_only(name):
    for config in (launcher(name), prepared(name)):
        head_start = " ".join(config["head_start_ray_commands"])
        assert "--dashboard-host=127.0.0.1" in head_start
        hosts = re.findall(r"--dashboard-host[= ](\S+)", " ".join(start_commands(config)))
        assert hosts == ["127.0.0.1"]


@pytest.mark.parametrize("name", LAUNCHERS)
def test_token_auth_on_every_node_with_a_shared_token_file(name):
    config = launcher(name)
    for command in start_commands(config):
        if command.strip() != "ray stop":
            assert "RAY_AUTH_MODE=token" in command
            assert "RAY_AUTH_TOKEN_PATH=" in command
    remote = "~/.ray/auth_token"
    assert remote in config["file_mounts"], "the token file must reach every node"
    assert "RAY_AUTH_MODE=token" in " ".join(config["setup_commands"]), "shells need it too"


@pytest.mark.parametrize("name", LAUNCHERS)
def test_setup_installs_torch_then_ablate_from_git_with_the_local_ray(name):
    commands = launcher(name)["setup_commands"]
    torch_at = next(i for i, c in enumerate(commands) if '"torch' in c)
    ablate_at = next(i for i, c in enumerate(commands) if '"ablate @ ' in c)
    assert torch_at < ablate_at
    assert "ABLATE_GIT_URL" in commands[ablate_at]
    assert any(f'"ray[default]=={ray.__version__}"' in c for c in commands), (
        "the cluster must run the same Ray as the machine that submits to it"
    )


@pytest.mark.parametrize("name", LAUNCHERS)
def test_every_launcher_command_is_valid_shell(name):
    for command in all_commands(launcher(name)):
        result = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
        assert result.returncode == 0, f"{command!r}: {result.stderr}"


def test_aws_nodes_use_the_prepared_security_group_only():
    config = launcher("aws.yaml")
    # With SecurityGroupIds on every node type, Ray creates no group of its own (its default
    # group admits SSH from 0.0.0.0/0).
    for type_name, spec in config["available_node_types"].items():
        assert spec["node_config"].get("SecurityGroupIds"), type_name
    assert "security_group" not in config["provider"]


def test_gcp_nodes_use_the_dedicated_network():
    config = launcher("gcp.yaml")
    for type_name, spec in config["available_node_types"].items():
        interfaces = spec["node_config"].get("networkInterfaces")
        assert interfaces, f"{type_name} would land on the default network"
        assert all(i["subnetwork"].endswith("/subnetworks/ablate-ray") for i in interfaces)


# ------------------------------------------------------------------------------ KubeRay


def test_kuberay_kinds_and_current_api_version():
    cluster = load_one(KUBERAY / "raycluster.yaml")
    job = load_one(KUBERAY / "rayjob.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")


@pytest.mark.parametrize("name,spec", ray_cluster_specs(), ids=spec_id)
def test_kuberay_cpu_head_and_gpu_workers_from_zero(name, spec):
    head = container(spec["headGroupSpec"]["template"])
    for section in ("requests", "limits"):
        assert "nvidia.com/gpu" not in head["resources"].get(section, {}), "head is a CPU node"
    groups = spec["workerGroupSpecs"]
    assert groups, f"{name} has no worker group"
    for group in groups:
        limits = container(group["template"])["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1, group["groupName"]
        assert group["minReplicas"] == 0 and group["maxReplicas"] >= 1
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["rayVersion"] == ray.__version__


@pytest.mark.parametrize("name,spec", ray_cluster_specs(), ids=spec_id)
def test_kuberay_dashboard_is_not_public(name, spec):
    head_group = spec["headGroupSpec"]
    # KubeRay binds the dashboard to 0.0.0.0 unless told otherwise, so the key must be there.
    host = head_group["rayStartParams"].get("dashboard-host")
    assert host is not None and host not in ANY_ADDRESS
    head = container(head_group["template"])
    if host != "127.0.0.1":
        # Only the pod's own IP, expanded by Kubernetes from a downward-API variable.
        variable = re.fullmatch(r"\$\((\w+)\)", host)
        assert variable, f"{name}: dashboard-host {host!r}"
        env = {e["name"]: e for e in head.get("env", [])}
        assert env[variable.group(1)]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        # KubeRay's default probes ask the dashboard on localhost: they must be replaced.
        for probe in ("readinessProbe", "livenessProbe"):
            script = " ".join(head[probe]["exec"]["command"])
            assert "localhost:8265" not in script and "8265" in script
    assert head_group.get("serviceType", "ClusterIP") == "ClusterIP"
    assert not head_group.get("enableIngress", False)


@pytest.mark.parametrize("name,spec", ray_cluster_specs(), ids=spec_id)
def test_kuberay_token_auth(name, spec):
    assert spec["authOptions"]["mode"] == "token"


def test_rayjob_entrypoint_runs_a_study_against_the_cluster_services(ablate_run_options):
    job = load_one(KUBERAY / "rayjob.yaml")["spec"]
    args = shlex.split(job["entrypoint"])
    assert args[:2] == ["ablate", "run"]
    assert args[2].startswith("search_spaces/studies/") and (REPO / args[2]).is_file()
    flags = entrypoint_flags(job["entrypoint"])
    assert set(flags) <= ablate_run_options, "the entrypoint uses options `ablate run` lacks"
    assert flags["--address"] == "auto"
    assert flags["--tracking-uri"] == "http://mlflow:5000"
    storage = flags["--storage"]
    assert storage.startswith("s3://")
    assert job["shutdownAfterJobFinishes"] is True
    # Relative paths resolve in the checkout the image keeps at its WORKDIR.
    working_dir = yaml.safe_load(job["runtimeEnvYAML"])["working_dir"]
    dockerfile = (KUBERAY / "Dockerfile").read_text()
    assert f"WORKDIR {working_dir}" in dockerfile
    # The storage bucket and endpoint are the ones mlflow-k8s.yaml creates.
    bucket = storage.removeprefix("s3://").split("/")[0].split("?")[0]
    mc_script = next(
        " ".join(container(d["spec"]["template"])["args"])
        for d in load_docs(MLFLOW / "mlflow-k8s.yaml") if d["kind"] == "Job"
    )
    assert f"local/{bucket}" in mc_script
    assert "endpoint_override=minio:9000" in storage


def test_ray_pods_admit_only_their_namespace_and_the_operator():
    policy = load_one(KUBERAY / "ray-networkpolicy.yaml")
    assert policy["kind"] == "NetworkPolicy"
    assert policy["spec"]["podSelector"]["matchLabels"] == {"ray.io/is-ray-node": "yes"}
    for rule in policy["spec"]["ingress"]:
        for peer in rule["from"]:
            assert "ipBlock" not in peer
            assert peer.get("namespaceSelector") != {}, "every namespace would be admitted"


def test_image_matches_ray_and_installs_torch_before_ablate():
    lines = [line for line in (KUBERAY / "Dockerfile").read_text().splitlines()
             if line and not line.startswith("#")]
    assert lines[0] == f"FROM rayproject/ray:{ray.__version__}-py311-gpu"
    torch_at = next(i for i, line in enumerate(lines) if '"torch' in line)
    ablate_at = next(i for i, line in enumerate(lines)
                     if "pip install" in line and "ablate" in line)
    assert torch_at < ablate_at


# ------------------------------------------------------------------------------- MLflow


def test_mlflow_k8s_services_are_cluster_internal():
    docs = load_docs(MLFLOW / "mlflow-k8s.yaml")
    services = [d for d in docs if d["kind"] == "Service"]
    assert {s["metadata"]["name"] for s in services} == {"mlflow", "postgres", "minio"}
    for service in services:
        assert service["spec"]["type"] == "ClusterIP", service["metadata"]["name"]
    assert not [d for d in docs if d["kind"] in {"Ingress", "Route", "Gateway"}]


def test_no_public_service_type_anywhere():
    for path in CLUSTER.rglob("*.yaml"):
        for doc in load_docs(path):
            if doc.get("kind") == "Service":
                assert doc["spec"].get("type") not in PUBLIC_SERVICE_TYPES, path


def test_mlflow_k8s_network_policies_cover_every_workload():
    docs = load_docs(MLFLOW / "mlflow-k8s.yaml")
    policies = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
    selected = [p["podSelector"]["matchLabels"] for p in policies.values()]
    for workload in (d for d in docs if d["kind"] in {"Deployment", "StatefulSet"}):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert any(sel.items() <= labels.items() for sel in selected), workload["metadata"]["name"]
    mlflow = next(p for p in policies.values()
                  if p["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "mlflow"})
    peers = [peer for rule in mlflow["ingress"] for peer in rule["from"]]
    assert {"ray.io/is-ray-node": "yes"} in [p.get("podSelector", {}).get("matchLabels")
                                              for p in peers]
    for policy in policies.values():
        for rule in policy["ingress"]:
            for peer in rule["from"]:
                assert "ipBlock" not in peer and "namespaceSelector" not in peer


def test_mlflow_k8s_server_uses_postgres_s3_and_answers_the_service_name(mlflow_server_options):
    from mlflow.server.security_utils import is_allowed_host_header

    docs = load_docs(MLFLOW / "mlflow-k8s.yaml")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    main = container(deployment["spec"]["template"])
    flags = server_flags(" ".join(main["args"]))
    assert set(flags) <= mlflow_server_options, "a flag the installed MLflow does not know"
    assert flags["--backend-store-uri"].startswith("postgresql+psycopg2://")
    assert flags["--artifacts-destination"].startswith("s3://")
    assert "--serve-artifacts" in flags and flags["--host"] == "0.0.0.0"
    allowed = flags["--allowed-hosts"].split(",")
    assert "*" not in allowed
    job = load_one(KUBERAY / "rayjob.yaml")["spec"]
    tracking = entrypoint_flags(job["entrypoint"])["--tracking-uri"]
    assert is_allowed_host_header(allowed, tracking.removeprefix("http://"))
    assert is_allowed_host_header(allowed, "127.0.0.1:5000")  # kubectl port-forward
    assert not is_allowed_host_header(allowed, "attacker.example:5000")
    env = {e["name"]: e for e in main["env"]}
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == "http://minio:9000"
    for name, entry in env.items():
        if "PASSWORD" in name or "SECRET" in name:
            assert "secretKeyRef" in entry["valueFrom"], f"{name} must come from a Secret"


def test_compose_publishes_only_mlflow_on_loopback():
    compose = load_one(MLFLOW / "docker-compose.yaml")
    services = compose["services"]
    published = {name: s.get("ports", []) for name, s in services.items() if s.get("ports")}
    assert list(published) == ["mlflow"]
    for port in published["mlflow"]:
        if isinstance(port, dict):
            assert port.get("host_ip") == "127.0.0.1"
        else:
            assert str(port).startswith("127.0.0.1:"), port
    assert compose["networks"]["backend"]["internal"] is True
    for store in ("postgres", "minio"):
        assert services[store]["networks"] == ["backend"]


def test_compose_server_uses_postgres_and_s3_with_secrets_from_env(mlflow_server_options):
    from mlflow.server.security_utils import is_allowed_host_header

    services = load_one(MLFLOW / "docker-compose.yaml")["services"]
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["minio"]["image"].startswith("minio/minio:")
    mlflow = services["mlflow"]
    flags = server_flags(mlflow["command"][-1])
    assert set(flags) <= mlflow_server_options
    assert flags["--backend-store-uri"].startswith("postgresql+psycopg2://")
    assert "@postgres:5432/" in flags["--backend-store-uri"]
    assert flags["--artifacts-destination"].startswith("s3://")
    assert "--serve-artifacts" in flags and flags["--host"] == "0.0.0.0"
    allowed = flags["--allowed-hosts"].split(",")
    assert is_allowed_host_header(allowed, "127.0.0.1:5000")
    assert not is_allowed_host_header(allowed, "attacker.example:5000")
    assert mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    for service in services.values():
        for name, value in service.get("environment", {}).items():
            if "PASSWORD" in name or "SECRET" in name:
                assert re.fullmatch(r"\$\{\w+:\?[^}]*\}", str(value)), f"{name} is hard-coded"


# -------------------------------------------------------------------------------- SLURM

HOSTS = ["gpu-a01", "gpu-a02"]
HEAD_IP = "10.0.0.1"
PORT = "6390"
# Every stub appends one line to $STUB_LOG: its name and its arguments, tab-separated, in one
# write, so that stubs running at once (the head's srun in the background) never interleave.
LOG_CALL = 'line=$(basename "$0"); for arg in "$@"; do line+=$\'\\t\'"$arg"; done\n' \
           'printf "%s\\n" "$line" >> "$STUB_LOG"\n'
STUBS = {
    # Runs the step's command here, after dropping srun's own options.
    "srun": """
while [[ $# -gt 0 && $1 == -* ]]; do
    if [[ $1 == -w ]]; then shift 2; else shift; fi
done
exec "$@"
""",
    "scontrol": """
if [[ "$1 $2" == "show hostnames" ]]; then printf 'gpu-a01\\ngpu-a02\\n'; fi
""",
    "hostname": """
echo "10.0.0.1 10.1.0.1"
""",
    # `ray start --block` stays up until the script's cleanup ends it; `ray status` fails
    # until the head's `ray start` has run (its own line, not the srun that launches it), then
    # reports it, and the worker once a
    # `ray start --address` has run (unless STUB_NO_WORKER); it logs how many nodes it
    # reports before it prints them (a reader may stop reading at the line it wants, and go
    # on before this stub has ended).
    "ray": """
case "$1" in
    start) [[ " $* " == *" --block "* ]] && exec sleep 30 ;;
    status)
        grep -q $'^ray\\tstart\\t--head' "$STUB_LOG" || exit 1
        nodes=(node_e1a03c5bef842e982b5131f3ec348720ab4205083f565a23c6ec4160)
        if [[ -z "${STUB_NO_WORKER:-}" ]] && grep -q $'^ray\\tstart\\t--address=' "$STUB_LOG"; then
            nodes+=(node_7bd9c0c8a1e54b2f9d0e6a3c1f2b4d5e6f708192a3b4c5d6e7f80912)
        fi
        printf 'status-answered\\t%s\\n' "${#nodes[@]}" >> "$STUB_LOG"
        echo "======== Autoscaler status: 2026-01-01 00:00:00.000000 ========"
        echo "Node status"
        echo "---------------------------------------------------------------"
        echo "Active:"
        printf ' 1 %s\\n' "${nodes[@]}"
        echo "Pending:"
        echo " (no pending nodes)"
        echo "Recent failures:"
        echo " (no failures)"
        ;;
esac
""",
    "ablate": """
env > "$STUB_ENV"
exit "${STUB_ABLATE_RC:-0}"
""",
}


def run_sbatch(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess,
                                                                  list[list[str]], Path]:
    """Runs ablate.sbatch as SLURM would on the first node of a 2-node allocation, with the
    stubs as the venv's and SLURM's commands; returns the result, the calls and the study dir."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for name, body in STUBS.items():
        stub = venv / "bin" / name
        stub.write_text("#!/bin/bash\n" + LOG_CALL + body)
        stub.chmod(0o755)
    study = tmp_path / "study"
    study.mkdir()
    log = tmp_path / "calls.log"
    log.touch()
    environ = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",   # the stubs first, no real srun or ray
        "HOME": str(tmp_path / "home"),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "gpu-a[01-02]",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_SUBMIT_DIR": str(study),
        "SLURM_CPUS_PER_TASK": "8",
        "SLURM_GPUS_ON_NODE": "4",
        "VENV": str(venv),
        "RAY_PORT": PORT,
        "RAY_POLL_INTERVAL": "0.1",
        "STUB_LOG": str(log),
        "STUB_ENV": str(tmp_path / "ablate.env"),
        **env,
    }
    result = subprocess.run(["bash", str(SBATCH), *args], cwd=tmp_path, env=environ,
                            capture_output=True, text=True, timeout=120)
    calls = [line.split("\t") for line in log.read_text().splitlines()]
    return result, calls, study


def ray_calls(calls: list[list[str]], subcommand: str) -> list[list[str]]:
    return [c for c in calls if c[:2] == ["ray", subcommand]]


def srun_of(calls: list[list[str]], command: list[str]) -> list[str]:
    """The srun call that ran `command`."""
    return next(c for c in calls if c[0] == "srun" and c[-len(command):] == command)


def test_sbatch_script_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_sbatch_script_passes_shellcheck():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed")
    result = subprocess.run([shellcheck, "--shell=bash", str(SBATCH)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout


def test_sbatch_asks_for_whole_gpu_nodes_one_task_each():
    directives = dict(
        (line.split()[1].lstrip("-").split("=", 1) + [""])[:2]
        for line in SBATCH.read_text().splitlines() if line.startswith("#SBATCH ")
    )
    assert int(directives["nodes"]) >= 2
    assert directives["ntasks-per-node"] == "1"
    assert int(directives["gpus-per-node"]) >= 1
    assert int(directives["cpus-per-task"]) >= 1
    assert "exclusive" in directives
    assert directives["signal"].startswith("B:TERM@"), "the trap must hear the time limit"


def test_sbatch_starts_head_then_worker_runs_the_study_and_stops_ray(tmp_path,
                                                                     ablate_run_options):
    result, calls, study = run_sbatch(tmp_path, "--gue-dir", "/shared/GUE")
    assert result.returncode == 0, result.stderr
    address = f"{HEAD_IP}:{PORT}"
    assert ["scontrol", "show", "hostnames", "gpu-a[01-02]"] in calls

    head, worker = ray_calls(calls, "start")
    assert head == ["ray", "start", "--head", f"--node-ip-address={HEAD_IP}", f"--port={PORT}",
                    "--dashboard-host=127.0.0.1", "--num-cpus=8", "--num-gpus=4",
                    "--disable-usage-stats", "--block"]
    assert srun_of(calls, head)[:5] == ["srun", "--nodes=1", "--ntasks=1", "-w", HOSTS[0]]
    assert worker == ["ray", "start", f"--address={address}", "--num-cpus=8", "--num-gpus=4",
                      "--disable-usage-stats", "--block"]
    assert srun_of(calls, worker)[:5] == ["srun", "--nodes=1", "--ntasks=1", "-w", HOSTS[1]]

    runs = [c for c in calls if c[:2] == ["ablate", "run"]]
    assert runs == [["ablate", "run", "search_spaces/studies/demo.yaml",
                     "--address", address, "--storage", f"{study}/ray-results",
                     "--tracking-uri", f"file://{study}/mlruns", "--gue-dir", "/shared/GUE"]]
    assert {a for a in runs[0] if a.startswith("--")} <= ablate_run_options

    # The worker joins only once the head answers, the study only once both nodes are up.
    order = [tuple(c) for c in calls]
    answered = [(i, int(c[1])) for i, c in enumerate(calls) if c[0] == "status-answered"]
    assert order.index(tuple(head)) < answered[0][0] < order.index(tuple(srun_of(calls, worker)))
    assert any(n == 2 and i < order.index(tuple(runs[0])) for i, n in answered)
    # Then `ray stop` on every node, as a step beside the running ones.
    stops = ray_calls(calls, "stop")
    assert len(stops) == 1 and order.index(tuple(stops[0])) > order.index(tuple(runs[0]))
    assert srun_of(calls, stops[0])[:4] == ["srun", "--overlap", "--nodes=2", "--ntasks=2"]


def test_sbatch_runs_the_study_offline_with_token_auth(tmp_path):
    result, _, _ = run_sbatch(tmp_path)
    assert result.returncode == 0, result.stderr
    env = dict(line.split("=", 1) for line in (tmp_path / "ablate.env").read_text().splitlines()
               if "=" in line)
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["RAY_USAGE_STATS_ENABLED"] == "0"
    assert env["RAY_AUTH_MODE"] == "token"
    token = Path(env["RAY_AUTH_TOKEN_PATH"])
    assert token == tmp_path / "home" / ".ray" / "ablate_cluster_token"
    assert re.fullmatch(r"[0-9a-f]{64}", token.read_text())
    assert token.stat().st_mode & 0o077 == 0, "the token file must be private"
    assert env["MLFLOW_ALLOW_FILE_STORE"] == "true"   # MLflow 3 needs it for file:// stores


def test_sbatch_resumes_and_uses_a_tracking_server(tmp_path):
    result, calls, _ = run_sbatch(tmp_path, RESUME="1", SPEC="search_spaces/studies/gue_gpu.yaml",
                                  TRACKING_URI="http://mlflow.internal:5000",
                                  STORAGE="/shared/ray-results")
    assert result.returncode == 0, result.stderr
    run = next(c for c in calls if c[:2] == ["ablate", "run"])
    assert run == ["ablate", "run", "search_spaces/studies/gue_gpu.yaml",
                   "--address", f"{HEAD_IP}:{PORT}", "--storage", "/shared/ray-results",
                   "--tracking-uri", "http://mlflow.internal:5000", "--resume"]
    env = (tmp_path / "ablate.env").read_text()
    assert "MLFLOW_ALLOW_FILE_STORE" not in env


def test_sbatch_stops_ray_and_keeps_the_exit_code_when_the_study_fails(tmp_path):
    result, calls, _ = run_sbatch(tmp_path, STUB_ABLATE_RC="3")
    assert result.returncode == 3
    assert ray_calls(calls, "stop")


def test_sbatch_gives_up_when_a_node_never_joins(tmp_path):
    result, calls, _ = run_sbatch(tmp_path, STUB_NO_WORKER="1", RAY_START_TIMEOUT="0")
    assert result.returncode != 0
    assert "not up" in result.stderr
    assert not [c for c in calls if c[0] == "ablate"], "no study on a partial cluster"
    assert ray_calls(calls, "stop")


def test_sbatch_refuses_a_venv_without_ray(tmp_path):
    result = subprocess.run(["bash", str(SBATCH)], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "VENV": str(tmp_path / "nowhere"),
                                 "SLURM_SUBMIT_DIR": str(tmp_path)})
    assert result.returncode == 2 and "create the venv" in result.stderr
