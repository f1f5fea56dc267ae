"""The ways of checkpointing compared, each as a dump step and one or more restore steps.

A method is measured only when the commands it needs exist (`unavailable()` says why not);
every step runs the real programs (criu, tar, gzip, lz4, cedana), nothing is estimated.
Each dump keeps the workload running (--leave-running), so all methods of a repetition dump
the same memory; restores then run one at a time, because a restored process takes the
workload's PID back.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .procs import (Cleanup, CmdResult, MemoryWatch, StepError, command_works, is_running, last_line,
                    kill_and_reap, run_cmd, unmount, wait_gone)

ARCHIVE_EXT = {"none": "", "tar": ".tar", "gzip": ".tar.gz", "lz4": ".tar.lz4", "zlib": ".tar.zlib",
               "zstd": ".tar.zst"}
CEDANA_COMPRESSIONS = ["none", "tar", "gzip", "lz4", "zlib", "zstd"]


@dataclass(frozen=True)
class Spec:
    """One figure of the report: what it is, its unit, and which figure is its floor."""
    id: str
    kind: str  # dump | restore | bytes | memory
    label: str
    unit: str  # s | B
    floor: str | None


@dataclass
class Env:
    """What every step needs: the programs, the directories, and the cleanup list."""
    criu: str
    cedana: str | None
    workdir: Path
    floor_dir: Path  # a tmpfs
    store_dir: Path  # the "store" Cedana's way copies its archives to
    cleanup: Cleanup
    timeout: float
    cmd_env: dict = field(default_factory=lambda: dict(os.environ))
    help_cache: dict = field(default_factory=dict)
    services: dict = field(default_factory=dict)  # started on first use (e.g. the S3 server)

    def missing(self, *words: str) -> str | None:
        """Why `cedana WORDS` cannot be used yet, in a few words; None when it runs."""
        if not self.cedana:
            return "the `cedana` command is not installed"
        works, text = self.cedana_help(*words)
        if works:
            return None
        command = " ".join(("cedana",) + words)
        if "No such command" in text:
            return f"`{command}` does not exist yet"
        return f"`{command} --help` fails: {last_line(text)[:80]}"

    def cedana_help(self, *words: str) -> tuple[bool, str]:
        """`cedana WORDS --help`: (works, text); cached, it is asked by several methods."""
        if not self.cedana:
            return False, "the cedana command is not installed"
        if words not in self.help_cache:
            self.help_cache[words] = command_works([self.cedana, *words, "--help"])
        return self.help_cache[words]


@dataclass
class Artifact:
    """A checkpoint a dump produced: where it is, which checksum a restore of it must show."""
    path: Path | str  # a str for a remote URL
    checksum: str
    pid: int
    nbytes: int
    peak_rss: dict[str, int] = field(default_factory=dict)
    image_bytes: int = 0  # CRIU's images as files (what a store ingested), when known


def tree_bytes(path: Path) -> int:
    """Apparent size of a file, or of all files under a directory."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, dirs, names in os.walk(path):
        dirs[:] = [d for d in dirs if d != ".tmp"]  # a store's objects being written, not stored yet
        for name in names:
            try:
                total += (Path(root) / name).lstat().st_size
            except FileNotFoundError:
                pass  # renamed or deleted meanwhile (the store's background work)
    return total


def wait_running(pid: int, timeout: float = 10.0) -> None:
    """A restore command has returned; its process must be there (give a detached start a moment)."""
    deadline = time.monotonic() + timeout
    while not is_running(pid):
        if time.monotonic() > deadline:
            raise StepError(f"restore returned but process {pid} is not running")
        time.sleep(0.01)


