"""Container checkpoint archives that must not get in: each is refused with one line, and nothing
is written outside the unpack directory nor committed to the store."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import tarfile

import pytest
import zstandard

from cedanafs.app.kubelet import ContainerInfo, read_info

pytestmark = pytest.mark.unit

CEDANA = [sys.executable, "-m", "cedanafs.cli"]


def _tar(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3
    return info, None


BASE = [_file("spec.dump", b'{"annotations": {}}'), _file("checkpoint/inventory.img", b"\0" * 8)]
MALICIOUS = {
    "dotdot": [_file("../escaped", b"pwned")],
    "nested-dotdot": [_file("checkpoint/../../escaped", b"pwned")],
    "absolute": [_file("/tmp/cedana-test-escaped-abs", b"pwned")],
    "symlink-absolute": [_special("checkpoint/passwd", tarfile.SYMTYPE, "/etc/passwd")],
    "symlink-outside": [_special("checkpoint/up", tarfile.SYMTYPE, "../../escaped")],
    "hardlink-outside": [_special("checkpoint/hard", tarfile.LNKTYPE, "../etc/passwd")],
    "device": [_special("checkpoint/null", tarfile.CHRTYPE)],
    "fifo": [_special("checkpoint/fifo", tarfile.FIFOTYPE)],
}


def _run(*args, env_dir):
    env = {"CEDANA_CONFIG_DIR": str(env_dir), "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}
    return subprocess.run([*CEDANA, *map(str, args)], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, env=env)


@pytest.fixture
def store_config(tmp_path):
    cfg = tmp_path / "config"
    cfg.mkdir()
    (cfg / "config.json").write_text(json.dumps({"store": {"url": str(tmp_path / "store")},
                                                 "db": {"path": str(tmp_path / "state" / "cedana.db")}}))
    return cfg


@pytest.mark.parametrize("case,compression", [(c, "none") for c in sorted(MALICIOUS)]
                         + [("dotdot", "gzip"), ("symlink-absolute", "zstd"), ("device", "zstd")])
def test_malicious_archive_is_refused_with_one_line(tmp_path, store_config, case, compression):
    data = _tar(BASE + MALICIOUS[case])
    data = {"none": data, "gzip": gzip.compress(data), "zstd": zstandard.ZstdCompressor().compress(data)}[compression]
    work = tmp_path / "work" / "in"
    work.mkdir(parents=True)
    archive = work / "checkpoint-evil_default-c-2026.tar"
    archive.write_bytes(data)
    r = _run("checkpoint", "import", "--format", "kubelet", archive, env_dir=store_config)
    assert r.returncode == 5, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and str(archive) in lines[0], lines
    assert ("unsafe" in lines[0]) or ("refusing" in lines[0]), lines
    assert not (tmp_path / "work" / "escaped").exists() and not (tmp_path / "escaped").exists()
    assert not (tmp_path / "cedana-test-escaped-abs").exists()
    listed = _run("checkpoint", "list", "-O", "json", env_dir=store_config)
    assert listed.returncode == 0 and json.loads(listed.stdout) == []


def test_not_a_checkpoint_archive(tmp_path, store_config):
    plain = tmp_path / "plain.tar"
    plain.write_bytes(_tar([_file("hello.txt", b"hi")]))
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not an archive at all" * 100)
    for path, words in ((plain, "not a container checkpoint archive"), (junk, "not a container checkpoint archive")):
        r = _run("checkpoint", "import", "--format", "kubelet", path, env_dir=store_config)
        assert r.returncode == 5 and len(r.stderr.strip().splitlines()) == 1 and words in r.stderr, r


@pytest.mark.parametrize("annotations,config,expected", [
    ({"io.container.manager": "libpod"}, {"name": "web", "rootfsImageName": "localhost/bb:1", "runtime": "runc"},
     ContainerInfo(engine="podman", container="web", image="localhost/bb:1", runtime="runc")),
    ({"io.container.manager": "cri-o", "io.kubernetes.pod.namespace": "prod", "io.kubernetes.pod.name": "api-7d9",
      "io.kubernetes.container.name": "server"}, {"rootfsImageName": "quay.io/x/api:2"},
     ContainerInfo(engine="cri-o", container="server", namespace="prod", pod="api-7d9", image="quay.io/x/api:2")),
    ({"io.kubernetes.cri.sandbox-namespace": "default", "io.kubernetes.cri.sandbox-name": "counter",
      "io.kubernetes.cri.container-name": "count", "io.kubernetes.cri.image-name": "docker.io/library/busybox:1"},
     {}, ContainerInfo(engine="containerd", container="count", namespace="default", pod="counter",
                       image="docker.io/library/busybox:1")),
])
def test_engine_and_names_from_metadata(tmp_path, annotations, config, expected):
    (tmp_path / "spec.dump").write_text(json.dumps({"annotations": annotations}))
    if config:
        (tmp_path / "config.dump").write_text(json.dumps(config))
    info = read_info(tmp_path)
    assert info == expected
    assert info.job_name() == ("_".join([expected.namespace, expected.pod, expected.container])
                               if expected.pod else expected.container)


def test_export_of_a_process_checkpoint_as_container_formats_is_refused(tmp_path, store_config):
    images = tmp_path / "images"
    images.mkdir()
    (images / "inventory.img").write_bytes(b"\0" * 8)
    r = _run("checkpoint", "import", images, "--job", "proc", "--name", "c1", env_dir=store_config)
    assert r.returncode == 0, r.stderr
    for fmt in ("kubelet", "oci-image"):
        r = _run("checkpoint", "export", "proc/c1", tmp_path / f"out-{fmt}", "--format", fmt, env_dir=store_config)
        assert r.returncode == 5 and "is not a container checkpoint" in r.stderr, r
        assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / f"out-{fmt}").exists()
    r = _run("checkpoint", "import", "--format", "kubelet", tmp_path / "missing.tar", env_dir=store_config)
    assert r.returncode == 3 and "no such archive" in r.stderr, r
