"""`checkpoint inspect --type ps|fd|mem|rss|sk`: what CRIU's images say, decoded with CRIU's own
pycriu (the version built with our CRIU), as plain records for a table or JSON.

- ps:  the process tree (pid, ppid, pgid, sid, threads, command name, state);
- fd:  each process's open files (fd, kind, path or peer, offset), cwd and root;
- mem: each process's memory mappings (range, protection, what backs it);
- rss: each process's resident pages, as CRIU dumped them (pagemap runs, bytes);
- sk:  sockets (kind, family, protocol, state, local and remote addresses, unix names).

Everything is read from an images directory; where it came from (dir, archive, mount, store) is
the caller's business, so one checkpoint decodes the same from each.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from ..config import Settings
from ..errors import CheckpointError

TYPES = ("ps", "fd", "mem", "rss", "sk")
PAGE = 4096
TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
              7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING"}
_VMA_KINDS = ((1 << 10, "ipc-shm"), (1 << 8, "shmem"), (1 << 11, "packet"), (1 << 1, "stack"),
              (1 << 2, "vsyscall"), (1 << 3, "vdso"))
_FILE_BACKED = (1 << 6) | (1 << 7)
_SHARED_FILE = 1 << 7
TASK_STATES = {1: "alive", 2: "dead", 3: "stopped", 4: "helper", 5: "thread", 6: "zombie"}


class Images:
    """The decoded images of one directory, each image read once."""

    def __init__(self, path: str):
        self.path = path
        self._cache: dict[str, Any] = {}
        if not os.path.exists(os.path.join(path, "pstree.img")):
            raise CheckpointError(f"{path} holds no CRIU images (no pstree.img)")

    def load(self, name: str, missing_ok: bool = False) -> list[dict]:
        if name not in self._cache:
            self._cache[name] = self._read(name, missing_ok)
        return self._cache[name]

    def _read(self, name: str, missing_ok: bool) -> list[dict]:
        import pycriu

        try:
            with open(os.path.join(self.path, name), "rb") as f:
                return pycriu.images.load(f)["entries"]
        except FileNotFoundError:
            if missing_ok:
                return []
            raise CheckpointError(f"the checkpoint has no {name}") from None
        except Exception as exc:  # noqa: BLE001 - pycriu raises bare exceptions on bad images
            raise CheckpointError(f"cannot decode {name}: {exc}") from None

    def pids(self) -> list[int]:
        return [_task_id(p, "pid") for p in self.load("pstree.img")]

    def files(self) -> dict[int, dict]:
        return {f["id"]: f for f in self.load("files.img", missing_ok=True)}


@contextmanager
def images_of(settings: Settings, ref: str, store_url: str | None = None) -> Iterator[str]:
    """An images directory for `ref`: a directory (in the mount or not) as it is; an archive, local or
    remote, unpacked; a checkpoint of the store (id, job/id, job) exported; temp copies removed after."""
    from .checkpoints import open_checkpoints
    from .process import ImagesDir

    if "://" in ref or os.path.exists(ref):
        with ImagesDir(ref, settings, local_copy=False) as images:
            yield images.path
        return
    work = tempfile.mkdtemp(prefix="cedana-inspect-")
    try:
        with open_checkpoints(settings, store_url) as cps:
            cps.export(ref, os.path.join(work, "images"))
        yield os.path.join(work, "images")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def decode(images_dir: str, kind: str) -> list[dict]:
    """The records of `kind` (one of TYPES) for the images in `images_dir`."""
    if kind not in TYPES:
        raise CheckpointError(f"unknown inspect type {kind!r} (one of {', '.join(TYPES)})")
    readers: dict[str, Callable[[Images], list[dict]]] = {
        "ps": _ps, "fd": _fds, "mem": _mems, "rss": _rss, "sk": _sockets}
    return readers[kind](Images(images_dir))


def _task_id(entry: dict, name: str) -> int:
    return entry[name] if name in entry else entry["ns_" + name][0]


def _ps(img: Images) -> list[dict]:
    out = []
    for p in img.load("pstree.img"):
        pid = _task_id(p, "pid")
        core = img.load(f"core-{pid}.img")[0]
        tc = core.get("tc", {})
        out.append({"pid": pid, "ppid": _task_id(p, "ppid"), "pgid": _task_id(p, "pgid"),
                    "sid": _task_id(p, "sid"), "threads": list(p.get("threads", [])),
                    "comm": tc.get("comm", ""), "state": TASK_STATES.get(tc.get("task_state"), tc.get("task_state"))})
    return out


def _file(img: Images, kind: str, fid: int) -> dict:
    """What file `fid` of type `kind` is: a path (with offset), a pipe, a socket."""
    entry = img.files().get(fid, {})
    if kind == "REG":
        reg = entry.get("reg") or next((r for r in img.load("reg-files.img", missing_ok=True) if r["id"] == fid), {})
        return {"path": reg.get("name", "?"), "pos": reg.get("pos", 0)}
    if kind == "PIPE":
        pipe = entry.get("pipe", {})
        return {"path": f"pipe:[{pipe.get('pipe_id', '?')}]"}
    if kind in ("UNIXSK", "INETSK"):
        return {"path": _socket_name(kind, entry)}
    return {"path": f"{kind.lower()}:{fid}"}


def _fds(img: Images) -> list[dict]:
    out = []
    for pid in img.pids():
        files_id = img.load(f"ids-{pid}.img")[0]["files_id"]
        fds = [{"fd": fd["fd"], "type": fd["type"], **_file(img, fd["type"], fd["id"])}
               for fd in img.load(f"fdinfo-{files_id}.img", missing_ok=True)]
        fs = img.load(f"fs-{pid}.img")[0]
        out.append({"pid": pid, "fds": sorted(fds, key=lambda f: f["fd"]),
                    "cwd": _file(img, "REG", fs["cwd_id"])["path"], "root": _file(img, "REG", fs["root_id"])["path"]})
    return out


def _vma_backing(img: Images, vma: dict) -> str:
    status = vma["status"]
    if status & _FILE_BACKED:
        name = _file(img, "REG", vma["shmid"])["path"]
        return name + (" (shared)" if status & _SHARED_FILE else "")
    for bit, name in _VMA_KINDS:
        if status & bit:
            return f"[{name}]"
    return "[anon]"


def _prot(prot: int) -> str:
    return "".join(c if prot & bit else "-" for c, bit in (("r", 1), ("w", 2), ("x", 4)))


def _mems(img: Images) -> list[dict]:
    out = []
    for pid in img.pids():
        mm = img.load(f"mm-{pid}.img")[0]
        vmas = [{"start": hex(v["start"]), "end": hex(v["end"]), "prot": _prot(v["prot"]),
                 "backing": _vma_backing(img, v), "pgoff": v.get("pgoff", 0)} for v in mm["vmas"]]
        out.append({"pid": pid, "exe": _file(img, "REG", mm["exe_file_id"])["path"], "vmas": vmas})
    return out


def _rss(img: Images) -> list[dict]:
    out = []
    for pid in img.pids():
        vmas = img.load(f"mm-{pid}.img")[0]["vmas"]
        runs = []
        for pm in img.load(f"pagemap-{pid}.img")[1:]:
            vma = next((v for v in vmas if v["start"] <= pm["vaddr"] < v["end"]), None)
            runs.append({"vaddr": hex(pm["vaddr"]), "pages": pm["nr_pages"],
                         "backing": _vma_backing(img, vma) if vma else "?"})
        pages = sum(r["pages"] for r in runs)
        out.append({"pid": pid, "pages": pages, "bytes": pages * PAGE, "runs": runs})
    return out


def _addr(value: Any) -> str:
    if isinstance(value, list):
        return ":".join(str(v) for v in value) if len(value) > 1 else str(value[0]) if value else ""
    return str(value or "")


def _socket_name(kind: str, entry: dict) -> str:
    if kind == "UNIXSK":
        usk = entry.get("usk", {})
        return f"unix:{usk.get('name') or ''}[{usk.get('ino', '?')}]"
    isk = entry.get("isk", {})
    return f"{str(isk.get('proto', '')).lower()}:{_addr(isk.get('src_addr'))}:{isk.get('src_port', '')}"


def _sockets(img: Images) -> list[dict]:
    out = []
    for fid, entry in sorted(img.files().items()):
        if entry.get("type") == "INETSK":
            isk = entry["isk"]
            out.append({"id": fid, "kind": "inet", "family": isk.get("family", ""), "type": isk.get("type", ""),
                        "proto": isk.get("proto", ""), "state": TCP_STATES.get(isk.get("state"), isk.get("state")),
                        "local": f"{_addr(isk.get('src_addr'))}:{isk.get('src_port', 0)}",
                        "remote": f"{_addr(isk.get('dst_addr'))}:{isk.get('dst_port', 0)}"})
        elif entry.get("type") == "UNIXSK":
            usk = entry["usk"]
            out.append({"id": fid, "kind": "unix", "family": "UNIX", "type": usk.get("type", ""), "proto": "",
                        "state": TCP_STATES.get(usk.get("state"), usk.get("state")), "local": usk.get("name") or "",
                        "remote": str(usk.get("peer") or "")})
    return out
