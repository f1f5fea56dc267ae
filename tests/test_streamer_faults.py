"""Faults against real servers: missing bucket, wrong credentials, unreachable endpoint, a corrupt
chunk in the bucket, and the S3 server killed in the middle of a FileWriter's upload."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from cedanafs.streamer import (AuthError, BackendError, ChunkerSpec, CorruptChunk, NoSuchBucket,
                               RetryPolicy, Store, TemporaryFailure, chunk_key, open_backend)
from cedanafs.streamer.backends.remote import WRITE_BLOCK

from .fixtures_servers import REGION, free_port, gcs_create_bucket, gcs_settings, s3_client, s3_settings

pytestmark = [pytest.mark.conformance, pytest.mark.slow, pytest.mark.timeout(90)]

FAST = RetryPolicy(attempts=3, base_delay=0.1, max_delay=0.5, deadline=10)


@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_missing_bucket_is_named(kind, request):
    if kind == "s3":
        server = request.getfixturevalue("moto_server")
        url, settings = "s3://no-such-bucket-here/p", s3_settings(server.endpoint)
    else:
        server = request.getfixturevalue("gcs_server")
        url, settings = "gs://no-such-bucket-here/p", gcs_settings(server.endpoint)
    backend = open_backend(url, settings, environ={})
    for op in (lambda: backend.get("k"), lambda: backend.put("k", b"v"), lambda: list(backend.list()),
               lambda: backend.stat("k")):
        with pytest.raises(NoSuchBucket, match="no-such-bucket-here.*does not exist"):
            op()


@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_unreachable_endpoint_retries_then_says_so(kind):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    if kind == "s3":
        url, settings = "s3://bucket/p", s3_settings(endpoint)
    else:
        url, settings = "gs://bucket/p", gcs_settings(endpoint)
    backend = open_backend(url, settings, environ={})  # default policy: 5 attempts
    started = time.monotonic()
    with pytest.raises(TemporaryFailure) as info:
        backend.get("k")
    elapsed = time.monotonic() - started
    assert f"{url}: endpoint {endpoint} unreachable after 5 attempts" in str(info.value)
    assert elapsed < 20


def _auth_moto(start_moto):
    """A moto server that checks credentials, with one user allowed everything, and a bucket."""
    # The first 4 requests go unauthenticated: create the user, its key, its policy, the bucket.
    server = start_moto(env={"INITIAL_NO_AUTH_ACTION_COUNT": "4"})
    import boto3

    iam = boto3.client("iam", endpoint_url=server.endpoint, region_name=REGION,
                       aws_access_key_id="setup", aws_secret_access_key="setup")
    iam.create_user(UserName="cedana")
    key = iam.create_access_key(UserName="cedana")["AccessKey"]
    iam.put_user_policy(UserName="cedana", PolicyName="all-s3", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    s3_client(server.endpoint, "setup", "setup").create_bucket(Bucket="authbucket")
    return server, key["AccessKeyId"], key["SecretAccessKey"]


def test_wrong_credentials_are_an_auth_error(start_moto):
    server, key_id, secret = _auth_moto(start_moto)
    good = open_backend("s3://authbucket/p", s3_settings(server.endpoint, key_id, secret), environ={})
    good.put("k", b"v")
    assert good.get("k") == b"v"
    for bad_key, bad_secret in ((key_id, "not-the-secret"), ("AKIANOSUCHKEY0000000", secret)):
        bad = open_backend("s3://authbucket/p", s3_settings(server.endpoint, bad_key, bad_secret),
                           environ={})
        started = time.monotonic()
        with pytest.raises(AuthError, match="s3://authbucket/p/k: access denied"):
            bad.get("k")
        with pytest.raises(AuthError):
            bad.put("k2", b"v")
        assert time.monotonic() - started < 5  # not retried
    assert not good.exists("k2")


@pytest.mark.parametrize("kind", ["s3", "gcs"])
@pytest.mark.expect_warnings
def test_corrupt_chunk_in_bucket(kind, request):
    url = request.getfixturevalue("s3_url" if kind == "s3" else "gcs_url")
    with Store(open_backend(url), chunker=ChunkerSpec.for_size("fixed", 256 << 10)) as store:
        data = os.urandom(1 << 20)
        content = store.write_bytes(data)
        victim = content.chunks[2]
        blob = bytearray(store.backend.get(chunk_key(victim.digest)))
        blob[100] ^= 1
        store.backend.put(chunk_key(victim.digest), bytes(blob))  # as a rotting disk would
    with Store(open_backend(url), chunker=ChunkerSpec.for_size("fixed", 256 << 10)) as fresh:
        reader = fresh.reader(content)
        assert reader.read(0, 256 << 10) == data[:256 << 10]
        with pytest.raises(CorruptChunk, match=victim.digest):
            reader.read(2 * (256 << 10), 10)
        with pytest.raises(CorruptChunk, match=victim.digest):
            fresh.read_bytes(content)


def test_s3_killed_mid_upload_then_next_write_works(start_moto):
    server = start_moto()
    s3_client(server.endpoint).create_bucket(Bucket="killme")
    settings = s3_settings(server.endpoint)
    backend = open_backend("s3://killme/store", settings, retry=FAST, environ={})
    store = Store(backend, chunker=ChunkerSpec.for_size("fixed", 256 << 10), streams=4)
    puts = []
    real_put = backend.put

    def put_then_kill(key, data):
        puts.append(key)
        if len(puts) == 4:
            server.kill()  # the server dies with uploads in flight
        return real_put(key, data)

    backend.put = put_then_kill
    writer = store.writer()
    started = time.monotonic()
    with pytest.raises(BackendError, match="unreachable"):
        for _ in range(64):
            writer.write(os.urandom(256 << 10))
        writer.close()
    writer.abort()
    assert time.monotonic() - started < 30

    # Also the streamed single-object path: an upload cut off leaves no object.
    server.restart()
    s3_client(server.endpoint).create_bucket(Bucket="killme")  # moto keeps state in memory only
    backend.put = real_put
    stream = backend.open_write("manifest-like")
    stream.write(os.urandom(WRITE_BLOCK + 1))  # first multipart part goes up
    server.kill()
    with pytest.raises(BackendError):
        stream.write(os.urandom(WRITE_BLOCK))
        stream.close()
    stream.abort()

    server.restart()
    s3_client(server.endpoint).create_bucket(Bucket="killme")
    assert not backend.exists("manifest-like")
    data = os.urandom(3 << 20)
    content = store.write_bytes(data)
    assert store.read_bytes(content) == data
    keys = s3_client(server.endpoint).list_objects_v2(Bucket="killme")["Contents"]
    assert {k["Key"] for k in keys} == {f"store/{chunk_key(c.digest)}" for c in content.chunks}
    store.close()


def test_retry_recovers_from_a_short_outage(start_gcs, tmp_path):
    # fake-gcs-server on its filesystem backend keeps the bucket across the restart (moto would not).
    server = start_gcs(persist=tmp_path / "gcs-data")
    gcs_create_bucket(server.endpoint, "flaky")
    backend = open_backend("gs://flaky/p", gcs_settings(server.endpoint), environ={},
                           retry=RetryPolicy(attempts=30, base_delay=0.2, max_delay=0.5, deadline=30))
    backend.put("k", b"before")
    server.kill()
    restarter = threading.Timer(1.0, server.start)
    restarter.start()
    try:
        backend.put("k", b"after")  # retried until the server is back
    finally:
        restarter.join()
    assert backend.get("k") == b"after"