class Method:
    key = ""
    label = ""
    has_second = False  # also measured: a second checkpoint after the workload changed a little
    memory_figure = False  # peak RSS of cedanafs processes is reported

    def restore_modes(self) -> list[str]:
        return ["eager"]

    def specs(self) -> list[Spec]:
        specs = [Spec(f"frozen/{self.key}", "frozen", f"frozen: {self.label}", "s", "frozen/floor"),
                 Spec(f"dump/{self.key}", "dump", f"committed: {self.label}", "s", "dump/floor")]
        if self.has_second:
            specs.append(Spec(f"frozen/{self.key}:second", "frozen", f"frozen: {self.label}, 2nd checkpoint",
                              "s", "frozen/floor"))
            specs.append(Spec(f"dump/{self.key}:second", "dump", f"committed: {self.label}, 2nd checkpoint",
                              "s", "dump/floor"))
        for mode in self.restore_modes():
            specs += self.restore_specs(mode)
        specs.append(Spec(f"bytes/{self.key}", "bytes", f"stored: {self.label}", "B", "bytes/floor"))
        if self.has_second:
            specs.append(Spec(f"bytes/{self.key}:second", "bytes", f"stored: {self.label}, 2nd checkpoint",
                              "B", "bytes/floor"))
        if self.memory_figure:
            specs.append(Spec(f"memory/{self.key}", "memory", f"peak RSS: {self.label}", "B", None))
        return specs

    def restore_specs(self, mode: str) -> list[Spec]:
        return [Spec(f"restore/{self.key}", "restore", f"restore: {self.restore_label()}", "s", "restore/floor")]

    def restore_label(self) -> str:
        return self.label

    def unavailable(self, env: Env) -> str | None:
        return None

    def extra_env(self, env: Env) -> dict:
        """Environment the method's cedana commands need beyond env.cmd_env (e.g. S3 credentials)."""
        return {}

    def mode_unavailable(self, env: Env, mode: str) -> str | None:
        """Why one restore mode cannot be measured although the method can."""
        return None

    def begin_rep(self, env: Env, rep: int) -> None:
        pass

    def settle(self, env: Env) -> tuple[float, int] | None:
        """After a dump: wait for the store's background work on it; (seconds waited, bytes stored
        once done), or None when there was none."""
        return None

    def server_cpu(self) -> float | None:
        """CPU seconds used so far by the method's long-lived server (a mount), if it has one."""
        return None

    def after_dump(self, env: Env, art: Artifact, second: bool) -> None:
        """Untimed, after a dump was measured: what the method holds until its restore."""

    def before_restore(self, env: Env, rep: int, mode: str) -> None:
        """Called after the dumps of a repetition, before each restore mode."""

    def end_rep(self, env: Env) -> dict[str, int]:
        """Tear down per-repetition state; returns peak RSS seen by long-lived processes."""
        return {}

    def dump(self, env: Env, pid: int, rep: int, checksum: str, second: bool = False) -> Artifact:
        raise NotImplementedError

    def restore(self, env: Env, art: Artifact, mode: str, scratch: Path) -> CmdResult | None:
        raise NotImplementedError

    def wait_memory_back(self, env: Env, art: Artifact, mode: str) -> bool:
        """After a lazy restore returned: wait until all memory is back; False if it cannot tell."""
        return False


# --- the floor: raw CRIU into a tmpfs ---

def criu_dump(env: Env, pid: int, images: Path) -> CmdResult:
    images.mkdir(parents=True, exist_ok=True)
    return run_cmd([env.criu, "dump", "-t", str(pid), "-D", str(images), "--leave-running",
                    "-o", "dump.log"], timeout=env.timeout)


def criu_restore(env: Env, images: Path, pid: int) -> CmdResult:
    result = run_cmd([env.criu, "restore", "-D", str(images), "--restore-detached", "-o", "restore.log"],
                     timeout=env.timeout)
    wait_running(pid)
    return result


