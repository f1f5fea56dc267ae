"""Remote-store figures: the same methods with an S3 bucket on loopback (moto's server).

The bucket is served by moto (`python -m moto.server`, from the test extras) on 127.0.0.1, started
on first use and stopped with the run. Cedana's way uploads and downloads its archive with boto3
(multipart, threaded: what its Go client does); cedanafs reaches the bucket through its own
backends, configured by the standard AWS_* variables. Not in the default run: select them with
`--only s3` (they need minutes per GiB through moto; see docs/benchmarks.md).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from .methods import CedanaDump, CedanaWay, Env, MountDump
from .procs import StepError

BUCKET = "cedanafs-bench"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


class S3Server:
    """moto on a free loopback port, with one bucket; stopped by the run's cleanup."""

    def __init__(self, env: Env):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        log = open(env.workdir / "moto.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        env.cleanup.add(f"stop moto {self.proc.pid}", self.stop)
        self.wait_up()
        self.client = boto3_client(self.endpoint)
        self.client.create_bucket(Bucket=BUCKET)

    @property
    def env(self) -> dict:
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def wait_up(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StepError(f"moto's server exited with {self.proc.returncode}")
            try:
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1).close()
                return
            except urllib.error.HTTPError:
                return  # it answered
            except OSError:
                time.sleep(0.1)
        raise StepError(f"moto's server did not answer within {timeout:.0f}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def prefix_bytes(self, prefix: str) -> int:
        total = 0
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            total += sum(obj["Size"] for obj in page.get("Contents", []))
        return total


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def boto3_client(endpoint: str):
    import boto3
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                        region_name=CREDENTIALS["AWS_DEFAULT_REGION"])


def s3(env: Env) -> S3Server:
    """The run's S3 server, started on first use."""
    if "s3" not in env.services:
        env.services["s3"] = S3Server(env)
    return env.services["s3"]


def s3_unavailable(env: Env) -> str | None:
    """Why no S3 figures can be measured: moto or boto3 missing, or the server not starting."""
    for module in ("boto3", "moto"):
        try:
            __import__(module)
        except ImportError:
            return f"Python package {module} is not installed (make setup installs the test extras)"
    try:
        s3(env)
    except Exception as err:  # noqa: BLE001 - any reason the server cannot start makes the figures unavailable
        return f"moto's S3 server did not start: {err}"
    return None


def key_of(url: str) -> str:
    return url.split(f"s3://{BUCKET}/", 1)[1]


class S3CedanaWay(CedanaWay):
    """Cedana's way to S3: criu to local disk, tar + compress, upload the archive."""

    def __init__(self, codec: str):
        super().__init__(codec)
        self.key = f"s3-cedana-way-{codec}"
        self.label = f"S3: Cedana's way: criu -> disk, tar+{codec}, upload"

    def restore_label(self):
        return f"S3: Cedana's way: download, un-tar+{self.codec}, criu restore"

    def unavailable(self, env):
        return super().unavailable(env) or s3_unavailable(env)

    def put(self, env, archive, name):
        key = f"cedana-way/{name}"
        s3(env).client.upload_file(str(archive), BUCKET, key)
        return f"s3://{BUCKET}/{key}", s3(env).prefix_bytes(key)

    def get(self, env, art, dest):
        s3(env).client.download_file(BUCKET, key_of(str(art.path)), str(dest))


class S3CedanaDump(CedanaDump):
    """`cedana dump process --dir s3://bucket/dumps`: the archive streamed to the bucket."""

    def __init__(self, compression: str):
        super().__init__(compression)
        self.key = f"s3-cedana-{compression}"
        self.label = f"S3: cedana dump process --compression {compression}"

    def restore_label(self):
        return f"S3: cedana restore process ({self.compression})"

    def unavailable(self, env):
        return super().unavailable(env) or s3_unavailable(env)

    def extra_env(self, env):
        return s3(env).env

    def target(self, env):
        return f"s3://{BUCKET}/dumps"

    def located(self, env, name):
        nbytes = s3(env).prefix_bytes(f"dumps/{name}")
        if not nbytes:
            raise StepError(f"cedana dump process succeeded but s3://{BUCKET}/dumps/{name} is empty or missing")
        return f"s3://{BUCKET}/dumps/{name}", nbytes


class S3MountDump(MountDump):
    """The mount over an S3 store (a fresh prefix per repetition); eager and lazy restore from it."""

    key = "s3-mount"
    store_name = "S3 store"
    cold_restore = True  # restores as on a second machine: nothing cached from the dump

    def unavailable(self, env):
        return super().unavailable(env) or s3_unavailable(env)

    def extra_env(self, env):
        return s3(env).env

    def store_url(self, env, rep):
        self.prefix = f"store-{rep}"
        return f"s3://{BUCKET}/{self.prefix}"

    def store_bytes(self, env):
        return s3(env).prefix_bytes(self.prefix + "/")


def remote_methods() -> list:
    return [S3CedanaWay("lz4"), S3CedanaDump("lz4"), S3MountDump()]
