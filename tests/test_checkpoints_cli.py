"""The `cedana checkpoint|gc|store` commands through the real executable, and their failure modes.

Every call runs /work/main/.venv/bin/cedana in a subprocess with its own config dir, index
database, chunk cache and --store directory, so nothing on the machine is touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cedanafs.app.archive import SUFFIXES, write_archive

pytestmark = pytest.mark.real

CEDANA = str(Path(sys.executable).parent / "cedana")


@pytest.fixture
def env(tmp_path, _isolated_config):
    return {**os.environ, "CEDANA_CONFIG_DIR": str(_isolated_config), "CEDANA_DB_PATH": str(tmp_path / "index.db"),
            "CEDANA_CACHE_DIR": str(tmp_path / "cache"), "CEDANA_LOG_LEVEL": "warning"}


@pytest.fixture
def run(env, tmp_path):
    store = str(tmp_path / "store")

    def call(*args: str, store_url: str | None = store, timeout: float = 120) -> subprocess.CompletedProcess:
        argv = [CEDANA, *args] + (["--store", store_url] if store_url else [])
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    return call


@pytest.fixture
def images(tmp_path) -> Path:
    """A small images-like directory: small and large files, a subdir, a symlink, odd modes."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    (root / "inventory.img").write_bytes(b"\x01\x02inventory")
    block = hashlib.sha256(b"seed").digest() * 2048  # 64 KiB of incompressible-looking bytes
    (root / "pages-1.img").write_bytes(block * 96 + b"\x00" * (1 << 20) + b"text " * 50_000)
    (root / "sub" / "core-1.img").write_bytes(b"core" * 100)
    (root / "empty.img").write_bytes(b"")
    os.symlink("inventory.img", root / "link")
    os.chmod(root / "inventory.img", 0o600)
    for i, p in enumerate(sorted(root.rglob("*"))):
        os.utime(p, ns=(1_600_000_000_000_000_000 + i * 1_000_003, 1_600_000_000_000_000_000 + i * 1_000_003),
                 follow_symlinks=False)
    os.utime(root / "sub", ns=(1_500_000_000_123_456_789, 1_500_000_000_123_456_789))
    return root


def tree(root: Path) -> dict[str, tuple]:
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        data = os.readlink(p).encode() if p.is_symlink() else (p.read_bytes() if p.is_file() else b"")
        out[p.relative_to(root).as_posix()] = (hashlib.sha256(data).hexdigest(), st.st_mode, st.st_mtime_ns)
    return out


LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (WARNING|ERROR) cedanafs\.")


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The one `Error:` line; anything else on stderr may only be log records of lower layers."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert all(LOG_RECORD.match(line) for line in lines[:-1]), result.stderr
    return errors[0]


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr
    return result


def test_cli_round_trip(run, images, tmp_path):
    first = json.loads(ok(run("checkpoint", "import", str(images), "--job", "train1", "-O", "json")).stdout)
    assert first["job"] == "train1" and first["files"] == 6 and first["stored_bytes_added"] > 0
    second = json.loads(ok(run("checkpoint", "import", str(images), "--job", "train1", "--name", "again",
                               "-O", "json")).stdout)
    assert second["stored_bytes_added"] == 0 and second["new_chunks"] == 0
    listing = json.loads(ok(run("checkpoint", "list", "--job", "train1", "-O", "json")).stdout)
    assert [c["id"] for c in listing] == ["again", first["id"]]
    assert "again" in ok(run("checkpoint", "list")).stdout.splitlines()[1]

    info = json.loads(ok(run("checkpoint", "inspect", "train1/again", "-O", "json")).stdout)
    assert info["kind"] == "checkpoint" and info["parent"] == first["id"]
    assert {f["path"] for f in info["files"]} == {"inventory.img", "pages-1.img", "sub", "sub/core-1.img",
                                                  "empty.img", "link"}
    assert info["stored_bytes"] > 0 and info["exclusive_stored_bytes"] == 0 and info["missing_chunks"] == 0
    assert "pages-1.img" in ok(run("checkpoint", "inspect", first["id"][:12])).stdout

    report = json.loads(ok(run("checkpoint", "verify", "again", "-O", "json")).stdout)
    assert report["ok"] and report["chunks"] >= 2

    ok(run("checkpoint", "export", first["id"], str(tmp_path / "out")))
    assert tree(tmp_path / "out") == tree(images)

    stats = json.loads(ok(run("store", "stats", "-O", "json")).stdout)
    assert stats["checkpoints"] == 2 and stats["dedup_ratio"] > 1.9 and stats["unreferenced_chunks"] == 0
    assert stats["stored_bytes"] < stats["logical_bytes"]

    ok(run("checkpoint", "delete", "train1/again"))
    ok(run("checkpoint", "delete", first["id"]))
    gc = json.loads(ok(run("gc", "--grace", "0", "-O", "json")).stdout)
    assert gc["deleted"] == stats["chunk_count"] and gc["referenced"] == 0
    assert json.loads(ok(run("store", "stats", "-O", "json")).stdout)["chunk_count"] == 0


def test_cli_second_machine_sees_the_same(run, env, images, tmp_path):
    cid = json.loads(ok(run("checkpoint", "import", str(images), "--job", "j", "-O", "json")).stdout)["id"]
    env["CEDANA_DB_PATH"] = str(tmp_path / "machine2.db")
    assert [c["id"] for c in json.loads(ok(run("checkpoint", "list", "-O", "json")).stdout)] == [cid]


