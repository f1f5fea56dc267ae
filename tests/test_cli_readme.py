"""The README's examples run as written: the rsync import into the mount (and a second rsync
copies nothing), then the checkpoint decodes from the mount.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tests.fixtures_procs import ROOT, wait_for

pytestmark = [pytest.mark.real, pytest.mark.slow, pytest.mark.timeout(300)]


def readme_line(prefix: str) -> str:
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith(prefix):
            return re.sub(r"\s+#.*$", "", line)
    raise AssertionError(f"no README line starts with {prefix!r}")


def test_readme_rsync_import_works_as_written(mounted, procs, cedana, tmp_path):
    proc = procs.start(["sleep", "600"])
    cedana("dump", "process", proc.pid, "--dir", tmp_path, "--name", "c1", "--no-server", check=True)
    backup = tmp_path / "backup"
    backup.mkdir()
    shutil.move(str(tmp_path / "c1"), str(backup / "c1"))
    line = readme_line("rsync -a").replace("/backup/", f"{backup}/").replace("/mnt/cedana/", f"{mounted.mountpoint}/")
    subprocess.run(["bash", "-c", line], check=True, timeout=120)
    ckpt = mounted.jobs / "imported" / "c1"
    wait_for(lambda: mounted.state(ckpt) == "sealed", timeout=60, what="the import to be sealed")
    assert (mounted.jobs / "imported" / "latest").resolve().name == "c1"
    again = subprocess.run(["bash", "-c", line.replace("rsync -a", "rsync -ai", 1)], check=True, timeout=120,
                           capture_output=True, text=True)
    assert again.stdout == ""  # nothing copied the second time
    ps = json.loads(cedana("checkpoint", "inspect", ckpt, "--type", "ps", "--output", "json", check=True).stdout)
    assert [p["pid"] for p in ps] == [proc.pid] and ps[0]["comm"] == "sleep"


def test_dump_into_the_mount_outside_a_job_dir_or_compressed_is_a_clear_error(mounted, procs, cedana):
    proc = procs.start(["sleep", "600"])
    for target, extra, needle in ((mounted.jobs, (), "go into a job's directory"),
                                  (mounted.mountpoint, (), "go into a job's directory"),
                                  (mounted.jobs / "j1", ("--compression", "gzip"), "compresses them itself")):
        result = cedana("dump", "process", proc.pid, "--dir", target, "--no-server", "--leave-running", *extra)
        assert result.returncode == 2 and needle in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert not (mounted.jobs / "j1").exists() or not [p for p in (mounted.jobs / "j1").iterdir()]
    ok = cedana("dump", "process", proc.pid, "--dir", mounted.jobs / "j1", "--no-server", "--leave-running",
                "--compression", "none", check=True)
    assert str(mounted.jobs / "j1") in ok.stdout
