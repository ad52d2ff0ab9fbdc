"""Real services the cluster tests share, started once per test session: an S3-API object
store (moto's standalone server), a PostgreSQL server and an MLflow tracking server on both,
started with the flags of ``cluster/mlflow/docker-compose.yaml``. Registered as a pytest plugin
by ``tests/conftest.py``."""

from __future__ import annotations

import glob
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import free_port, kill_session


@dataclass
class S3Server:
    """A running S3-API server and the environment a client (pyarrow, boto3, MLflow, Ray Tune)
    needs to reach it: credentials, region and the endpoint override."""

    endpoint: str
    env: dict[str, str] = field(default_factory=dict)

    def client(self) -> Any:
        """A boto3 S3 client of this server."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region_name=self.env["AWS_DEFAULT_REGION"],
        )

    def bucket(self, prefix: str = "ablate") -> str:
        """A new empty bucket; its ``s3://`` URI."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        client = self.client()
        client.create_bucket(Bucket=name)
        return f"s3://{name}"

    def keys(self, uri: str) -> list[str]:
        """Every object key under an ``s3://bucket/prefix`` URI."""
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        client = self.client()
        keys = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return keys


def _wait_http(url: str, seconds: float, process: subprocess.Popen) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {seconds} s")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server on a free local port, for the whole session.

    Its environment is also set in this process (and so inherited by Ray nodes and drivers the
    tests start), since pyarrow, boto3 and MLflow all read ``AWS_ENDPOINT_URL`` (MLflow
    ``MLFLOW_S3_ENDPOINT_URL``) and the credentials from it.
    """
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_http(endpoint, 60, process)
        env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
            "MLFLOW_S3_ENDPOINT_URL": endpoint,
        }
        saved = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        try:
            yield S3Server(endpoint, env)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    finally:
        kill_session(process.pid)
        process.wait()


# --- PostgreSQL --------------------------------------------------------------------------------

COMPOSE_FILE = Path(__file__).resolve().parents[1] / "cluster" / "mlflow" / "docker-compose.yaml"


@dataclass
class Postgres:
    """A running PostgreSQL server with a database for MLflow and the user that owns it, as
    the compose stack's ``postgres`` service has (``mlflow`` and ``mlflow``)."""

    host: str
    port: int
    user: str
    password: str
    database: str

    def uri(self, scheme: str = "postgresql+psycopg2") -> str:
        """The SQLAlchemy URI MLflow's ``--backend-store-uri`` takes; ``scheme`` names the
        dialect and driver."""
        return f"{scheme}://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"

    def connect(self) -> Any:
        """A new psycopg2 connection to the database (close it when done)."""
        import psycopg2

        return psycopg2.connect(host=self.host, port=self.port, user=self.user,
                                password=self.password, dbname=self.database)

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """The rows of one read-only query."""
        connection = self.connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.fetchall()
        finally:
            connection.close()


