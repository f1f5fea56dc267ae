"""Container checkpoint archives (the kubelet's, CRI-O's, containerd's, Podman's) in the store.

This module owns the one archive format those engines share (checkpointctl's: `checkpoint/` with
CRIU's images, `config.dump`, `spec.dump`, `rootfs-diff.tar`, `stats-dump` and engine extras):
unpacking an archive safely (none, gzip or zstd, sniffed from its magic bytes; members that would
land outside it, links pointing out of it and device nodes are refused), reading which engine,
pod and container it came from, storing its members unpacked as a checkpoint (so successive
checkpoints of one container share chunks), writing it back as an archive or as an OCI image that
CRI-O, containerd and Podman restore from, and watching the kubelet's checkpoint directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import shutil
import tarfile
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from ..catalog import Manifest
from ..errors import AlreadyExists, CedanaError, CheckpointError, NotFound, UsageError
from .archive import extract_member, open_tar_stream, sniff_format, write_archive
from .checkpoints import Checkpoints, Progress

log = logging.getLogger(__name__)

KIND = "kubelet"
IMAGES_DIR = "checkpoint"
COMPRESSIONS = ("none", "gzip", "zstd")
SUFFIXES = {"none": ".tar", "gzip": ".tar.gz", "zstd": ".tar.zst"}
ENGINE_ANNOTATION = "io.container.manager"
ENGINES = {"libpod": "podman", "cri-o": "cri-o"}  # absent: containerd

# Where each engine's metadata names the pod and container (spec.dump annotations).
_NAMESPACE_KEYS = ("io.kubernetes.pod.namespace", "io.kubernetes.cri.sandbox-namespace")
_POD_KEYS = ("io.kubernetes.pod.name", "io.kubernetes.cri.sandbox-name")
_CONTAINER_KEYS = ("io.kubernetes.container.name", "io.kubernetes.cri.container-name")
_IMAGE_KEYS = ("io.kubernetes.cri-o.ImageName", "io.kubernetes.cri.image-name")

# The annotations that mark an OCI image as a checkpoint: CRI-O's older one, the one containerd
# (2.1+) and current CRI-O read (checkpointctl's metadata package), and Podman's.
NAME_ANNOTATIONS = ("io.kubernetes.cri-o.annotations.checkpoint.name", "org.criu.checkpoint.container.name",
                    "io.podman.annotations.checkpoint.name")
IMAGE_ANNOTATIONS = ("org.criu.checkpoint.rootfsImageName", "io.podman.annotations.checkpoint.rootfsImageName",
                     "io.podman.annotations.checkpoint.rawImageName")


@dataclass(frozen=True)
class ContainerInfo:
    """What a container checkpoint says about where it came from."""

    engine: str
    container: str
    namespace: str | None = None
    pod: str | None = None
    image: str | None = None
    container_id: str | None = None
    created: str | None = None
    runtime: str | None = None

    def job_name(self) -> str:
        """`<namespace>_<pod>_<container>` for a pod's container (Kubernetes names hold no `_`),
        else the container's own name."""
        parts = [self.namespace, self.pod, self.container] if self.namespace and self.pod else [self.container]
        return _clean_name("_".join(p for p in parts if p))


@dataclass(frozen=True)
class CriuContents:
    """A summary of the CRIU images inside a container checkpoint."""

    files: int
    bytes: int
    pages_bytes: int
    pids: tuple[int, ...]


# --- reading an archive -------------------------------------------------------------------------

def unpack(archive: str | os.PathLike, dest: str | os.PathLike) -> str:
    """Unpack a container checkpoint archive into the empty dir `dest`; return its compression.

    Every member is checked before it is written: no absolute paths, no `..`, no link that points
    out of the archive, no device, FIFO or socket. The first bad member stops the unpack."""
    name = os.fspath(archive)
    compression = _compression(name)
    with open(name, "rb") as src, open_tar_stream(src, name) as tar:
        for member in tar:
            _check_member(member, name)
            extract_member(tar, member, dest, name)
    if not (Path(dest) / IMAGES_DIR / "inventory.img").is_file() or not (Path(dest) / "spec.dump").is_file():
        raise CheckpointError(f"{name}: not a container checkpoint archive (no checkpoint/inventory.img or spec.dump)")
    return compression


def _compression(path: str) -> str:
    if not os.path.isfile(path):
        raise NotFound(f"{path}: no such archive")
    with open(path, "rb") as f:
        fmt = sniff_format(f.read(520))
    if fmt not in ("tar", "gzip", "zstd"):
        raise CheckpointError(f"{path}: not a container checkpoint archive (not a tar, tar.gz or tar.zst)")
    return "none" if fmt == "tar" else fmt