class Floor(Method):
    key = "floor"
    label = "raw criu -> tmpfs (floor)"
    has_second = True

    def dump(self, env, pid, rep, checksum, second=False):
        images = self.images(env, rep, second)
        criu_dump(env, pid, images)
        return Artifact(images, checksum, pid, tree_bytes(images))

    def restore_label(self):
        return "raw criu <- tmpfs (floor)"

    def after_dump(self, env, art, second):
        """The images leave the tmpfs until the restore (the 2nd checkpoint's for good: only the
        first is restored). Held there, 2 x 2.8 GiB at 4 GiB, they slowed the methods measured
        after the floor: this machine backs memory that was free lazily, and the more is held, the
        more a dump writes into such memory (measured: 2.8 GiB into a tmpfs, 1.0 s alone, 3.3 s
        with 5.6 GiB held)."""
        if second:
            shutil.rmtree(art.path, ignore_errors=True)
            return
        parked = self.parked(env, art.path)
        shutil.rmtree(parked, ignore_errors=True)
        shutil.copytree(art.path, parked)
        shutil.rmtree(art.path)
        for name in os.listdir(parked):  # nor kept in the page cache: on the disk only
            fd = os.open(parked / name, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

    def before_restore(self, env, rep, mode):
        images = self.images(env, rep)
        parked = self.parked(env, images)
        if parked.is_dir() and not images.exists():
            shutil.copytree(parked, images)
            shutil.rmtree(parked)

    @staticmethod
    def images(env: Env, rep: int, second: bool = False) -> Path:
        return env.floor_dir / f"rep{rep}{'-2' if second else ''}"

    @staticmethod
    def parked(env: Env, images: Path) -> Path:
        return env.workdir / "floor-parked" / images.name

    def restore(self, env, art, mode, scratch):
        return criu_restore(env, art.path, art.pid)


# --- Cedana's way: dump to local disk, tar + compress, copy to the store ---

def have_lz4_cli() -> bool:
    return shutil.which("lz4") is not None


def compress_tree(images: Path, archive: Path, codec: str, timeout: float) -> None:
    if codec == "gzip":
        run_cmd(["tar", "-C", str(images), "-czf", str(archive), "."], timeout=timeout)
    elif have_lz4_cli():
        run_cmd(["tar", "-C", str(images), "-I", "lz4", "-cf", str(archive), "."], timeout=timeout)
    else:
        python_lz4_tar(images, archive)


def extract_tree(archive: Path, dest: Path, codec: str, timeout: float) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    if codec == "gzip":
        run_cmd(["tar", "-C", str(dest), "-xzf", str(archive)], timeout=timeout)
    elif have_lz4_cli():
        run_cmd(["tar", "-C", str(dest), "-I", "lz4", "-xf", str(archive)], timeout=timeout)
    else:
        python_lz4_untar(archive, dest)


def python_lz4_tar(images: Path, archive: Path) -> None:
    """Fallback when no lz4 program is installed: the Python lz4 binding, as a stream."""
    import lz4.frame
    import tarfile
    with lz4.frame.open(archive, "wb") as raw, tarfile.open(fileobj=raw, mode="w|") as tar:
        tar.add(images, arcname=".")


def python_lz4_untar(archive: Path, dest: Path) -> None:
    import lz4.frame
    import tarfile
    with lz4.frame.open(archive, "rb") as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
        # Extraction filters came in Python 3.11.4 (Debian 12 has 3.11.2).
        tar.extractall(dest, **({"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}))


class CedanaWay(Method):
    """What Cedana does: CRIU to a local directory, a compressed tar of it, the tar to the store."""

    def __init__(self, codec: str):
        self.codec = codec
        self.key = f"cedana-way-{codec}"
        self.label = f"Cedana's way: criu -> disk, tar+{codec}, copy to store"

    def restore_label(self):
        return f"Cedana's way: copy from store, un-tar+{self.codec}, criu restore"

    def unavailable(self, env):
        if self.codec == "lz4" and not have_lz4_cli():
            try:
                import lz4.frame  # noqa: F401
            except ImportError:
                return "neither the lz4 program nor the Python lz4 module is installed"
        return None

    def dump(self, env, pid, rep, checksum, second=False):
        local = env.workdir / "local" / f"{self.key}-{rep}"
        images = local / "images"
        criu_dump(env, pid, images)
        archive = local / f"ckpt{ARCHIVE_EXT[self.codec]}"
        compress_tree(images, archive, self.codec, env.timeout)
        dest, nbytes = self.put(env, archive, f"{self.key}-{rep}{ARCHIVE_EXT[self.codec]}")
        shutil.rmtree(local)  # Cedana drops its staging copy too
        return Artifact(dest, checksum, pid, nbytes)

    def put(self, env: Env, archive: Path, name: str) -> tuple[Path | str, int]:
        """Copy the archive to the store; returns where it is and its size there."""
        dest = env.store_dir / name
        shutil.copyfile(archive, dest)
        return dest, dest.stat().st_size

    def get(self, env: Env, art: Artifact, dest: Path) -> None:
        shutil.copyfile(art.path, dest)

    def restore(self, env, art, mode, scratch):
        local = scratch / self.key
        local.mkdir(parents=True)
        archive = local / PurePosixPath(str(art.path)).name
        self.get(env, art, archive)
        extract_tree(archive, local / "images", self.codec, env.timeout)
        return criu_restore(env, local / "images", art.pid)


# --- cedanafs: `cedana dump process` to a local archive ---

def compressions_offered(help_text: str) -> set[str] | None:
    """The --compression choices click lists in `cedana dump process --help`, if it lists them."""
    match = re.search(r"--compression[^\n]*?\[([a-z0-9|]+)\]", help_text)
    return set(match.group(1).split("|")) if match else None


class CedanaDump(Method):
    memory_figure = True

    def __init__(self, compression: str):
        self.compression = compression
        self.key = f"cedana-{compression}"
        self.label = f"cedana dump process --compression {compression}"

    def restore_label(self):
        return f"cedana restore process ({self.compression})"

    def unavailable(self, env):
        why = env.missing("dump", "process") or env.missing("restore", "process")
        if why:
            return why
        offered = compressions_offered(env.cedana_help("dump", "process")[1])
        if offered is not None and self.compression not in offered:
            return f"`cedana dump process` does not offer --compression {self.compression}"
        return None

    def dump(self, env, pid, rep, checksum, second=False):
        name = f"{self.key}-{rep}"
        result = run_cmd([env.cedana, "dump", "process", str(pid), "--dir", self.target(env), "--name", name,
                          "--compression", self.compression, "--leave-running"],
                         timeout=env.timeout, env={**env.cmd_env, **self.extra_env(env)}, watch_memory=True)
        path, nbytes = self.located(env, f"{name}{ARCHIVE_EXT[self.compression]}")
        return Artifact(path, checksum, pid, nbytes, result.peak_rss)

    def target(self, env: Env) -> str:
        """The --dir the dump goes to."""
        outdir = env.workdir / "cedana-dumps"
        outdir.mkdir(exist_ok=True)
        return str(outdir)

    def located(self, env: Env, name: str) -> tuple[Path | str, int]:
        """Where the dump named `name` landed, and its size; StepError if it is not there."""
        path = Path(self.target(env)) / name
        if not path.exists():
            raise StepError(f"cedana dump process succeeded but {path} does not exist")
        return path, tree_bytes(path)

    def restore(self, env, art, mode, scratch):
        result = run_cmd([env.cedana, "restore", "process", "--path", str(art.path)],
                         timeout=env.timeout, env={**env.cmd_env, **self.extra_env(env)}, watch_memory=True)
        wait_running(art.pid)
        return result


# --- cedanafs: dump into the mount over a local store, restore eagerly and lazily ---

class MountDump(Method):
    """`cedana mount MNT --store DIR`, a fresh store each repetition; dumps go to MNT/jobs/bench/."""

    key = "mount"
    store_name = "local store"
    cold_restore = False  # restore through a fresh mount (empty cache and catalog)?
    has_second = True
    memory_figure = True
    JOB = "bench"

    def __init__(self):
        self.mnt: Path | None = None
        self.store: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.watch: MemoryWatch | None = None
        self.tokens: list[int] = []
        self.cmd_env: dict = {}
        self.url = ""
        self.peak: dict[str, int] = {}
        self.bytes_before = 0

    @property
    def label(self):
        return f"cedana dump process -> mount ({self.store_name})"

    def restore_modes(self):
        return ["eager", "lazy"]

    def restore_specs(self, mode):
        where = f"mount ({self.store_name})"
        if mode == "eager":
            return [Spec(f"restore/{self.key}", "restore", f"restore: cedana restore process <- {where}, eager",
                         "s", "restore/floor")]
        return [Spec(f"restore/{self.key}-lazy:run", "restore", f"restore: <- {where} --lazy, until running", "s",
                     "restore/floor"),
                Spec(f"restore/{self.key}-lazy:all", "restore",
                     f"restore: <- {where} --lazy, until all memory is back", "s", "restore/floor")]

    def specs(self):
        return super().specs() + [Spec(f"memory/{self.key}-daemon", "memory",
                                       f"peak RSS: the mount process ({self.store_name})", "B", None),
                                  Spec(f"cpu/{self.key}", "cpu",
                                       f"CPU-s per GiB ingested: the mount process ({self.store_name})", "s", None),
                                  Spec(f"cpu/{self.key}:with-compaction", "cpu",
                                       f"CPU-s per GiB ingested and compressed: the mount process ({self.store_name})",
                                       "s", None),
                                  Spec(f"settle/{self.key}", "settle", f"compressed: {self.label}", "s", None),
                                  Spec(f"settle/{self.key}:second", "settle", f"compressed: {self.label}, 2nd checkpoint",
                                       "s", None),
                                  Spec(f"bytes/{self.key}:at-commit", "bytes",
                                       f"stored at the commit, before compression: {self.label}", "B", "bytes/floor")]

    def settle(self, env):
        """Wait until the mount has compressed the chunks it stored plain (user.cedana.compaction)."""
        start = time.perf_counter()
        while True:
            try:
                state = json.loads(os.getxattr(self.mnt, "user.cedana.compaction"))
            except (OSError, ValueError):
                return None  # an older mount
            if not state.get("after_commit"):
                return None  # this store compresses before storing
            if not state["chunks"]:
                return time.perf_counter() - start, self.store_bytes(env) - self.bytes_before
            if time.perf_counter() - start > env.timeout:
                raise StepError(f"the mount still had {state['chunks']} chunks to compress after {env.timeout:.0f} s")
            time.sleep(0.02)

    def server_cpu(self):
        if self.proc is None or self.proc.poll() is not None:
            return None
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def unavailable(self, env):
        return env.missing("mount") or env.missing("dump", "process") or env.missing("restore", "process")

    def mode_unavailable(self, env, mode):
        if mode != "lazy":
            return None
        _, text = env.cedana_help("restore", "process")
        return None if "--lazy" in text else "`cedana restore process` has no --lazy yet"

    def begin_rep(self, env, rep):
        self.store = env.workdir / f"store-{self.key}-{rep}"
        self.mnt = env.workdir / f"mnt-{self.key}-{rep}"
        self.store.mkdir(parents=True)
        self.mnt.mkdir(parents=True)
        self.url = self.store_url(env, rep)
        self.peak = {}
        self.start_mount(env, f"{self.key}-{rep}")

    def start_mount(self, env, tag):
        """`cedana mount -f` with a catalog and cache of its own (tag names them)."""
        # A catalog and cache per mount: an index of the previous repetition's store would be stale.
        self.cmd_env = {**env.cmd_env, "CEDANA_DB_PATH": str(env.workdir / f"mount-{tag}.db"),
                        "CEDANA_CACHE_DIR": str(env.workdir / f"mount-cache-{tag}"),
                        "CEDANA_STORE_URL": self.url, "CEDANA_MOUNT_DIR": str(self.mnt), **self.extra_env(env)}
        log_path = env.workdir / f"mount-{tag}.log"
        with open(log_path, "w") as log:
            # -f: the mount stays our child, so its memory can be watched and it cannot outlive us.
            self.proc = subprocess.Popen([env.cedana, "mount", str(self.mnt), "--store", self.url, "-f"],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self.cmd_env,
                                         start_new_session=True)
        mnt, proc = self.mnt, self.proc
        self.tokens = [env.cleanup.add(f"stop mount process {proc.pid}", lambda: stop_process(proc)),
                       env.cleanup.add(f"unmount {mnt}", lambda: self.unmount(env, mnt))]
        self.wait_mounted(log_path)
        self.watch = MemoryWatch(mount_pids(self.proc, self.mnt)).__enter__()

    def wait_mounted(self, log_path):
        deadline = time.monotonic() + 60
        while not os.path.ismount(self.mnt):
            code = self.proc.poll()
            if code not in (None, 0) or time.monotonic() > deadline:
                raise StepError(f"`cedana mount` did not mount {self.mnt} (exit {code}): "
                                f"{last_line(log_path.read_text())}")
            time.sleep(0.05)

    def stop_mount(self, env):
        """Unmount and stop the mount process, keeping the store; remembers its peak RSS."""
        for label, value in (self.watch.stop() if self.watch else {}).items():
            self.peak[label] = max(self.peak.get(label, 0), value)
        for token in reversed(self.tokens):
            env.cleanup.run(token)
        self.tokens, self.watch = [], None

    def before_restore(self, env, rep, mode):
        """Each restore through a new mount with an empty cache and catalog, as another machine would."""
        if self.cold_restore:
            self.stop_mount(env)
            self.start_mount(env, f"{self.key}-{rep}-{mode}")

    def unmount(self, env, mnt):
        for pid in lazy_pages_daemons(mnt):  # left over by an interrupted lazy restore; they hold the mount
            kill_and_reap(pid)
        if os.path.ismount(mnt) and env.cedana_help("umount")[0]:
            subprocess.run([env.cedana, "umount", str(mnt)], capture_output=True, env=self.cmd_env, timeout=60)
        unmount(mnt)

    def end_rep(self, env):
        self.stop_mount(env)
        if self.mnt and not os.path.ismount(self.mnt):  # never delete through a live mount
            shutil.rmtree(self.store, ignore_errors=True)
            shutil.rmtree(self.mnt, ignore_errors=True)
        return self.peak

    def dump(self, env, pid, rep, checksum, second=False):
        job_dir = self.mnt / "jobs" / self.JOB
        try:
            job_dir.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass  # the mount may make job directories itself when the dump writes into them
        name = f"ck{2 if second else 1}"
        before = self.bytes_before = self.store_bytes(env)
        result = run_cmd([env.cedana, "dump", "process", str(pid), "--dir", str(job_dir), "--name", name,
                          "--compression", "none", "--leave-running"],
                         timeout=env.timeout, env=self.cmd_env, watch_memory=True)
        path = job_dir / name
        if not path.is_dir():
            raise StepError(f"cedana dump process into the mount succeeded but {path} is not there")
        return Artifact(path, checksum, pid, self.store_bytes(env) - before, result.peak_rss,
                        image_bytes=tree_bytes(path))

    def store_url(self, env: Env, rep: int) -> str:
        return str(self.store)

    def store_bytes(self, env: Env) -> int:
        """Everything the store holds (chunks, manifests, index objects)."""
        return tree_bytes(self.store)

    def restore(self, env, art, mode, scratch):
        cmd = [env.cedana, "restore", "process", "--path", str(art.path)] + (["--lazy"] if mode == "lazy" else [])
        result = run_cmd(cmd, timeout=env.timeout, env=self.cmd_env, watch_memory=True)
        wait_running(art.pid)
        return result

    def wait_memory_back(self, env, art, mode):
        """Lazy restore: all memory is back when `criu lazy-pages` has sent every page and exited
        (it may have done so before the restore command returned)."""
        if mode != "lazy":
            return False
        daemons = lazy_pages_daemons(art.path)
        for pid in daemons:
            wait_gone(pid, env.timeout)
        return bool(daemons)


def lazy_pages_daemons(images: Path) -> list[int]:
    """PIDs of `criu lazy-pages` serving images at or below `images` (left running by a lazy restore)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"lazy-pages" in argv and any(a.startswith(str(images).encode()) for a in argv):
                found.append(int(entry))
    return found


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def mount_pids(proc: subprocess.Popen, mnt: Path) -> list[int]:
    """The process serving the mount: our child, or (if it daemonized) whoever names MNT in argv."""
    if proc.poll() is None:
        return [proc.pid]
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(mnt).encode() in argv and any(b"cedana" in a for a in argv):
                found.append(int(entry))
    return found


class EncryptedMountDump(MountDump):
    """MountDump over an encrypted local store: beside `mount`, the cost of client-side encryption."""

    key = "encrypted-mount"
    store_name = "local store, encrypted"

    def extra_env(self, env):
        return {"CEDANA_STORE_ENCRYPT": "on", "CEDANA_STORE_KEY_FILE": str(env.workdir / "bench-store.key")}


def all_methods() -> list[Method]:
    return ([Floor(), CedanaWay("gzip"), CedanaWay("lz4")]
            + [CedanaDump(c) for c in CEDANA_COMPRESSIONS] + [MountDump(), EncryptedMountDump()])
