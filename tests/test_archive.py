"""The seed's archive formats: stream round trips, format sniffing, and refusal of unsafe archives."""

import io
import os
import tarfile

import pytest

from cedanafs.app import archive
from cedanafs.errors import CheckpointError

pytestmark = pytest.mark.unit

FORMATS = ["tar", "gzip", "lz4", "zlib", "zstd"]


@pytest.fixture
def images(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "inventory.img").write_bytes(b"inv")
    (src / "pages-1.img").write_bytes(os.urandom(300_000) + bytes(300_000))
    (src / "process_state.json").write_text("{}")
    return src


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_and_sniff(fmt, images, tmp_path):
    buf = io.BytesIO()
    archive.write_archive(str(images), buf, fmt)
    data = buf.getvalue()
    assert archive.sniff_format(data[:600]) == fmt
    dest = tmp_path / "out"
    dest.mkdir()
    names = archive.extract_archive(io.BytesIO(data), str(dest), "x")
    assert sorted(names) == sorted(os.listdir(images))
    for name in names:
        assert (dest / name).read_bytes() == (images / name).read_bytes()


def test_names():
    assert archive.archive_name("x", "none") == "x"
    assert archive.archive_name("x", "zstd") == "x.tar.zst"
    assert archive.format_from_name("/a/b.tar.lz4") == "lz4"


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncation_detected(fmt, images, tmp_path):
    buf = io.BytesIO()
    archive.write_archive(str(images), buf, fmt)
    data = buf.getvalue()
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        archive.extract_archive(io.BytesIO(data[: len(data) // 2]), str(tmp_path), "x")


def test_archive_without_inventory(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(CheckpointError, match="no CRIU images"):
        archive.extract_archive(io.BytesIO(buf.getvalue()), str(tmp_path), "x")


def test_device_members_refused(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("dev")
        info.type = tarfile.CHRTYPE
        tar.addfile(info)
    with pytest.raises(CheckpointError, match="unsupported member"):
        archive.extract_archive(io.BytesIO(buf.getvalue()), str(tmp_path), "x")


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x40]) + data[offset + 1:]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("where", [0.3, 0.5, 0.8])
def test_flipped_byte_is_caught(fmt, where, images, tmp_path):
    buf = io.BytesIO()
    archive.write_archive(str(images), buf, fmt)
    data = buf.getvalue()
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(CheckpointError, match="^corrupt archive: ") as caught:
        archive.extract_archive(io.BytesIO(_flip(data, int(len(data) * where))), str(dest), "x")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_sums_recorded_and_checked_by_b3sum(fmt, images, tmp_path):
    """B3SUMS sits in the archive in b3sum's own format: `tar x` then `b3sum -c` works."""
    import subprocess

    buf = io.BytesIO()
    archive.write_archive(str(images), buf, fmt)
    dest = tmp_path / "out"
    dest.mkdir()
    with archive.open_tar_stream(io.BytesIO(buf.getvalue()), "x") as tar:
        for member in tar:
            archive.extract_member(tar, member, str(dest), "x")
    assert (dest / archive.SUMS_NAME).exists()
    assert archive.SUMS_NAME == "B3SUMS"
    check = subprocess.run(["b3sum", "-c", archive.SUMS_NAME], cwd=dest, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count(": OK") == len(os.listdir(images))
    (dest / "inventory.img").write_bytes(b"changed")
    assert subprocess.run(["b3sum", "-c", archive.SUMS_NAME], cwd=dest, capture_output=True).returncode != 0


def test_member_not_listed_in_sums_is_refused(images, tmp_path):
    buf = io.BytesIO()
    archive.write_archive(str(images), buf, "tar")
    # Rewrite the archive with one image changed after the sums were computed.
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue()), mode="r") as src, \
            tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT, pax_headers=src.pax_headers) as tar:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if member.name == "inventory.img":
                data = b"INV"
            tar.addfile(member, io.BytesIO(data))
    with pytest.raises(CheckpointError, match="corrupt archive: inventory.img does not match"):
        archive.extract_archive(io.BytesIO(out.getvalue()), str(tmp_path), "x")


def test_archive_without_sums_from_elsewhere_still_restores(images, tmp_path):
    """An archive made by another tool (plain tar, no sums) is accepted on its format's checks."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in sorted(os.listdir(images)):
            tar.add(images / name, arcname=name)
    dest = tmp_path / "out"
    dest.mkdir()
    assert sorted(archive.extract_archive(io.BytesIO(buf.getvalue()), str(dest), "x")) == sorted(os.listdir(images))


def test_truncated_before_sums_is_refused(images, tmp_path):
    """An archive that announces its sums but lost them (cut at a member boundary) is corrupt."""
    buf = io.BytesIO()
    archive.write_archive(str(images), buf, "tar")
    data = buf.getvalue()
    cut = data.index(archive.SUMS_NAME.encode())  # its header: the tar ends cleanly just before
    assert cut % 512 == 0
    with pytest.raises(CheckpointError, match="corrupt archive"):
        archive.extract_archive(io.BytesIO(data[:cut] + bytes(1024)), str(tmp_path), "x")


def _older_archive(images, integrity: str, change: str | None = None) -> bytes:
    """An archive as earlier versions wrote it: SHA256SUMS last, announced as "sha256" (or as
    `integrity`); `change` names a file whose archived bytes differ from what was summed."""
    import hashlib

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT,
                      pax_headers={"CEDANA.integrity": integrity}) as tar:
        lines = []
        for name in sorted(os.listdir(images)):
            data = (images / name).read_bytes()
            lines.append(f"{hashlib.sha256(data).hexdigest()}  {name}\n")
            if name == change:
                data = data[::-1]
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        text = "".join(lines).encode()
        info = tarfile.TarInfo("SHA256SUMS")
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
    return buf.getvalue()


def test_an_older_archive_with_sha256_sums_is_still_verified(images, tmp_path):
    """Archives of earlier versions carry SHA256SUMS: an intact one restores, a changed one is refused."""
    dest = tmp_path / "ok"
    dest.mkdir()
    names = archive.extract_archive(io.BytesIO(_older_archive(images, "sha256")), str(dest), "old")
    assert sorted(names) == sorted(os.listdir(images))
    assert not (dest / "SHA256SUMS").exists()
    assert (dest / "pages-1.img").read_bytes() == (images / "pages-1.img").read_bytes()
    bad = tmp_path / "bad"
    bad.mkdir()
    with pytest.raises(CheckpointError, match="^corrupt archive: pages-1.img does not match its SHA256"):
        archive.extract_archive(io.BytesIO(_older_archive(images, "sha256", change="pages-1.img")), str(bad), "old")


def test_an_archive_hashed_with_an_unknown_algorithm_is_refused(images, tmp_path):
    with pytest.raises(CheckpointError, match="hashed with 'sha3-512', which this version cannot check"):
        archive.extract_archive(io.BytesIO(_older_archive(images, "sha3-512")), str(tmp_path), "new")


@pytest.mark.parametrize("damage", [None, 0.5])
def test_unpacking_a_gzip_archive_leaves_no_thread_behind(images, tmp_path, damage):
    """gzip is inflated on a thread of its own: it stops with the unpacking, whole or refused."""
    import threading

    before = set(threading.enumerate())
    buf = io.BytesIO()
    archive.write_archive(str(images), buf, "gzip")
    data = buf.getvalue() if damage is None else _flip(buf.getvalue(), int(len(buf.getvalue()) * damage))
    dest = tmp_path / "out"
    dest.mkdir()
    if damage is None:
        archive.extract_archive(io.BytesIO(data), str(dest), "x")
    else:
        with pytest.raises(CheckpointError, match="^corrupt archive: "):
            archive.extract_archive(io.BytesIO(data), str(dest), "x")
    assert [t for t in threading.enumerate() if t not in before and t.is_alive()] == []


def test_reading_only_the_start_of_a_gzip_archive_stops_its_inflater(tmp_path):
    """A reader that stops early (inspecting the members, say) does not leave the inflating
    thread waiting for room to put what it read ahead."""
    import threading

    src = tmp_path / "big"
    src.mkdir()
    (src / "inventory.img").write_bytes(b"inv")
    (src / "pages-1.img").write_bytes(os.urandom(48 << 20))
    buf = io.BytesIO()
    archive.write_archive(str(src), buf, "gzip")
    before = set(threading.enumerate())
    with archive.open_tar_stream(io.BytesIO(buf.getvalue()), "x") as tar:
        assert next(iter(tar)).name == "inventory.img"
    assert [t for t in threading.enumerate() if t not in before and t.is_alive()] == []


def test_extracted_members_get_no_owner_set_id_or_shared_write(tmp_path):
    """The "data" filter's rules, whether or not this Python has extraction filters (3.11.4+)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, mode, kind in (("d", 0o7777, tarfile.DIRTYPE), ("d/run", 0o6777, tarfile.REGTYPE),
                                 ("d/plain", 0o066, tarfile.REGTYPE)):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, 4321, 4321, 1_000_000
            body = b"x" * 10 if kind == tarfile.REGTYPE else b""
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    buf.seek(0)
    with tarfile.open(fileobj=buf, mode="r") as tar:
        for member in tar:
            archive.extract_member(tar, member, str(tmp_path), "x")
    run, plain = os.stat(tmp_path / "d" / "run"), os.stat(tmp_path / "d" / "plain")
    assert oct(run.st_mode & 0o7777) == oct(0o755)  # no set-id or sticky bit, no group/other write
    assert oct(plain.st_mode & 0o7777) == oct(0o644)  # not executable by its owner: by nobody; owner rw
    assert (run.st_uid, run.st_gid) == (os.getuid(), os.getgid())
    assert run.st_mtime == 1_000_000
    assert os.stat(tmp_path / "d").st_mode & 0o7000 == 0
