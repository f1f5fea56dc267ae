"""`cedana dump process --dir s3://...|gs://...` and restore from there, through real emulators."""

from __future__ import annotations

import os

import pytest

from tests.fixtures_procs import pid_alive, read_lines, wait_for
from tests.fixtures_servers import gcs_list_objects, s3_client

pytestmark = [pytest.mark.real, pytest.mark.slow, pytest.mark.timeout(240)]


def _objects(kind: str, url: str, request) -> dict[str, int]:
    bucket, _, prefix = url.removeprefix("s3://").removeprefix("gs://").partition("/")
    if kind == "s3":
        server = request.getfixturevalue("moto_server")
        listing = s3_client(server.endpoint).list_objects_v2(Bucket=bucket, Prefix=prefix)
        return {o["Key"]: o["Size"] for o in listing.get("Contents", [])}
    server = request.getfixturevalue("gcs_server")
    return gcs_list_objects(server.endpoint, bucket, prefix)


@pytest.mark.parametrize("kind", ["s3", "gcs"])
@pytest.mark.parametrize("compression,suffix", [("lz4", ".tar.lz4"), ("none", "")])
def test_dump_to_bucket_and_restore(kind, compression, suffix, tmp_path, procs, cedana, request):
    url = request.getfixturevalue("s3_url" if kind == "s3" else "gcs_url")
    out = tmp_path / "count.txt"
    proc = procs.counter(out)
    wait_for(lambda: len(read_lines(out)) >= 5, what="counter")
    result = cedana("dump", "process", proc.pid, "--dir", url, "--name", "ck", "--compression", compression,
                    check=True)
    assert f"{url}/ck{suffix}" in result.stdout
    proc.wait(timeout=10)
    at_dump = read_lines(out)[-1]

    objects = _objects(kind, url, request)
    prefix = url.split("/", 3)[3]
    if compression == "none":
        assert f"{prefix}/ck/inventory.img" in objects and f"{prefix}/ck/process_state.json" in objects
    else:
        assert list(objects) == [f"{prefix}/ck.tar.lz4"] and objects[f"{prefix}/ck.tar.lz4"] > 1000
    assert not [p for p in os.listdir("/tmp") if p.startswith("cedana-dump-ck-")], "staging dir left behind"

    cedana("restore", "process", "--path", f"{url}/ck{suffix}", check=True)
    procs.watch(proc.pid)
    wait_for(lambda: read_lines(out)[-1] >= at_dump + 5, what="restored counter")
    values = read_lines(out)
    assert values == list(range(1, len(values) + 1))


def test_missing_bucket_and_name_taken(tmp_path, procs, cedana, s3_url):
    out = tmp_path / "count.txt"
    proc = procs.counter(out)
    wait_for(lambda: len(read_lines(out)) >= 3, what="counter")
    result = cedana("dump", "process", proc.pid, "--dir", "s3://no-such-bucket-here/x")
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1
    assert "bucket" in result.stderr and "Traceback" not in result.stderr
    cedana("dump", "process", proc.pid, "--dir", s3_url, "--name", "taken", "--compression", "gzip",
           "--leave-running", check=True)
    again = cedana("dump", "process", proc.pid, "--dir", s3_url, "--name", "taken", "--compression", "gzip")
    assert again.returncode == 4 and "already exists" in again.stderr
    before = read_lines(out)[-1]
    wait_for(lambda: read_lines(out)[-1] > before, what="the process to keep running")
    assert pid_alive(proc.pid)
    missing = cedana("restore", "process", "--path", f"{s3_url}/nothing.tar.gz")
    assert missing.returncode == 3 and "does not exist" in missing.stderr


def test_unreachable_endpoint_fails_cleanly(tmp_path, procs, cedana):
    out = tmp_path / "count.txt"
    proc = procs.counter(out)
    wait_for(lambda: len(read_lines(out)) >= 3, what="counter")
    env = dict(os.environ, AWS_ENDPOINT_URL="http://127.0.0.1:9", AWS_ACCESS_KEY_ID="k",
               AWS_SECRET_ACCESS_KEY="s", AWS_DEFAULT_REGION="us-east-1")
    result = cedana("dump", "process", proc.pid, "--dir", "s3://bucket/x", env=env, timeout=120)
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "unreachable" in result.stderr or "connect" in result.stderr.lower(), result.stderr
    before = read_lines(out)[-1]
    wait_for(lambda: read_lines(out)[-1] > before, what="the process to keep running")
