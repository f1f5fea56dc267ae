"""`checkpoint inspect --type ps|fd|mem|rss|sk`: one real checkpoint (a parent with a listening TCP
socket, an open file at an offset and a child) decodes to the same JSON from its directory, a
.tar.zst of it (local and on S3), the mount and an S3 store.
"""

from __future__ import annotations

import json
import sys

import pytest

from cedanafs.app.archive import write_archive
from tests.fixtures_procs import wait_for
from tests.fixtures_servers import s3_client

pytestmark = [pytest.mark.real, pytest.mark.slow, pytest.mark.timeout(300)]

TYPES = ("ps", "fd", "mem", "rss", "sk")
PROGRAM = """
import os, socket, sys, time
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
data = open(sys.argv[1], "rb"); data.seek(1234)
if os.fork() == 0:
    while True: time.sleep(1)
open(sys.argv[1] + ".port", "w").write(str(srv.getsockname()[1]))
while True: time.sleep(1)
"""


@pytest.fixture
def checkpoint_dir(procs, cedana, tmp_path):
    """A dumped images dir of PROGRAM (left running: `procs` kills it), and what we know of it."""
    data = tmp_path / "data.bin"
    data.write_bytes(b"x" * 4096)
    proc = procs.start([sys.executable, "-c", PROGRAM, str(data)])
    port = int(wait_for(lambda: (tmp_path / "data.bin.port").exists() and (tmp_path / "data.bin.port").read_text(),
                        what="the program to listen"))
    cedana("dump", "process", proc.pid, "--dir", tmp_path, "--name", "c", "--compression", "none",
           "--leave-running", "--no-server", check=True)
    return tmp_path / "c", {"pid": proc.pid, "port": port, "data": str(data)}


def inspect(cedana, ref, kind, *extra):
    return json.loads(cedana("checkpoint", "inspect", ref, "--type", kind, *extra, "--output", "json",
                             check=True).stdout)


def test_decoded_images_say_what_was_dumped(checkpoint_dir, cedana):
    path, known = checkpoint_dir
    ps = inspect(cedana, path, "ps")
    assert [p["pid"] for p in ps][0] == known["pid"] and len(ps) == 2
    assert {p["comm"] for p in ps} == {"python3"} or all(p["comm"].startswith("python") for p in ps)
    assert ps[1]["ppid"] == known["pid"]
    fds = {f["path"]: f for f in inspect(cedana, path, "fd")[0]["fds"]}
    assert fds[known["data"]]["pos"] == 1234
    sockets = inspect(cedana, path, "sk")
    assert any(s["state"] == "LISTEN" and s["local"].endswith(f":{known['port']}") for s in sockets), sockets
    rss = inspect(cedana, path, "rss")
    assert all(r["bytes"] > 0 for r in rss)
    mem = inspect(cedana, path, "mem")
    assert any(v["backing"] == "[anon]" for v in mem[0]["vmas"]) and mem[0]["exe"].split("/")[-1].startswith("python")
    table = cedana("checkpoint", "inspect", path, "--type", "sk", check=True).stdout
    assert "LISTEN" in table and "LOCAL" in table


def test_same_json_from_directory_archive_mount_and_s3(checkpoint_dir, cedana, tmp_path, mounted, s3_bucket, s3_env):
    path, _ = checkpoint_dir
    archive = tmp_path / "c.tar.zst"
    with open(archive, "wb") as out:
        write_archive(str(path), out, "zstd")
    cedana("checkpoint", "import", path, "--job", "insp", check=True)  # the mount's store
    in_mount = wait_for(lambda: sorted(p for p in (mounted.jobs / "insp").glob("*") if p.name != "latest")
                        if (mounted.jobs / "insp").exists() else None, what="the checkpoint in the mount")[0]
    s3 = f"s3://{s3_bucket}/store"
    cedana("checkpoint", "import", path, "--job", "insp", "--store", s3, check=True)
    s3_client(s3_env["AWS_ENDPOINT_URL"]).upload_file(str(archive), s3_bucket, "archives/c.tar.zst")
    for kind in TYPES:
        want = inspect(cedana, path, kind)
        assert want, kind
        assert inspect(cedana, archive, kind) == want, f"{kind} from the .tar.zst"
        assert inspect(cedana, in_mount, kind) == want, f"{kind} from the mount"
        assert inspect(cedana, "insp", kind, "--store", s3) == want, f"{kind} from the S3 store"
        assert inspect(cedana, f"s3://{s3_bucket}/archives/c.tar.zst", kind) == want, f"{kind} from an S3 archive"


def test_inspect_of_something_that_is_not_a_checkpoint_is_one_line(cedana, tmp_path):
    result = cedana("checkpoint", "inspect", tmp_path, "--type", "ps")
    assert result.returncode == 5 and result.stderr.count("\n") == 1 and "not a CRIU images directory" in result.stderr
