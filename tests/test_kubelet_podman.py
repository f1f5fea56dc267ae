"""Container checkpoint archives, end to end with real Podman (runc + CRIU) and a real mount.

A counting container is checkpointed by Podman in each compression; each archive is imported,
shows in the mount as a checkpoint of the container's job, and successive checkpoints share
chunks; the checkpoint is exported back (as an archive and as an OCI image) and Podman restores
it with the counter going on from where it was.
"""

from __future__ import annotations

import json
import shutil
import tarfile

import pytest

from cedanafs.app.archive import open_tar_stream
from tests.fixtures_mount import until
from tests.fixtures_podman import IMAGE, podman, podman_container  # noqa: F401 - fixtures

pytestmark = [pytest.mark.slow, pytest.mark.real]


def _import(mounted, archive, *extra):
    r = mounted.cedana("checkpoint", "import", "--format", "kubelet", archive, "-O", "json", *extra)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _member(archive, name):
    with open(archive, "rb") as f, open_tar_stream(f) as tar:
        for m in tar:
            if m.name == name:
                return tar.extractfile(m).read()
    raise AssertionError(f"{name} not in {archive}")


def _restored_counts_on(podman, name, at_checkpoint):
    """The restored container's counter goes on from where it was (a restart would count from 1)."""
    first = podman.wait_count(name, 1)
    assert at_checkpoint <= first < at_checkpoint + 200, (at_checkpoint, first)  # resumed, not restarted
    assert podman.wait_count(name, first + 3) > first


def test_archives_in_each_compression_import_dedup_and_show_in_mount(mounted, podman, podman_container, tmp_path):
    name = podman_container
    results = []
    for compression in ("zstd", "gzip", "none"):
        archive = podman.checkpoint(name, tmp_path / f"ckpt-{compression}.tar", compression)
        results.append((compression, _import(mounted, archive)))
    jobs = {r["job"] for _, r in results}
    assert jobs == {name}
    first, *later = [r for _, r in results]
    assert first["stored_bytes_added"] > 24 << 20  # the container's 43 MiB of random text
    for r in later:  # a later checkpoint of the same container stores only what changed
        assert r["stored_bytes_added"] < first["stored_bytes_added"] * 0.2, (r, first)
        print(f"later checkpoint stored {r['stored_bytes_added']} bytes, first {first['stored_bytes_added']}")
    for compression, r in results:
        ckpt = mounted.jobs / name / r["id"]
        until(lambda: (ckpt / "checkpoint" / "inventory.img").exists(), timeout=30, what=f"{ckpt} in the mount")
        spec = json.loads((ckpt / "spec.dump").read_text())
        assert spec["annotations"]["io.container.manager"] == "libpod"
        assert (ckpt / "checkpoint" / "pages-1.img").read_bytes() == _member(tmp_path / f"ckpt-{compression}.tar",
                                                                             "checkpoint/pages-1.img")
    shutil.rmtree(mounted.jobs / name / later[0]["id"])  # rm -r of a sealed container checkpoint deletes it
    listed = mounted.cedana("checkpoint", "list", "--job", name, "-O", "json")
    assert sorted(c["id"] for c in json.loads(listed.stdout)) == sorted([first["id"], later[1]["id"]])
    inspect = mounted.cedana("checkpoint", "inspect", f"{name}/{first['id']}")
    assert inspect.returncode == 0, inspect.stderr
    assert f"container {name}, image {IMAGE}, engine podman" in inspect.stdout
    assert "CRIU images:" in inspect.stdout and "pids 1 " in inspect.stdout + " "
    archive = mounted.cedana("checkpoint", "inspect", tmp_path / "ckpt-zstd.tar")  # before any import
    assert archive.returncode == 0, archive.stderr
    assert f"container {name}, image {IMAGE}, engine podman (from ckpt-zstd.tar, zstd)" in archive.stdout
    assert "CRIU images:" in archive.stdout and "pids 1 " in archive.stdout + " "


@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
def test_exported_archive_restores_in_podman(mounted, podman, podman_container, tmp_path, compression):
    name = podman_container
    at_checkpoint = podman.wait_count(name, 30)  # a restart from 0 could not read this high at once
    archive = podman.checkpoint(name, tmp_path / "orig.tar", "zstd")
    cid = _import(mounted, archive)["id"]
    podman("rm", "-f", "-t", "0", name)
    out = tmp_path / "back.tar"
    r = mounted.cedana("checkpoint", "export", f"{name}/{cid}", out, "--format", "kubelet", "--compression", compression)
    assert r.returncode == 0, r.stderr
    magic = out.read_bytes()[:4]
    assert {"zstd": magic == b"\x28\xb5\x2f\xfd", "gzip": magic[:2] == b"\x1f\x8b",
            "none": out.read_bytes()[257:262] == b"ustar"}[compression]
    podman("container", "restore", "--import", out)
    _restored_counts_on(podman, name, at_checkpoint)