def _check_member(member: tarfile.TarInfo, archive: str) -> None:
    parts = member.name.split("/")
    if member.name.startswith("/") or ".." in parts:
        raise CheckpointError(f"{archive}: unsafe archive member {member.name!r} (outside the checkpoint)")
    if member.issym() or member.islnk():
        base = "" if member.islnk() else os.path.dirname(member.name)
        target = os.path.normpath(os.path.join("/top", base, member.linkname))
        if member.linkname.startswith("/") or not target.startswith("/top/"):
            raise CheckpointError(f"{archive}: unsafe link {member.name!r} -> {member.linkname!r} (outside the checkpoint)")
    elif not (member.isfile() or member.isdir()):
        raise CheckpointError(f"{archive}: refusing device or special file {member.name!r} in a checkpoint archive")


def read_info(root: str | os.PathLike) -> ContainerInfo:
    """Engine, namespace, pod, container and image from an unpacked checkpoint's spec.dump/config.dump."""
    root = Path(root)
    spec = _read_json(root / "spec.dump")
    config = _read_json(root / "config.dump") if (root / "config.dump").is_file() else {}
    notes = spec.get("annotations") or {}
    engine = ENGINES.get(notes.get(ENGINE_ANNOTATION, ""), "containerd")
    container = _first(notes, _CONTAINER_KEYS) or config.get("name") or (config.get("id") or "")[:12]
    if not container:
        raise CheckpointError(f"{root}: the checkpoint names no container (spec.dump, config.dump)")
    return ContainerInfo(
        engine=engine, container=container, namespace=_first(notes, _NAMESPACE_KEYS), pod=_first(notes, _POD_KEYS),
        image=config.get("rootfsImageName") or config.get("rootfsImage") or _first(notes, _IMAGE_KEYS),
        container_id=config.get("id"), created=config.get("createdTime"),
        runtime=config.get("runtime") if isinstance(config.get("runtime"), str) else None,
    )


def criu_contents(images_dir: str | os.PathLike) -> CriuContents:
    """How many image files, how many bytes (of memory pages) and which pids the images hold."""
    from ..criu.images import read_pstree

    files = [p for p in Path(images_dir).iterdir() if p.is_file()]
    pids = tuple(e.pid for e in read_pstree(os.fspath(images_dir)))
    return CriuContents(files=len(files), bytes=sum(p.stat().st_size for p in files),
                        pages_bytes=sum(p.stat().st_size for p in files if p.name.startswith("pages-")), pids=pids)


def describe_archive(path: str | os.PathLike) -> dict[str, Any] | None:
    """For `checkpoint inspect ARCHIVE`: what a container checkpoint archive holds, as an import
    would record it (`kubelet`, `criu`), read in one pass; None for any other archive."""
    name, wanted = os.fspath(path), {"spec.dump", "config.dump", f"{IMAGES_DIR}/pstree.img"}
    counts = {"files": 0, "bytes": 0, "pages_bytes": 0}
    with tempfile.TemporaryDirectory(prefix="cedana-inspect-") as tmp:
        try:
            with open(name, "rb") as src, open_tar_stream(src, name) as tar:
                for member in tar:
                    _check_member(member, name)
                    if member.isfile() and member.name.startswith(f"{IMAGES_DIR}/"):
                        _count_image(counts, member)
                    if member.isfile() and member.name in wanted:
                        with open(Path(tmp) / os.path.basename(member.name), "wb") as out:
                            shutil.copyfileobj(tar.extractfile(member), out)  # type: ignore[arg-type]
        except CheckpointError:
            return None
        if not (Path(tmp) / "spec.dump").is_file():
            return None
        from ..criu.images import read_pstree

        pids = [e.pid for e in read_pstree(tmp)] if (Path(tmp) / "pstree.img").is_file() else []
        return {"kubelet": {**asdict(read_info(tmp)), "archive": os.path.basename(name),
                            "compression": _compression(name), "archive_bytes": os.path.getsize(name)},
                "criu": {**counts, "pids": pids}}


def _count_image(counts: dict[str, int], member: tarfile.TarInfo) -> None:
    counts["files"] += 1
    counts["bytes"] += member.size
    if os.path.basename(member.name).startswith("pages-"):
        counts["pages_bytes"] += member.size


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path.name}: unreadable checkpoint metadata ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path.name}: checkpoint metadata is not a JSON object")
    return data


