"""Through the daemon, a bucket is reached with the daemon's credentials: when it has none, the error
says that the daemon lacks them and how to give it some, and `--no-server` does the transfer itself.
"""

from __future__ import annotations

import pytest

from tests.fixtures_procs import read_lines, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.real, pytest.mark.timeout(300)]

_NO_CREDENTIALS = {"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent",
                   "AWS_EC2_METADATA_DISABLED": "true"}


def test_daemon_without_credentials_says_so(s3_url, s3_env, daemon_env, procs):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        daemon_env.env.pop(key, None)
    daemon_env.env.update(_NO_CREDENTIALS)
    daemon_env.start()
    daemon_env.env = daemon_env.env | s3_env  # from now on the command has credentials; the daemon has none
    out = daemon_env.root / "count.txt"
    proc = procs.counter(out)
    wait_for(lambda: len(read_lines(out)) >= 3, what="counter output")
    bucket_dir = s3_url.rsplit("/", 1)[0] + "/ckpts"

    failed = daemon_env.cedana("dump", "process", proc.pid, "--dir", bucket_dir, "--name", "ck",
                               "--compression", "lz4")
    assert failed.returncode != 0
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and "the cedana daemon" in lines[0] and "no credentials" in lines[0], failed.stderr
    assert "--no-server" in lines[0]
    assert proc.poll() is None, "the process was stopped although nothing was dumped"

    daemon_env.cedana("dump", "process", proc.pid, "--dir", bucket_dir, "--name", "ck", "--compression", "lz4",
                      "--no-server", "--leave-running", check=True)
    failed = daemon_env.cedana("restore", "process", "--path", f"{bucket_dir}/ck.tar.lz4")
    assert failed.returncode != 0 and "the cedana daemon" in failed.stderr, failed.stderr
