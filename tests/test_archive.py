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