def _first(notes: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    return next((str(notes[k]) for k in keys if notes.get(k)), None)


def _clean_name(text: str) -> str:
    """A job name the store accepts: other characters become '-', at most 128."""
    name = re.sub(r"[^A-Za-z0-9._+@=-]", "-", text).replace("..", "-")
    return (name.lstrip("._+@=-") or "container")[:128]


# --- into and out of the store ------------------------------------------------------------------

def import_archive(cps: Checkpoints, archive: str | os.PathLike, job: str | None = None, name: str | None = None,
                   progress: Progress | None = None) -> Manifest:
    """Store a container checkpoint archive, unpacked, as a checkpoint of `job` (default: from its metadata)."""
    with tempfile.TemporaryDirectory(prefix="cedana-kubelet-") as tmp:
        compression = unpack(archive, tmp)
        info = read_info(tmp)
        meta = {"kubelet": {**asdict(info), "archive": os.path.basename(os.fspath(archive)),
                            "compression": compression, "archive_bytes": os.path.getsize(archive)},
                "criu": asdict(criu_contents(Path(tmp) / IMAGES_DIR))}
        return cps.import_dir(tmp, job or info.job_name(), name, kind=KIND, meta=meta, progress=progress,
                              images=IMAGES_DIR)


def find_container_checkpoint(cps: Checkpoints, ref: str) -> Manifest:
    """Checkpoint `ref`, which must be a container checkpoint (CRIU's images in `checkpoint/`)."""
    m = cps.catalog.find(ref)
    paths = {f.path for f in m.files}
    if f"{IMAGES_DIR}/inventory.img" not in paths or "spec.dump" not in paths:
        raise CheckpointError(f"checkpoint {m.name} is not a container checkpoint (import one with --format kubelet)")
    return m


def export_archive(cps: Checkpoints, ref: str, dest: str | os.PathLike, compression: str = "none") -> Manifest:
    """Write container checkpoint `ref` as an archive `podman container restore --import` and
    CRI-O accept; `dest` must not exist (it appears whole or not at all)."""
    if compression not in COMPRESSIONS:
        raise UsageError(f"unknown compression {compression!r} (use one of {', '.join(COMPRESSIONS)})")
    m = find_container_checkpoint(cps, ref)
    with _Staging(dest) as (tmp, publish):
        cps.export(m.name, tmp / "ckpt")
        with open(tmp / "out", "wb") as out:
            write_archive(os.fspath(tmp / "ckpt"), out, "tar" if compression == "none" else compression)
        publish(tmp / "out")
    log.info("exported %s as a %s container checkpoint archive %s", m.name, compression, dest)
    return m


def export_oci_image(cps: Checkpoints, ref: str, dest: str | os.PathLike, image: str | None = None) -> tuple[Manifest, str]:
    """Write container checkpoint `ref` as an OCI image archive (one layer holding the checkpoint's
    files, the checkpoint annotations on its manifest); returns the image name it is tagged with."""
    m = find_container_checkpoint(cps, ref)
    image = image or default_image_name(m)
    with _Staging(dest) as (tmp, publish):
        cps.export(m.name, tmp / "ckpt")
        info = read_info(tmp / "ckpt")
        layout = tmp / "layout"
        _write_oci_layout(tmp / "ckpt", layout, image, _annotations(m, info))
        with open(tmp / "out", "wb") as out:
            write_archive(os.fspath(layout), out, "tar")
        publish(tmp / "out")
    log.info("exported %s as the OCI checkpoint image %s in %s", m.name, image, dest)
    return m, image


def default_image_name(m: Manifest) -> str:
    """`localhost/cedana-checkpoint/<job>:<checkpoint id>`, lowercased as image names must be."""
    repo = re.sub(r"[^a-z0-9]+", "-", m.job.lower()).strip("-") or "checkpoint"
    tag = re.sub(r"[^A-Za-z0-9_.-]", "-", m.id)[:128]
    return f"localhost/cedana-checkpoint/{repo}:{tag}"


def _annotations(m: Manifest, info: ContainerInfo) -> dict[str, str]:
    notes = {k: info.container for k in NAME_ANNOTATIONS}
    if info.image:
        notes.update({k: info.image for k in IMAGE_ANNOTATIONS})
    if info.pod:
        notes["org.criu.checkpoint.pod.name"] = info.pod
    if info.namespace:
        notes["org.criu.checkpoint.pod.namespace"] = info.namespace
    notes["org.criu.checkpoint.engine.name"] = info.engine
    # Podman restores an image only when this names the OCI runtime it runs (runc: the one with CRIU).
    for key in ("org.criu.checkpoint.runtime.name", "io.podman.annotations.checkpoint.runtime.name"):
        notes[key] = info.runtime or "runc"
    notes["org.opencontainers.image.created"] = m.created.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    notes["dev.cedana.checkpoint"] = m.name
    return notes


def _write_oci_layout(files: Path, layout: Path, image: str, notes: dict[str, str]) -> None:
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    with _HashingFile(blobs / ".layer") as layer:
        write_archive(os.fspath(files), layer, "tar")  # type: ignore[arg-type]
    layer_digest, layer_size = layer.digest, layer.size
    os.rename(blobs / ".layer", blobs / layer_digest)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    config = {"created": now, "architecture": _oci_arch(), "os": "linux", "config": {"Labels": notes},
              "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
              "history": [{"created": now, "created_by": "cedana checkpoint export --format oci-image"}]}
    config_desc = _put_json(blobs, config, "application/vnd.oci.image.config.v1+json")
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": config_desc,
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                            "digest": f"sha256:{layer_digest}", "size": layer_size}],
                "annotations": notes}
    manifest_desc = _put_json(blobs, manifest, "application/vnd.oci.image.manifest.v1+json")
    manifest_desc["annotations"] = {"org.opencontainers.image.ref.name": image}
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest_desc]}))


