"""Running CRIU's zdtm/static programs: start one, check it after a restore, and dump/restore it
five ways (plain CRIU, an archive, the mount eagerly and lazily, a daemon job).

Each program starts with --pidfile/--outfile, daemonizes (its launcher exits once it is ready),
builds its kernel state, and after a restore is sent SIGTERM, checks that state and writes PASS
or FAIL into its outfile. The process running these must be a child subreaper (so daemonized
programs and restored trees become its children and are reaped at once: PID 1 reaps late) and
root (CRIU cannot dump another uid's process without CAP_SYS_RESOURCE).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ZDTM_DIR = Path(os.environ.get("CEDANA_ZDTM_DIR", "/var/cache/cedanafs/zdtm")) / "static"
PROGRAMS_FILE = Path(__file__).with_name("programs.txt")
CRIU = "/usr/local/sbin/criu"
PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True)
class Program:
    name: str
    kind: str  # nofile, file (--filename) or dir (--dirname)
    flags: tuple[str, ...] = ()

    @property
    def binary(self) -> Path:
        return ZDTM_DIR / self.name


def load_programs(path: Path = PROGRAMS_FILE) -> list[Program]:
    programs = []
    for line in path.read_text().splitlines():
        words = line.split("#", 1)[0].split()
        if words:
            programs.append(Program(words[0], words[1], tuple(words[2:])))
    return programs


def set_subreaper(on: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def reap_all() -> None:
    """Collect every exited child (daemonized programs and restored trees are ours)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


class Running:
    """One started program: where its files are, its pid, and the checks after a restore."""

    def __init__(self, program: Program, work: Path):
        self.program = program
        self.work = work
        self.pidfile = work / f"{program.name}.pid"
        self.outfile = work / f"{program.name}.out"
        self.pid = 0

    def start(self, timeout: float = 30) -> "Running":
        self.work.mkdir(parents=True, exist_ok=True)
        args = [str(self.program.binary), f"--pidfile={self.pidfile}", f"--outfile={self.outfile}"]
        if self.program.kind in ("file", "dir"):
            args.append(f"--{self.program.kind}name={self.program.name}.test")  # relative: unix socket paths are short
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TMPDIR": str(self.work)}
        launcher = subprocess.run(args, cwd=self.work, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=timeout)
        if launcher.returncode != 0:
            raise RuntimeError(f"{self.program.name} did not start ({launcher.returncode}): {self.output()}")
        self.pid = int(self.pidfile.read_text().split()[0])
        return self

    def gone(self, timeout: float = 30) -> None:
        """Wait until the program's process is gone (reaping it if it is our child)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(self.pid, os.WNOHANG)
                if done:
                    return
            except ChildProcessError:
                if not Path(f"/proc/{self.pid}").exists() or _state(self.pid) == "Z":
                    return
            time.sleep(0.02)
        raise TimeoutError(f"{self.program.name} (pid {self.pid}) did not end")

    def tree(self) -> list[int]:
        import psutil

        return [self.pid, *(c.pid for c in psutil.Process(self.pid).children(recursive=True))]

    def tree_gone(self, pids: list[int], timeout: float = 30) -> None:
        """After a dump that did not leave it running: wait until every dumped pid is free again.

        The dumped tree's children are ours too (subreaper) and are reaped here.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reap_all()
            if all(not Path(f"/proc/{pid}").exists() for pid in pids):
                return
            time.sleep(0.02)
        raise TimeoutError(f"{self.program.name}: the dumped pids {pids} are still in use")

    def finish(self, timeout: float = 30) -> str:
        """SIGTERM after the restore; the program checks its state: its outfile's verdict."""
        os.kill(self.pid, signal.SIGTERM)
        self.gone(timeout)
        return self.output()

    def output(self) -> str:
        for name in (self.outfile, Path(str(self.outfile) + ".inprogress")):
            if name.exists():
                return name.read_text(errors="replace")
        return ""

    def passed(self, output: str) -> bool:
        return "PASS" in output.split()

    def kill(self) -> None:
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def criu_baseline(run: Running, images: Path) -> None:
    """Plain CRIU: dump to a directory, restore detached: what cedanafs is measured against."""
    images.mkdir(parents=True, exist_ok=True)
    flags = list(run.program.flags)
    _criu(["dump", "-t", str(run.pid), "-D", str(images), "-o", "dump.log", "-v4", *flags], images, "dump.log")
    from cedanafs.criu import image_pids

    run.tree_gone(image_pids(str(images)))
    _criu(["restore", "-D", str(images), "-o", "restore.log", "-v4", "-d", *flags], images, "restore.log")


def _criu(args: list[str], images: Path, log: str) -> None:
    result = subprocess.run([CRIU, *args], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        errors = [ln for ln in (images / log).read_text(errors="replace").splitlines() if "Error" in ln]
        raise RuntimeError(f"criu {args[0]} failed: {'; '.join(errors[:3]) or result.stderr.strip()}")


# --- through cedanafs ---------------------------------------------------------------------------

_FLAGS = {"--file-locks": "file_locks", "--tcp-established": "tcp_established", "--link-remap": "link_remap"}


def request_flags(program: Program) -> dict:
    """The program's CRIU flags as a dump request's fields (restores use what the dump recorded)."""
    return {_FLAGS[f]: True for f in program.flags}


def via_archive(run: Running, settings, work: Path) -> None:
    from cedanafs.app.process import DumpRequest, RestoreRequest, dump_process, restore_process

    pids = run.tree()
    result = dump_process(settings, DumpRequest(pid=run.pid, dir=str(work), name="ck", compression="zstd",
                                                **request_flags(run.program)))
    run.tree_gone(pids)
    restore_process(settings, RestoreRequest(path=result.path))


def via_mount(run: Running, settings, job_dir: Path, lazy: bool) -> None:
    from cedanafs.app.process import DumpRequest, RestoreRequest, dump_process, restore_process

    pids = run.tree()
    result = dump_process(settings, DumpRequest(pid=run.pid, dir=str(job_dir), **request_flags(run.program)))
    run.tree_gone(pids)
    restore_process(settings, RestoreRequest(path=result.path, lazy=lazy))


def via_job(run: Running, address: str, jid: str) -> None:
    from cedanafs.daemon import client

    pids = run.tree()
    client.call(address, "job.manage", {"pid": run.pid, "jid": jid})
    client.call(address, "job.dump", {"jid": jid, "criu": request_flags(run.program)}, timeout=300)
    run.tree_gone(pids)
    client.call(address, "job.restore", {"jid": jid}, timeout=300)
