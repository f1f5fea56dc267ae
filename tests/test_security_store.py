"""A shared bucket never sees a checkpoint in clear: real daemons, CRIU, moto and fake-gcs-server.

A process holds a marker string in its memory; its job is dumped by one daemon into an s3:// or
gs:// store (encrypted by default). Every object in the bucket, listed and downloaded with boto3
or the GCS JSON API, is searched for the marker and every key for the job's name and CRIU's file
names. A second daemon without the key is refused with one line; with the key imported it
restores the job (lazily from S3, eagerly from GCS) and the process carries on with its memory
intact. A flipped byte in a chunk is then reported as corrupt by `checkpoint verify`.
"""

from __future__ import annotations

import json
import re
import stat
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest

from tests.fixtures_daemon import ALIVE, DaemonHarness, wait_status
from tests.fixtures_procs import PROGRAMS, pid_alive, wait_for
from tests.fixtures_servers import gcs_download, gcs_list_objects, s3_client

pytestmark = [pytest.mark.slow, pytest.mark.real, pytest.mark.timeout(420)]

MARKER = b"SECRET-MARKER-7f3a9c"  # secret.py builds it at run time from its parts
JOB = "payroll-secret-job"


class Bucket:
    """The raw objects of the store's bucket, seen as anyone with read access to it sees them."""

    def __init__(self, kind: str, url: str, endpoint: str):
        self.kind, self.endpoint = kind, endpoint
        self.bucket, _, self.prefix = url.split("://", 1)[1].partition("/")

    def keys(self) -> list[str]:
        if self.kind == "s3":
            pages = s3_client(self.endpoint).get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
            return [o["Key"] for page in pages for o in page.get("Contents", [])]
        return list(gcs_list_objects(self.endpoint, self.bucket))

    def get(self, key: str) -> bytes:
        if self.kind == "s3":
            return s3_client(self.endpoint).get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return gcs_download(self.endpoint, self.bucket, key)

    def put(self, key: str, data: bytes) -> None:
        if self.kind == "s3":
            s3_client(self.endpoint).put_object(Bucket=self.bucket, Key=key, Body=data)
            return
        url = (f"{self.endpoint}/upload/storage/v1/b/{self.bucket}/o?uploadType=media"
               f"&name={urllib.request.quote(key, safe='')}")
        req = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
        urllib.request.urlopen(req, timeout=30).read()


@pytest.fixture
def machines():
    daemons: list[DaemonHarness] = []

    def start(url: str, host: str, spawn: bool = True) -> DaemonHarness:
        root = Path(tempfile.mkdtemp(prefix=f"cedana-sec-{host}-", dir="/tmp"))
        root.chmod(0o755)
        daemon = DaemonHarness(root)
        daemon.env.update({"CEDANA_STORE_URL": url, "CEDANA_HOST": host})  # key: the default, per machine
        daemons.append(daemon)
        if spawn:
            daemon.start()
        return daemon

    try:
        yield start
    finally:
        for daemon in reversed(daemons):
            daemon.cleanup()


def counts(path: Path) -> list[tuple[int, str]]:
    lines = path.read_text().split("\n")[:-1] if path.exists() else []
    return [(int(n), state) for n, state in (line.split() for line in lines)]


@pytest.mark.parametrize("kind,lazy", [("s3", True), ("gcs", False)], ids=["s3-lazy", "gcs-eager"])
def test_bucket_holds_no_memory_or_names_and_needs_the_key(kind, lazy, machines, procs, request):
    url = request.getfixturevalue("s3_url" if kind == "s3" else "gcs_url")
    server = request.getfixturevalue("moto_server" if kind == "s3" else "gcs_server")
    bucket = Bucket(kind, url, server.endpoint)
    a = machines(url, f"{kind}-sec-a")
    out = a.root / "secret.out"
    a.cedana("run", "process", "--jid", JOB, "-o", a.root / "secret.log", "--", sys.executable,
             PROGRAMS / "secret.py", out, check=True)
    wait_for(lambda: len(counts(out)) >= 3, timeout=60, what="the secret holder to run")
    pid = a.job(JOB)["pid"]
    procs.watch(pid)
    a.cedana("dump", "job", JOB, check=True)
    wait_for(lambda: not pid_alive(pid), what="the dumped job to stop")
    at_dump = counts(out)[-1][0]
    [ckpt] = a.checkpoints(JOB)
    key_file = a.db_path.parent / "store.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600  # made on first use of the new store

    keys = bucket.keys()
    packs = [k for k in keys if "/packs-kb3/" in k]  # a bucket store's chunks are packed
    assert len(packs) >= 2 and any(k.endswith(".idx") for k in packs), keys
    assert any("/manifests/" in k for k in keys), keys
    for key in keys:
        assert "payroll" not in key and ".img" not in key and ckpt["id"] not in key, key
        body = bucket.get(key)
        assert MARKER not in body and b"payroll" not in body and b"pages-1.img" not in body, key
    fmt = json.loads(bucket.get(f"{bucket.prefix}/cedana-store.json"))
    assert fmt["encryption"] == "aes-256-gcm" and fmt["key_id"] in key_file.read_text()

    # A second machine without the key: one line that names the key it needs.
    b = machines(url, f"{kind}-sec-b", spawn=False)
    b.env["CEDANA_LOG_LEVEL"] = "warning"  # what a user sees (the harness logs at info)
    refused = b.cedana("checkpoint", "list")
    b.env["CEDANA_LOG_LEVEL"] = "info"
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and f"this store is encrypted; its key id is {fmt['key_id']}; give store.key_file" \
        in lines[0], refused.stderr

    # With the key moved over (export, import), it restores the job: the memory came back intact.
    exported = a.root / "moved.key"
    a.cedana("store", "key", "export", "--out", exported, check=True)
    assert stat.S_IMODE(exported.stat().st_mode) == 0o600
    b.cedana("store", "key", "import", exported, check=True)
    b.start()
    wait_for(lambda: b.jobs().get(JOB), what="the second daemon to list the job")
    b.cedana("restore", "job", JOB, *(["--lazy"] if lazy else []), check=True)
    job = wait_status(b, JOB, ALIVE, timeout=60)
    procs.watch(job["pid"])
    wait_for(lambda: counts(out)[-1][0] >= at_dump + 5, timeout=60, what="the restored process to count on")
    assert all(state == "ok" for _, state in counts(out)), "the secret changed across the restore"

    # A flipped byte in a chunk of the bucket: reported corrupt, never served.
    victim = max((k for k in packs if not k.endswith(".idx")), key=lambda k: len(bucket.get(k)))
    blob = bytearray(bucket.get(victim))
    blob[len(blob) // 2] ^= 0x40
    bucket.put(victim, bytes(blob))
    checked = b.cedana("checkpoint", "verify", f"{JOB}/{ckpt['id']}")
    assert checked.returncode != 0 and "corrupt" in checked.stderr, checked.stderr
    assert re.search(r"\b[0-9a-f]{12}", checked.stderr), f"the corrupt chunk is not named: {checked.stderr}"
