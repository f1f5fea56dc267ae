"""The containerd checkpoint image as cedanafs rebuilds it for `ctr images import`, without
containerd: the task's CRIU images and the recorded spec (a protobuf Any, as containerd keeps it)
join the writable layer and runtime of `ctr containers checkpoint --rw`.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest
from google.protobuf import any_pb2

from cedanafs.runtimes import containerd

pytestmark = pytest.mark.unit

SPEC = {"ociVersion": "1.0.2-dev", "process": {"args": ["sh", "-c", "x" * 300]}, "annotations": {"a": "b"}}


def _blob(tar: tarfile.TarFile, data: bytes, name: str = "") -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(name or f"blobs/sha256/{digest.split(':')[1]}")
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
    return {"digest": digest, "size": len(data)}


def _rest_archive(images_dir) -> None:
    """What `ctr containers checkpoint --rw` exports: an index of the rw layer and runtime options."""
    with tarfile.open(images_dir / containerd.REST_ARCHIVE, "w") as tar:
        layer = _blob(tar, b"rw-layer")
        options = _blob(tar, b"runtime-options")
        index = {"schemaVersion": 2, "manifests": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer},
            {"mediaType": "application/vnd.containerd.container.checkpoint.runtime.options+proto", **options}],
            "annotations": {"org.opencontainers.image.ref.name": "docker.io/library/base:1"}}
        entry = _blob(tar, json.dumps(index).encode())
        top = {"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", **entry,
                                                  "annotations": {"io.containerd.image.name": "cedana.checkpoint/c:1"}}]}
        _blob(tar, json.dumps(top).encode(), "index.json")


def test_spec_is_a_protobuf_any():
    parsed = any_pb2.Any.FromString(containerd._spec_any(SPEC))
    assert parsed.type_url == containerd.SPEC_TYPE_URL
    assert json.loads(parsed.value) == SPEC


def test_join_adds_the_task_images_and_the_spec(tmp_path):
    (tmp_path / "inventory.img").write_bytes(b"inventory")
    (tmp_path / "pages-1.img").write_bytes(b"pages")
    (tmp_path / "container.json").write_text("{}")  # ours: never part of the task's images
    _rest_archive(tmp_path)
    out = tmp_path / "join.tar"

    ref, base = containerd._join(str(tmp_path), str(out), "docker.io/library/other:2", SPEC)
    assert (ref, base) == ("cedana.checkpoint/c:1", "docker.io/library/other:2")
    with tarfile.open(out) as tar:
        top = json.load(tar.extractfile("index.json"))
        index = json.load(tar.extractfile("blobs/sha256/" + top["manifests"][0]["digest"].split(":")[1]))
        blobs = {d["mediaType"]: tar.extractfile("blobs/sha256/" + d["digest"].split(":")[1]).read()
                 for d in index["manifests"]}
    assert index["annotations"]["org.opencontainers.image.ref.name"] == "docker.io/library/other:2"
    assert blobs["application/vnd.oci.image.layer.v1.tar+gzip"] == b"rw-layer"
    with tarfile.open(fileobj=io.BytesIO(blobs[containerd.CRIU_MEDIA_TYPE])) as images:
        assert sorted(images.getnames()) == ["inventory.img", "pages-1.img"]
    assert json.loads(any_pb2.Any.FromString(blobs[containerd.CONFIG_MEDIA_TYPE]).value) == SPEC
    for desc in index["manifests"]:
        assert desc["digest"] == "sha256:" + hashlib.sha256(blobs[desc["mediaType"]]).hexdigest()