def test_oci_image_export_loads_and_restores_in_podman(mounted, podman, podman_container, tmp_path):
    name = podman_container
    at_checkpoint = podman.wait_count(name, 30)
    archive = podman.checkpoint(name, tmp_path / "orig.tar", "gzip")
    cid = _import(mounted, archive)["id"]
    podman("rm", "-f", "-t", "0", name)
    out = tmp_path / "image.tar"
    r = mounted.cedana("checkpoint", "export", f"{name}/{cid}", out, "--format", "oci-image")
    assert r.returncode == 0, r.stderr
    image = r.stdout.strip().rsplit("OCI image ", 1)[1].rstrip(")")
    with tarfile.open(out) as tar:
        index = json.load(tar.extractfile("index.json"))
        manifest = json.load(tar.extractfile("blobs/sha256/" + index["manifests"][0]["digest"].split(":")[1]))
    for key in ("io.kubernetes.cri-o.annotations.checkpoint.name", "org.criu.checkpoint.container.name",
                "io.podman.annotations.checkpoint.name"):
        assert manifest["annotations"][key] == name
    podman("load", "-i", out)
    inspected = json.loads(podman("image", "inspect", image).stdout)[0]
    assert inspected["Annotations"]["io.podman.annotations.checkpoint.name"] == name
    podman("container", "restore", image)
    _restored_counts_on(podman, name, at_checkpoint)
    podman("rm", "-f", "-t", "0", name)
    podman("rmi", image)


def test_watcher_imports_complete_archives_once(podman, podman_container, tmp_path):
    from cedanafs.app.checkpoints import Checkpoints
    from cedanafs.app.kubelet import ArchiveWatcher
    from cedanafs.catalog import Catalog
    from cedanafs.streamer import Store, open_backend

    store = Store(open_backend(str(tmp_path / "store")))
    catalog = Catalog(store.backend, str(tmp_path / "db" / "cedana.db"))
    factory = lambda: _Borrowed(Checkpoints(store, catalog))  # noqa: E731
    watched = tmp_path / "kubelet"
    watched.mkdir()
    data = podman.checkpoint(podman_container, tmp_path / "a.tar", "none").read_bytes()
    growing = watched / "checkpoint-pod_ns-ctr-2026-11-30T10:00:00Z.tar"
    try:
        watcher = ArchiveWatcher(factory, str(watched), str(tmp_path / "state.json"))
        growing.write_bytes(data[: len(data) // 2])  # the kubelet is still writing it
        assert watcher.scan() == []  # first seen: wait for one more look
        with open(growing, "ab") as f:
            f.write(data[len(data) // 2:])
        assert watcher.scan() == []  # grown since the last look: still being written
        done = watcher.scan()
        assert len(done) == 1 and done[0].checkpoint and done[0].checkpoint.startswith(podman_container + "/"), done
        assert watcher.scan() == []
        again = ArchiveWatcher(factory, str(watched), str(tmp_path / "state.json"))  # a restarted daemon
        assert again.scan() == [] and again.scan() == []
        assert [c.job for c in catalog.checkpoints()] == [podman_container]
        growing.unlink()  # the operator cleaned the directory: the state forgets it
        assert again.scan() == [] and json.loads((tmp_path / "state.json").read_text()) == {}
    finally:
        catalog.close()
        store.close()


class _Borrowed:
    """The watcher opens and closes its Checkpoints; here they are shared, so closing is a no-op."""

    def __init__(self, cps):
        self.cps = cps

    def __enter__(self):
        return self.cps

    def __exit__(self, *exc):
        return None


def test_daemon_watches_the_kubelet_directory(daemon_env, podman, podman_container, tmp_path):
    watched = tmp_path / "kubelet-checkpoints"
    watched.mkdir()
    daemon_env.env |= {"CEDANA_KUBERNETES_WATCH": "true", "CEDANA_KUBERNETES_CHECKPOINT_DIR": str(watched),
                       "CEDANA_KUBERNETES_WATCH_INTERVAL": "1"}
    daemon_env.start()
    podman.checkpoint(podman_container, watched / "checkpoint-pod_ns-ctr-1.tar", "zstd")
    images = daemon_env.mount_dir / "jobs" / podman_container / "latest" / "checkpoint"
    until(lambda: (images / "inventory.img").exists(), timeout=60, what="the archive imported into the mount")
    assert (images / "pstree.img").stat().st_size > 0