def _postgres_bin() -> Path | None:
    """The folder of ``initdb``, ``pg_ctl`` and ``postgres``: Debian's newest
    ``/usr/lib/postgresql/<version>/bin``, else wherever ``PATH`` has them."""
    versions = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    versions = [folder for folder in versions if folder.parent.name.isdigit()]
    if versions:
        return max(versions, key=lambda folder: int(folder.parent.name))
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A fresh PostgreSQL cluster on a free port of 127.0.0.1, for the whole session.

    PostgreSQL refuses to run as root: as root, ``initdb`` and ``pg_ctl`` run as the
    ``postgres`` user (which Debian's package creates), with the cluster in a new folder of the
    system temp dir that user owns (the tests' own temp dir is private to root). TCP
    connections need a password (scram-sha-256); the database ``mlflow`` belongs to the user
    ``mlflow``, with a random password, as in the compose file.
    """
    import psycopg2

    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL's initdb/pg_ctl are not installed "
                    "(apt-get install postgresql; .ci/run does)")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="ablate-pg-", dir="/tmp"))
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(folder, "postgres", "postgres")
    data, log = folder / "data", folder / "server.log"
    superuser, password = "postgres", secrets.token_hex(16)
    pwfile = folder / "pwfile"
    pwfile.write_text(password + "\n")
    if as_user:
        shutil.chown(pwfile, "postgres", "postgres")
    port = free_port()

    def pg(*args: str, timeout: int = 120) -> None:
        done = subprocess.run([*as_user, *args], cwd=folder, capture_output=True, text=True,
                              timeout=timeout)
        if done.returncode != 0:
            tail = log.read_text()[-3000:] if log.exists() else ""
            raise RuntimeError(f"{shlex.join(args)} exited with {done.returncode}:\n"
                               f"{done.stdout[-2000:]}{done.stderr[-2000:]}{tail}")

    started = False
    try:
        pg(str(bin_dir / "initdb"), "-D", str(data), "-U", superuser, f"--pwfile={pwfile}",
           "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync")
        pwfile.unlink()
        options = (f"-c listen_addresses=127.0.0.1 -c port={port} "
                   f"-c unix_socket_directories={folder} -c fsync=off")
        pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w",
           "-t", "60", "start")
        started = True
        admin = psycopg2.connect(host="127.0.0.1", port=port, user=superuser, password=password,
                                 dbname="postgres")
        admin.autocommit = True
        server = Postgres("127.0.0.1", port, "mlflow", secrets.token_hex(16), "mlflow")
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE ROLE {server.user} LOGIN PASSWORD %s", (server.password,))
            cursor.execute(f"CREATE DATABASE {server.database} OWNER {server.user}")
        admin.close()
        yield server
    finally:
        try:
            if started:
                pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(folder, ignore_errors=True)


# --- the MLflow tracking server ----------------------------------------------------------------


@dataclass
class MlflowServer:
    """A running ``mlflow server``: its URL, the PostgreSQL holding its runs and the
    ``s3://bucket/prefix`` its artifacts go to, on the session's S3 server."""

    uri: str
    postgres: Postgres
    artifacts: str
    s3: S3Server


def compose_server_args() -> list[str]:
    """The arguments of ``mlflow server`` in the compose file's ``mlflow`` service."""
    import yaml

    script = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["mlflow"]["command"][-1]
    return shlex.split(script.split("exec mlflow server", 1)[1])


def _replace_flags(args: list[str], values: dict[str, str]) -> list[str]:
    """``args`` with the value after each flag of ``values`` replaced (every one must be
    there, so a change of the compose file shows up here rather than passing unnoticed)."""
    out = list(args)
    for flag, value in values.items():
        assert flag in out, f"{COMPOSE_FILE} no longer passes {flag} to mlflow server"
        out[out.index(flag) + 1] = value
    return out


@pytest.fixture(scope="session")
def mlflow_server(postgres: Postgres, s3_server: S3Server) -> Iterator[MlflowServer]:
    """The compose file's MLflow server, run here: the same ``mlflow server`` flags, with its
    backend store in the session's PostgreSQL and its artifact destination a fresh bucket of
    the session's S3 server (reached through ``MLFLOW_S3_ENDPOINT_URL`` and the credentials
    ``s3_server`` sets), listening on a free port of 127.0.0.1. Clients upload and download
    artifacts through the server (``--serve-artifacts``), as with the compose stack.
    """
    compose = compose_server_args()
    # The compose file's driver (its URI's scheme) and artifact prefix, on this machine's
    # servers.
    scheme = compose[compose.index("--backend-store-uri") + 1].split("://", 1)[0]
    _, _, prefix = compose[compose.index("--artifacts-destination") + 1] \
        .removeprefix("s3://").partition("/")
    artifacts = f"{s3_server.bucket('mlflow')}/{prefix}"
    port = free_port()
    args = _replace_flags(compose, {"--backend-store-uri": postgres.uri(scheme),
                                    "--artifacts-destination": artifacts,
                                    "--host": "127.0.0.1", "--port": str(port)})
    log = Path(tempfile.mkdtemp(prefix="mlflow-server-")) / "server.log"
    # One request worker rather than MLflow's default four (each imports all of MLflow): the
    # study's driver is the only writer.
    command = [sys.executable, "-m", "mlflow", "server", *args, "--workers", "1"]
    with open(log, "w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT,
                                   env={**os.environ, **s3_server.env}, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        try:
            # The first start creates MLflow's tables in PostgreSQL (its migrations).
            _wait_http(f"{uri}/health", 180, process)
        except RuntimeError as error:
            raise RuntimeError(f"{error}\n{log.read_text()[-4000:]}") from None
        yield MlflowServer(uri, postgres, artifacts, s3_server)
    finally:
        kill_session(process.pid)
        process.wait()
