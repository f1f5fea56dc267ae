"""runc checkpoints in the mount: `dump runc --dir MOUNT/jobs/J` lands in jobs/J/<id>/ (sealed,
deduplicated by the store), written by runc into the local spool and taken into the store from
there as process dumps are (not through FUSE), restores eagerly and lazily from there, and a
`cp -r` of it restores with plain `runc restore --image-path`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.fixtures_containers import wait_counting
from tests.fixtures_procs import wait_for
from tests.test_runc import SCRIPT, assert_continues, assert_resumed, log_numbers

pytestmark = [pytest.mark.slow, pytest.mark.real, pytest.mark.timeout(300)]


def _dump(mounted, runc_env, cid: str, job: str, *extra: str) -> str:
    r = mounted.cedana("dump", "runc", cid, "--root", runc_env.root, "--dir", mounted.jobs / job, "-O", "json",
                       *extra)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["via"] == "spool", result  # runc wrote into the spool, the store took it from there
    assert os.path.dirname(result["path"]) == str(mounted.jobs / job)
    return result["path"]


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_runc_into_mount_and_back(lazy, mounted, runc_env, tmp_path):
    # 32 MiB of memory that does not change between the two checkpoints, so that the few pages
    # the shell's loop does change (and the chunks holding them) are a small part of the dump.
    bundle = runc_env.bundle("bundle", f"blob=$(head -c 24000000 /dev/urandom | base64); {SCRIPT}")
    runc_env.start("ctr", bundle, tmp_path / "before.log")
    wait_counting(bundle, above=3)
    first = _dump(mounted, runc_env, "ctr", "web", "--leave-running")
    ckpt = _dump(mounted, runc_env, "ctr", "web")
    assert mounted.state(ckpt) == "sealed" and first != ckpt
    assert os.readlink(mounted.jobs / "web" / "latest") == os.path.basename(ckpt)
    assert {"inventory.img", "container.json", "descriptors.json"} <= set(os.listdir(ckpt))
    info = json.loads(mounted.cedana("checkpoint", "inspect", f"web/{os.path.basename(ckpt)}", "-O", "json").stdout)
    assert info["missing_chunks"] == 0
    # The store keeps once what both checkpoints of the container share (its unchanged pages).
    assert info["exclusive_stored_bytes"] < info["stored_bytes"] / 2, \
        ({k: v for k, v in info.items() if k != "files"}, [(f["path"], f["size"], f["chunks"]) for f in info["files"]])

    log = tmp_path / "after.log"
    args = ["restore", "runc", "--path", ckpt, "--detach", "--out", log] + (["--lazy"] if lazy else [])
    r = mounted.cedana(*args)
    assert r.returncode == 0, r.stderr
    assert_resumed(runc_env, "ctr", bundle, tmp_path / "before.log", log)


def test_copy_of_mounted_checkpoint_restores_with_plain_runc(mounted, runc_env, tmp_path):
    bundle = runc_env.bundle("bundle", SCRIPT)
    runc_env.start("ctr", bundle, tmp_path / "before.log")
    wait_counting(bundle, above=3)
    ckpt = _dump(mounted, runc_env, "ctr", "plain")
    copy = tmp_path / "copy"
    shutil.copytree(ckpt, copy)  # cp -r

    log = tmp_path / "after.log"
    read_end, write_end = os.pipe()
    with open(log, "ab") as out:
        subprocess.Popen(["cat"], stdin=read_end, stdout=out, start_new_session=True)
    os.close(read_end)
    env = dict(os.environ, PATH=f"/usr/local/sbin:{os.environ.get('PATH', '/usr/bin:/bin')}")
    try:
        subprocess.run(["runc", "--root", str(runc_env.root), "restore", "--detach", "--image-path", str(copy),
                        "--work-path", str(tmp_path / "work"), "--bundle", str(bundle), "ctr"],
                       stdin=subprocess.DEVNULL, stdout=write_end, stderr=write_end, env=env, check=True)
    finally:
        os.close(write_end)
    assert runc_env.status("ctr") == "running"
    after = wait_for(lambda: (n := log_numbers(log)) and len(n) > 3 and n, what="the restored output")
    assert_continues(log_numbers(tmp_path / "before.log"), after)


def test_plain_runc_checkpoint_imported_into_the_mount_restores(mounted, runc_env, tmp_path):
    """A checkpoint made by `runc checkpoint` itself, rsynced into the mount, restores with
    `cedana restore runc --id --bundle` (it has no container.json to say them)."""
    bundle = runc_env.bundle("bundle", SCRIPT)
    runc_env.start("ctr", bundle, tmp_path / "before.log")
    wait_counting(bundle, above=3)
    env = dict(os.environ, PATH=f"/usr/local/sbin:{os.environ.get('PATH', '/usr/bin:/bin')}")
    subprocess.run(["runc", "--root", str(runc_env.root), "checkpoint", "--image-path", str(tmp_path / "plain"),
                    "--work-path", str(tmp_path / "work"), "ctr"], check=True, env=env, capture_output=True)
    (mounted.jobs / "imported").mkdir()
    subprocess.run(["rsync", "-a", f"{tmp_path / 'plain'}/", f"{mounted.jobs / 'imported' / 'c1'}/"], check=True)
    ckpt = mounted.jobs / "imported" / "c1"
    mounted.seal(ckpt)

    r = mounted.cedana("restore", "runc", "--path", ckpt, "--detach", "--out", tmp_path / "x.log")
    assert r.returncode == 2 and "give --id and --bundle" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    log = tmp_path / "after.log"
    r = mounted.cedana("restore", "runc", "--path", ckpt, "--id", "ctr", "--bundle", bundle, "--root", runc_env.root,
                       "--detach", "--out", log)
    assert r.returncode == 0, r.stderr
    after = wait_for(lambda: (n := log_numbers(log)) and len(n) > 3 and n, what="the restored output")
    assert_continues(log_numbers(tmp_path / "before.log"), after)
