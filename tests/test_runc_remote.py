"""A runc container job moves between machines through a bucket (two daemons over one moto
s3:// store, as tests/test_remote_daemon.py does for processes), and `dump runc --dir s3://...`
/ `restore runc --path s3://...` go through the bucket like process dumps.
"""

from __future__ import annotations

import pytest

from tests.fixtures_containers import wait_counting
from tests.fixtures_daemon import ALIVE, wait_status
from tests.fixtures_procs import wait_for
from tests.test_remote_daemon import Machines
from tests.test_runc import SCRIPT, assert_one_run, assert_resumed, log_numbers, ok

pytestmark = [pytest.mark.slow, pytest.mark.real, pytest.mark.timeout(420)]


@pytest.fixture
def machines(s3_url):
    m = Machines(s3_url)
    try:
        yield m
    finally:
        m.cleanup()


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_runc_job_restores_on_a_second_daemon(lazy, machines, runc_env, tmp_path):
    a = machines.start("host-a")
    b = machines.start("host-b")
    bundle = runc_env.bundle("bundle", SCRIPT)
    log = tmp_path / "job.log"
    a.cedana("run", "runc", "--bundle", bundle, "--id", "moving", "--jid", "mv", "--root", runc_env.root,
             "-o", log, check=True)
    wait_counting(bundle, above=3)
    a.cedana("dump", "job", "mv", check=True)
    assert runc_env.status("moving") is None
    [ckpt] = a.checkpoints("mv")

    job_b = wait_for(lambda: b.jobs().get("mv"), what="the second daemon to list the job")
    assert job_b["status"] == "remote" and job_b["type"] == "runc" and job_b["checkpoint"] == ckpt["id"]

    printed = len(log_numbers(log))
    b.cedana("restore", "job", "mv", *(["--lazy"] if lazy else []), check=True)
    job_b = wait_status(b, "mv", ALIVE)
    assert job_b["type"] == "runc" and job_b["host"] == "host-b"
    assert job_b["pid"] == runc_env.state("moving")["pid"]
    wait_for(lambda: len(log_numbers(log)) > printed + 3, what="the restored job's output in its log")
    assert_one_run(log_numbers(log), printed)


def test_dump_runc_to_bucket_and_restore(runc_env, s3_url, tmp_path):
    bundle = runc_env.bundle("bundle", SCRIPT)
    runc_env.start("ctr", bundle, tmp_path / "before.log")
    wait_counting(bundle, above=3)
    out = ok("dump", "runc", "ctr", "--root", runc_env.root, "--dir", s3_url, "--name", "ck", "--compression", "zstd")
    assert f"{s3_url}/ck.tar.zst" in out
    log = tmp_path / "after.log"
    ok("restore", "runc", "--path", f"{s3_url}/ck.tar.zst", "--detach", "--out", log)
    assert_resumed(runc_env, "ctr", bundle, tmp_path / "before.log", log)