def test_cli_verify_names_corrupt_chunk(run, images, tmp_path):
    cid = json.loads(ok(run("checkpoint", "import", str(images), "--job", "j", "-O", "json")).stdout)["id"]
    info = json.loads(ok(run("checkpoint", "inspect", cid, "-O", "json")).stdout)
    assert any(f["chunks"] for f in info["files"])
    chunk_files = sorted((tmp_path / "store").glob("chunks-*/*/*"))
    victim = max((p for p in chunk_files if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    line = one_line_error(run("checkpoint", "verify", cid))
    assert f"j/{cid}" in line and "pages-1.img" in line and victim.name in line
    assert run("checkpoint", "verify", cid, "-O", "json").returncode == 5
    one_line_error(run("checkpoint", "export", cid, str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_unknown_manifest_version_is_a_clear_error(run, images, tmp_path):
    cid = json.loads(ok(run("checkpoint", "import", str(images), "--job", "j", "-O", "json")).stdout)["id"]
    [key] = (tmp_path / "store" / "manifests" / "j" / cid).glob("*.json")  # <id>/<commit>.json
    good = json.loads(key.read_text())
    good.update(format=99, id="future")
    (tmp_path / "store" / "manifests" / "j" / "future.json").write_text(json.dumps(good))
    line = one_line_error(run("checkpoint", "inspect", "j/future"))
    assert "j/future" in line and "format version 99" in line
    # Listing still works; GC refuses to run on a store it cannot fully read.
    assert [c["id"] for c in json.loads(ok(run("checkpoint", "list", "-O", "json")).stdout)] == [cid]
    assert "cannot be read" in one_line_error(run("gc", "--grace", "0"))
    assert json.loads(ok(run("store", "stats", "-O", "json")).stdout)["unreferenced_chunks"] == 0


@pytest.mark.parametrize("args, code", [
    (["checkpoint", "import", "/nonexistent/dir", "--job", "j"], 3),
    (["checkpoint", "import", "{images}", "--job", "a/b"], 2),
    (["checkpoint", "import", "{images}", "--job", "j", "--name", "latest"], 2),
    (["checkpoint", "import", "{tmp}", "--job", "j"], 5),   # no inventory.img
    (["checkpoint", "export", "nothing", "{tmp}/out"], 3),
    (["checkpoint", "verify", "nothing"], 3),
    (["checkpoint", "delete", "nothing"], 3),
    (["checkpoint", "inspect", "/nonexistent.tar.gz"], 3),
    (["gc", "--grace", "-1"], 2),
])
def test_cli_errors_are_one_line(run, images, tmp_path, args, code):
    args = [a.format(images=images, tmp=tmp_path) for a in args]
    assert run(*args).returncode == code
    one_line_error(run(*args))


def test_cli_refuses_existing_name_and_nonempty_dest(run, images, tmp_path):
    ok(run("checkpoint", "import", str(images), "--job", "j", "--name", "c1"))
    assert "already exists" in one_line_error(run("checkpoint", "import", str(images), "--job", "j", "--name", "c1"))
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "keep").write_text("x")
    assert "not empty" in one_line_error(run("checkpoint", "export", "c1", str(tmp_path / "dest")))
    assert (tmp_path / "dest" / "keep").read_text() == "x"


def test_cli_bad_store_url(run):
    line = one_line_error(run("checkpoint", "list", store_url="ftp://host/x"))
    assert "ftp://host/x" in line


@pytest.mark.parametrize("compression", sorted(SUFFIXES))
def test_inspect_archive(run, images, tmp_path, compression):
    path = tmp_path / f"dump{SUFFIXES[compression]}"
    with open(path, "wb") as out:
        write_archive(str(images), out, compression)
    info = json.loads(ok(run("checkpoint", "inspect", str(path), "-O", "json")).stdout)
    assert info["kind"] == "archive" and info["format"] == compression
    files = {f["path"]: f for f in info["files"]}
    assert set(files) == set(tree(images))
    assert files["pages-1.img"]["size"] == (images / "pages-1.img").stat().st_size
    assert files["link"]["target"] == "inventory.img"
    assert info["archive_bytes"] == path.stat().st_size
    # A truncated archive is a one-line error, not a traceback.
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    one_line_error(run("checkpoint", "inspect", str(path)))


def test_inspect_images_directory(run, images):
    info = json.loads(ok(run("checkpoint", "inspect", str(images), "-O", "json")).stdout)
    assert info["kind"] == "directory" and info["logical_bytes"] == sum(
        p.stat().st_size for p in images.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.mark.slow
def test_inspect_remote_archive_on_s3(run, env, images, tmp_path, s3_bucket, s3_env):
    from tests.fixtures_servers import s3_client

    env.update(s3_env)
    path = tmp_path / "x.tar.lz4"
    with open(path, "wb") as out:
        write_archive(str(images), out, "lz4")
    s3_client(s3_env["AWS_ENDPOINT_URL"]).upload_file(str(path), s3_bucket, "ckpts/x.tar.lz4")
    info = json.loads(ok(run("checkpoint", "inspect", f"s3://{s3_bucket}/ckpts/x.tar.lz4", "-O", "json")).stdout)
    assert info["format"] == "lz4" and "pages-1.img" in {f["path"] for f in info["files"]}
    one_line_error(run("checkpoint", "inspect", f"s3://{s3_bucket}/ckpts/missing.tar.lz4"))


@pytest.mark.slow
def test_cli_import_export_on_gcs(run, env, images, tmp_path, gcs_url, gcs_env):
    env.update(gcs_env)
    cid = json.loads(ok(run("checkpoint", "import", str(images), "--job", "j", "-O", "json",
                            store_url=gcs_url)).stdout)["id"]
    ok(run("checkpoint", "export", f"j/{cid}", str(tmp_path / "out"), store_url=gcs_url))
    assert tree(tmp_path / "out") == tree(images)