def _put_json(blobs: Path, obj: dict[str, Any], media_type: str) -> dict[str, Any]:
    data = json.dumps(obj, sort_keys=True).encode()
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def _oci_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}.get(
        machine, machine)


class _HashingFile:
    """A file being written whose sha256 and size are known when it is closed."""

    def __init__(self, path: Path):
        self._f: BinaryIO = open(path, "wb")
        self._h = hashlib.sha256()
        self.size = 0
        self.digest = ""

    def write(self, data: bytes) -> int:
        self._h.update(data)
        self.size += len(data)
        return self._f.write(data)

    def __enter__(self) -> "_HashingFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()
        self.digest = self._h.hexdigest()


class _Staging:
    """A private temp dir beside `dest`, and a `publish(path)` that links a finished file to `dest`
    (failing if `dest` exists); the temp dir goes whatever happens."""

    def __init__(self, dest: str | os.PathLike):
        self.dest = Path(dest).absolute()
        if os.path.lexists(self.dest):
            raise AlreadyExists(f"{self.dest} exists; export into a new file")

    def __enter__(self) -> tuple[Path, Any]:
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.dest.name}.export-", dir=self.dest.parent))
        return self.tmp, self._publish

    def _publish(self, path: Path) -> None:
        os.chmod(path, 0o600)
        try:
            os.link(path, self.dest)
        except FileExistsError:
            raise AlreadyExists(f"{self.dest} exists; export into a new file") from None

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


# --- the daemon's watcher -----------------------------------------------------------------------

@dataclass(frozen=True)
class WatchResult:
    """One archive the watcher dealt with: the checkpoint it became, or why it could not."""

    archive: str
    checkpoint: str | None = None
    error: str | None = None


class ArchiveWatcher:
    """Imports the archives that appear in a directory (the kubelet's checkpoint directory).

    An archive is imported once it is complete: the same size and mtime at two scans in a row
    (the kubelet writes it in place). What was imported, or refused, is remembered in `state`
    (a JSON file) by name, size and mtime, so a restart does not import anything twice."""

    def __init__(self, cps_factory: Any, directory: str, state: str):
        self._open = cps_factory
        self.directory = Path(directory)
        self.state_path = Path(state)
        self._done: dict[str, list[Any]] = self._load()
        self._seen: dict[str, tuple[int, int]] = {}

    def scan(self) -> list[WatchResult]:
        """One pass: import every archive that was already there, unchanged, at the last pass."""
        results, present = [], set()
        for path, key in self._candidates():
            present.add(path.name)
            if self._done.get(path.name, [None, None])[:2] == list(key):
                continue
            if self._seen.get(path.name) != key:
                self._seen[path.name] = key  # new or still growing: look again next time
                continue
            results.append(self._import(path, key))
        gone = set(self._done) - present
        if gone:  # removed from the directory (retention): forget them
            for name in gone:
                del self._done[name]
            self._save()
        return results

    def _candidates(self) -> Iterator[tuple[Path, tuple[int, int]]]:
        try:
            entries = sorted(os.scandir(self.directory), key=lambda e: e.name)
        except FileNotFoundError:
            return
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                continue
            st = entry.stat(follow_symlinks=False)
            yield Path(entry.path), (st.st_size, st.st_mtime_ns)

    def _import(self, path: Path, key: tuple[int, int]) -> WatchResult:
        try:
            with self._open() as cps:
                m = import_archive(cps, path)
            result = WatchResult(path.name, checkpoint=m.name)
            log.info("imported %s as %s", path, m.name)
        except (CedanaError, OSError) as exc:  # a bad or unreadable archive must not stop the watcher
            result = WatchResult(path.name, error=str(exc))
            log.warning("cannot import %s: %s", path, exc)
        self._done[path.name] = [*key, result.checkpoint or f"error: {result.error}"]
        self._save()
        return result

    def _load(self) -> dict[str, list[Any]]:
        try:
            data = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable, starting afresh (%s)", self.state_path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def _save(self) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(f".{self.state_path.name}.tmp")
        tmp.write_text(json.dumps(self._done, indent=1, sort_keys=True))
        os.replace(tmp, self.state_path)


def watcher_state_path(settings: Any) -> str:
    """Beside the catalog's index: what the watcher has imported."""
    return os.path.join(os.path.dirname(os.path.abspath(settings.db.path)), "kubelet-imported.json")
