"""Use cases of managed jobs: run, manage, list with statuses, dump, restore, kill, delete, inspect.

A job is a process tree watched under a name (its JID). Its record lives in a small SQLite
database beside db.path and holds what identifies the process across daemon restarts: its pid and
that pid's start time (the same pid with another start time was reused: `stale`). A job's
checkpoints live in the mount, at mount.dir/jobs/<jid>/<id>/: CRIU writes into a pending checkpoint
directory there, which is sealed (committed) once CRIU succeeded and discarded when it failed.

Callers are identified by uid (the daemon takes it from the socket's peer credentials); a non-root
caller sees and acts on its own jobs and processes only. Everything here is synchronous and
thread-safe: the daemon calls it on worker threads.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator

import psutil

from .. import criu
from ..criu.processes import stop_orphan_criu
from ..catalog import check_job_name
from ..config import Settings, format_size, host_name
from ..errors import (AlreadyExists, CedanaError, CheckpointError, CriuError, NotFound, PermissionDenied, StoreError,
                      UsageError)
from . import capture
from .jobrecord import Job, new_jid, process_start_time  # noqa: F401 - part of this module's interface
from . import container_jobs as app_containers
from . import mount as app_mount
from . import process as app_process
from . import remote as app_remote
from .procinfo import dumpable_process

log = logging.getLogger(__name__)

JOB_KIND = "job"
LOG_TEMPLATE = "/var/log/cedana-output-{jid}.log"
RESTORE_LOG = "criu-restore.log"
ALIVE = ("running", "sleep", "zombie")
_START_TIME_SLACK = 0.05
_UNKNOWN_EXIT = -1


@dataclass(frozen=True)
class Caller:
    """Who asks: the uid/gid/pid the daemon read from the socket's peer credentials."""

    uid: int
    gid: int
    pid: int = 0

    @property
    def is_root(self) -> bool:
        return self.uid == 0


ROOT = Caller(0, 0)


@dataclass(frozen=True)
class RunRequest:
    """`run process`: the command, where and how; stdio fds are open descriptors the caller handed over."""

    cmd: tuple[str, ...]
    jid: str | None = None
    cwd: str = "/"
    env: dict[str, str] | None = None
    log: str = ""
    stdin: int | None = None
    stdout: int | None = None
    stderr: int | None = None
    tty: str = ""  # a terminal to become the job's controlling terminal and stdio (attachable jobs)


# A session leader that opens a terminal makes it its controlling terminal; then the command runs.
_TTY_EXEC = 'exec "$@" <>"$0" >&0 2>&0'


# --- the job database -------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    jid TEXT PRIMARY KEY, type TEXT NOT NULL, pid INTEGER NOT NULL, start_time REAL NOT NULL,
    uid INTEGER NOT NULL, gid INTEGER NOT NULL, cmd TEXT NOT NULL, cwd TEXT NOT NULL, log TEXT NOT NULL,
    host TEXT NOT NULL, created REAL NOT NULL, exit_code INTEGER, gpu INTEGER NOT NULL,
    pending TEXT NOT NULL, restored_from TEXT NOT NULL);
"""
_COLUMNS = [f.name for f in fields(Job)]


def jobs_db_path(settings: Settings) -> str:
    """The job database lives beside the catalog index (db.path)."""
    return str(Path(settings.db.path).with_name("jobs.db"))


class JobDB:
    """Job records in SQLite (WAL, so a reader never waits for a writer); every write is one transaction."""

    def __init__(self, path: str):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=30.0)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        with self._db:
            self._db.executescript(_SCHEMA)

    def get(self, jid: str) -> Job | None:
        rows = self._select("WHERE jid = ?", [jid])
        return rows[0] if rows else None

    def all(self) -> list[Job]:
        return self._select("ORDER BY created, jid", [])

    def insert(self, job: Job) -> None:
        try:
            self._write("INSERT", job)
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"job {job.jid} already exists (cedana job delete {job.jid} first)") from None

    def put(self, job: Job) -> None:
        self._write("INSERT OR REPLACE", job)

    def delete(self, jid: str) -> None:
        with self._lock, self._db:
            self._db.execute("DELETE FROM jobs WHERE jid = ?", [jid])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, verb: str, job: Job) -> None:
        row = job.to_dict()
        row["cmd"] = json.dumps(row["cmd"])
        row["gpu"] = int(row["gpu"])
        marks = ", ".join("?" for _ in _COLUMNS)
        with self._lock, self._db:
            self._db.execute(f"{verb} INTO jobs ({', '.join(_COLUMNS)}) VALUES ({marks})",
                             [row[c] for c in _COLUMNS])

    def _select(self, where: str, args: list[Any]) -> list[Job]:
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs {where}", args).fetchall()
        jobs = []
        for row in rows:
            values = dict(zip(_COLUMNS, row))
            values["cmd"] = json.loads(values["cmd"])
            values["gpu"] = bool(values["gpu"])
            jobs.append(Job(**values))
        return jobs


# --- statuses ---------------------------------------------------------------------------------

def job_status(job: Job, host: str | None = None) -> str:
    """running, sleep, zombie, halted (pid gone), stale (pid reused) or remote (another host)."""
    if job.host and job.host != (host or socket.gethostname()):
        return "remote"
    if job.pid <= 0:
        return "halted"
    try:
        proc = psutil.Process(job.pid)
        started, status = proc.create_time(), proc.status()
    except psutil.NoSuchProcess:
        return "halted"
    except psutil.Error:
        return "stale"
    if abs(started - job.start_time) > _START_TIME_SLACK:
        return "stale"
    if status == psutil.STATUS_ZOMBIE:
        return "zombie"
    return "running" if status == psutil.STATUS_RUNNING else "sleep"


def human_size(size: int | None) -> str:
    """The SIZE column of the job tables: blank when unknown or empty, else e.g. 7.4 MiB (one format
    everywhere: config.format_size)."""
    return format_size(size) if size else ""


def _exit_code(returncode: int) -> int:
    """subprocess's negative 'killed by signal' as the shell reports it (128 + signal)."""
    return 128 - returncode if returncode < 0 else returncode


# --- the service ------------------------------------------------------------------------------

class JobService:
    """Managed jobs of one daemon: their records, their children, their checkpoints in the mount."""

    def __init__(self, settings: Settings, db: JobDB, catalog: Any, mount_dir: str):
        self.settings = settings
        self.db = db
        self.catalog = catalog
        self.mount_dir = mount_dir
        self.host = host_name(settings)
        self._lock = threading.RLock()
        self._children: dict[int, tuple[str, subprocess.Popen | None]] = {}
        self._busy: set[str] = set()
        self._page_servers: list[Any] = []  # lazy-pages servers still feeding restored jobs

    # --- lookups and permissions ---

    def _job(self, caller: Caller, jid: str) -> Job:
        job = self.db.get(jid)
        if job is None:
            raise NotFound(f"no job {jid!r} (see `cedana job list`)")
        if not caller.is_root and job.uid != caller.uid:
            raise PermissionDenied(f"job {jid} belongs to another user")
        return job

    def _visible(self, caller: Caller) -> list[Job]:
        return [j for j in self.db.all() if caller.is_root or j.uid == caller.uid]

    @contextmanager
    def _exclusive(self, jid: str, action: str) -> Iterator[None]:
        """One dump, restore, kill or delete of a job at a time."""
        with self._lock:
            if jid in self._busy:
                raise AlreadyExists(f"job {jid} is busy with another dump or restore; try again when it is done")
            self._busy.add(jid)
        log.debug("job %s: %s", jid, action)
        try:
            yield
        finally:
            with self._lock:
                self._busy.discard(jid)

    def job_dir(self, jid: str) -> str:
        return os.path.join(self.mount_dir, "jobs", jid)

    # --- run and manage ---

    def run(self, caller: Caller, req: RunRequest) -> dict:
        if not req.cmd:
            raise UsageError("no command given: cedana run process -- CMD ARGS...")
        jid = check_job_name(req.jid) if req.jid else new_jid()
        job = Job(jid=jid, uid=caller.uid, gid=caller.gid, cmd=list(req.cmd), cwd=req.cwd, log=req.log,
                  host=self.host, created=time.time())
        self.db.insert(job)  # reserves the jid
        try:
            popen = self._spawn(caller, req)
        except BaseException:
            self.db.delete(jid)
            raise
        with self._lock:
            job.pid, job.start_time = popen.pid, process_start_time(popen.pid)
            self.db.put(job)
            self._children[popen.pid] = (jid, popen)
        log.info("job %s: started pid %d: %s", jid, popen.pid, " ".join(req.cmd))
        return self._view(job)

    def _spawn(self, caller: Caller, req: RunRequest) -> subprocess.Popen:
        user = {} if caller.is_root else {"user": caller.uid, "group": caller.gid, "extra_groups": []}
        argv = list(req.cmd)
        if req.tty:
            if shutil.which(argv[0], path=(req.env or {}).get("PATH", os.defpath)) is None and "/" not in argv[0]:
                raise NotFound(f"cannot run {argv[0]!r}: No such file or directory")
            argv = ["/bin/sh", "-c", _TTY_EXEC, req.tty, *argv]
        try:
            return subprocess.Popen(
                argv, cwd=req.cwd or "/", env=req.env, start_new_session=True, close_fds=True,
                stdin=req.stdin if req.stdin is not None else subprocess.DEVNULL,
                stdout=req.stdout if req.stdout is not None else subprocess.DEVNULL,
                stderr=req.stderr if req.stderr is not None else subprocess.DEVNULL, **user,
            )
        except FileNotFoundError as exc:
            raise NotFound(f"cannot run {req.cmd[0]!r}: {exc.strerror}"
                           f"{' (' + exc.filename + ')' if exc.filename else ''}") from None
        except PermissionError as exc:
            raise PermissionDenied(f"cannot run {req.cmd[0]!r}: {exc.strerror}") from None
        except OSError as exc:
            raise UsageError(f"cannot run {req.cmd[0]!r}: {exc.strerror or exc}") from None

    def manage(self, caller: Caller, pid: int, jid: str | None) -> dict:
        proc = dumpable_process(pid)
        uid = proc.uids().real
        if not caller.is_root and uid != caller.uid:
            raise PermissionDenied(f"PID {pid} belongs to another user")
        jid = check_job_name(jid) if jid else new_jid()
        for other in self.db.all():
            if other.pid == pid and job_status(other, self.host) in ALIVE:
                raise AlreadyExists(f"PID {pid} is already managed as job {other.jid}")
        with proc.oneshot():
            job = Job(jid=jid, pid=pid, start_time=proc.create_time(), uid=uid, gid=proc.gids().real,
                      cmd=proc.cmdline(), cwd=_safe(proc.cwd), log=_stdout_file(pid), host=self.host,
                      created=time.time())
        self.db.insert(job)
        log.info("job %s: managing pid %d", jid, pid)
        return self._view(job)

    # --- listing ---

    def list(self, caller: Caller) -> list[dict]:
        latest = self._latest_checkpoints()
        rows = [self._view(job, latest) for job in self._visible(caller)]
        if caller.is_root:
            rows += self._store_only_jobs(latest, {r["job"] for r in rows})
        return rows

    def _latest_checkpoints(self) -> dict[str, Any]:
        latest: dict[str, Any] = {}
        for info in self.catalog.checkpoints():  # newest first
            latest.setdefault(info.job, info)
        return latest

    def _view(self, job: Job, latest: dict[str, Any] | None = None) -> dict:
        info = (latest if latest is not None else self._latest_checkpoints()).get(job.jid)
        return {
            "job": job.jid, "type": job.type, "pid": job.pid or None, "status": job_status(job, self.host),
            "gpu": job.gpu, "checkpoint": info.id if info else "", "size": info.size if info else 0,
            "log": job.log, "uid": job.uid, "exit_code": job.exit_code, "host": job.host,
            # A dump under way: its checkpoint is not committed yet (CRIU running, or the store ingesting it).
            "uploading": os.path.basename(job.pending) if job.pending else "",
        }

    def _store_only_jobs(self, latest: dict[str, Any], known: set[str]) -> list[dict]:
        """Jobs with checkpoints in the store but no record here: made on another host or before."""
        rows = []
        for jid, info in sorted(latest.items()):
            if jid in known:
                continue
            status = "remote" if info.host and info.host != self.host else "halted"
            rows.append({"job": jid, "type": info.kind, "pid": None, "status": status, "gpu": False,
                         "checkpoint": info.id, "size": info.size, "log": "", "uid": None,
                         "exit_code": None, "host": info.host})
        return rows

    def checkpoints(self, caller: Caller, jid: str) -> list[dict]:
        if self.db.get(jid) is not None or not caller.is_root:
            self._job(caller, jid)
        found = self.catalog.checkpoints(check_job_name(jid))
        if not found and self.db.get(jid) is None:
            raise NotFound(f"no job {jid!r} (see `cedana job list`)")
        return [{"id": c.id, "time": c.created.isoformat(), "size": c.size, "host": c.host,
                 "path": os.path.join(self.job_dir(jid), c.id)} for c in found]

    def inspect(self, caller: Caller, jid: str) -> dict:
        job = self._job(caller, jid)
        data = job.to_dict()
        data.update(status=job_status(job, self.host), checkpoints=self.checkpoints(caller, jid))
        return data

    # --- kill and delete ---

    def kill(self, caller: Caller, jid: str, signum: int = signal.SIGKILL) -> dict:
        """Signal the job's whole session (or process group, or tree): a pipeline dies whole."""
        job = self._job(caller, jid)
        status = job_status(job, self.host)
        if status not in ("running", "sleep"):
            raise UsageError(f"job {jid} is not running ({status}); nothing to kill")
        targets = job_processes(job.pid)
        if not targets:
            raise NotFound(f"job {jid}: PID {job.pid} is gone")
        capture.signal_tree(targets, signum)
        log.info("job %s: sent signal %d to %d process(es) of pid %d", jid, signum, len(targets), job.pid)
        return {"job": jid, "pid": job.pid, "signal": signal.Signals(signum).name, "pids": targets}

    def delete(self, caller: Caller, jid: str) -> dict:
        job = self._job(caller, jid)
        with self._exclusive(jid, "delete"):
            status = job_status(job, self.host)
            if status in ("running", "sleep"):
                raise UsageError(f"job {jid} is still running (PID {job.pid}): cedana job kill {jid} first")
            removed = [c["id"] for c in self.checkpoints(caller, jid)]
            for cid in removed:
                self._delete_checkpoint(jid, cid)
            self.db.delete(jid)
            log_removed = _remove_job_log(job)
        log.info("job %s: deleted with %d checkpoint(s)", jid, len(removed))
        return {"job": jid, "checkpoints_deleted": removed, "log_deleted": log_removed}

    def _delete_checkpoint(self, jid: str, cid: str) -> None:
        path = os.path.join(self.job_dir(jid), cid)
        if os.path.isdir(path):
            app_mount.discard_checkpoint(path)  # `rm -r` in the mount: the mount drops it at once
        if self.catalog.exists(jid, cid):
            self.catalog.delete(jid, cid)

    # --- children ---

    def reap(self) -> list[str]:
        """Collect exited children (ours: run, or restored as CRIU's sibling); record their exit codes."""
        exited = []
        with self._lock:
            for pid, (jid, popen) in list(self._children.items()):
                code = _poll(pid, popen)
                if code is None:
                    continue
                del self._children[pid]
                self._record_exit(jid, pid, code)
                exited.append(jid)
            for pages in self._page_servers:
                code = pages.proc.poll()
                if code:  # its watchdog killed the restored tree: it must not run without its memory
                    log.error("lazy restore from %s failed: criu lazy-pages exited with %d, the restored"
                              " process was killed (log: %s)", pages.images_dir, code, pages.log_path)
            self._page_servers = [p for p in self._page_servers if p.proc.poll() is None]
        return exited

    def _record_exit(self, jid: str, pid: int, code: int) -> None:
        job = self.db.get(jid)
        if job is None or job.pid != pid:
            return
        # A dump without --leave-running ends the process: that is no exit of the job.
        job.exit_code = None if jid in self._busy or code == _UNKNOWN_EXIT else code
        self.db.put(job)
        log.info("job %s: pid %d exited (%s)", jid, pid, job.exit_code)

    def exit_status(self, caller: Caller, jid: str) -> dict:
        """For `--attach`: the job's status and exit code once it is no longer alive."""
        job = self._job(caller, jid)
        return {"job": jid, "status": job_status(job, self.host), "exit_code": job.exit_code}

    def recover(self) -> None:
        """After a (re)start: undo dumps that never finished (the daemon died during them).

        Their CRIU is stopped, their pending checkpoint discarded (never sealed, never listed) and
        their process, which CRIU left stopped, resumed.
        """
        for job in self.db.all():
            if not job.pending:
                continue
            log.warning("job %s: discarding unfinished checkpoint %s", job.jid, job.pending)
            stop_orphan_criu(job.pending)
            try:
                if app_mount.checkpoint_state(job.pending) == "pending":
                    app_mount.discard_checkpoint(job.pending)
            except (CedanaError, OSError) as exc:
                log.warning("job %s: cannot discard %s: %s", job.jid, job.pending, exc)
            if job_status(job, self.host) in ALIVE:
                capture.signal_tree([job.pid, *_children(job.pid)], signal.SIGCONT)
            job.pending = ""
            self.db.put(job)

    # --- dump ---

    def dump(self, caller: Caller, jid: str, leave_running: bool = False, streams: int = 0,
             flags: dict[str, Any] | None = None) -> dict:
        """Checkpoint a job into the mount; `flags` are the CRIU flags `dump process` takes."""
        job = self._job(caller, jid)
        req = app_process.DumpRequest(pid=job.pid, leave_running=leave_running, **(flags or {}))
        with self._exclusive(jid, "dump"):
            status = job_status(job, self.host)
            if status not in ("running", "sleep"):
                raise NotFound(f"job {jid} has no process to dump ({status}"
                               f"{'' if job.exit_code is None else f', exit code {job.exit_code}'})")
            started = time.monotonic()
            try:
                if job.type in (app_containers.RUNC, app_containers.CONTAINERD):
                    done, path = None, app_containers.dump_container_job(self, job, leave_running, streams)
                else:
                    done = self._dump_into_mount(job, leave_running, streams, req)
                    path = done.path
            except CedanaError as exc:
                log.error("job %s: dump failed: %s", jid, exc)
                raise
        cid = os.path.basename(path)
        info = self.catalog.latest(jid)
        size = info.size if info is not None and info.id == cid else 0
        log.info("job %s: checkpoint %s (%d bytes)", jid, cid, size)
        timing = ({"captured_after": round(done.captured_after, 3), "committed_after": round(done.committed_after, 3),
                   "via": done.via} if done is not None else {})
        return {"job": jid, "checkpoint": cid, "path": path, "size": size,
                "duration": time.monotonic() - started, "leave_running": leave_running, **timing}

    def _dump_into_mount(self, job: Job, leave_running: bool, streams: int = 0,
                         req: app_process.DumpRequest | None = None) -> capture.Captured:
        """CRIU into the spool, the store takes it from there (app/capture.py).

        Without --leave-running, CRIU leaves the tree stopped rather than killing it, and it is
        killed only once the checkpoint is committed: if anything fails before (or the daemon
        dies), the process is resumed instead of being lost with no checkpoint. The tree killed is
        the one in the images (pstree.img), so a child forked just before the freeze goes too.
        """
        req = req or app_process.DumpRequest(pid=job.pid, leave_running=leave_running)
        proc = dumpable_process(job.pid)
        binary = criu.find_criu(self.settings.criu.binary_path)
        record = {"job": {"jid": job.jid, "cmd": job.cmd, "log": job.log, "uid": job.uid}}
        try:
            done = capture.dump_into_mount(
                self.settings, self.job_dir(job.jid), None, streams or self.settings.checkpoint.streams,
                pid=job.pid, leave_running=leave_running,
                run_dump=lambda images, stopped: app_process.criu_dump(binary, self.settings, req, proc, images,
                                                                       record=record, leave_stopped=stopped),
                kind=JOB_KIND, meta=app_process.owner_meta(proc), began=lambda path: self._set_pending(job, path))
        finally:
            self._set_pending(job, "")
        if not leave_running:
            self._collect(job.pid)
        return done

    def _collect(self, pid: int) -> None:
        """Reap a child ended by a dump here, so its end is never recorded as the job's exit."""
        with self._lock:
            entry = self._children.pop(pid, None)
        if entry is None:
            return
        try:
            if entry[1] is not None:
                entry[1].wait(timeout=30)
            else:
                os.waitpid(pid, 0)
        except (ChildProcessError, subprocess.TimeoutExpired) as exc:
            log.warning("cannot reap dumped pid %d: %s", pid, exc)

    def _set_pending(self, job: Job, path: str) -> None:
        with self._lock:
            fresh = self.db.get(job.jid) or job
            fresh.pending = path
            self.db.put(fresh)

    # --- restore ---

    def restore(self, caller: Caller, jid: str, path: str | None = None, checkpoint: str | None = None,
                lazy: bool = False, streams: int = 0, flags: dict[str, Any] | None = None) -> dict:
        """Restore a job as our child; `flags` are the CRIU flags `restore process` takes, over the recorded ones."""
        job = self.db.get(jid)
        if job is not None:
            job = self._job(caller, jid)
        with self._exclusive(jid, "restore"):
            self.reap()
            if job is not None and job_status(job, self.host) in ("running", "sleep"):
                raise AlreadyExists(f"job {jid} is still running (PID {job.pid}):"
                                    " dump it or kill it before restoring")
            source = path or self._checkpoint_path(jid, checkpoint)
            threads = app_process.streams_of(self.settings, streams)
            req = app_process.RestoreRequest(path=source, lazy=lazy, **(flags or {}))
            try:
                if app_containers.is_container_job(job, source):
                    pid, state = app_containers.restore_container_job(self, caller, job, source, lazy, threads)
                elif lazy:
                    pid, state = self._restore_lazy(caller, job, req, threads)
                else:
                    pid, state = self._restore_from(caller, job, req, threads)
            except CedanaError as exc:
                log.error("job %s: restore from %s failed: %s", jid, source, exc)
                raise
            job = self._restored_job(caller, jid, job, state, pid, source)
        log.info("job %s: restored pid %d from %s", jid, pid, source)
        return self._view(job) | {"path": source}

    def _checkpoint_path(self, jid: str, checkpoint: str | None) -> str:
        check_job_name(jid)
        if checkpoint:
            manifest = self.catalog.find(f"{jid}/{checkpoint}")
            return _visible(os.path.join(self.job_dir(jid), manifest.id))
        info = self.catalog.latest(jid)
        if info is None:
            if self.db.get(jid) is None:
                raise NotFound(f"no job {jid!r} (see `cedana job list`)")
            raise NotFound(f"job {jid} has no checkpoints to restore (cedana dump job {jid} first)")
        return _visible(os.path.join(self.job_dir(jid), info.id))

    def _restore_lazy(self, caller: Caller, job: Job | None, req: app_process.RestoreRequest,
                      threads: int) -> tuple[int, dict]:
        """Lazy pages from the mount: the job runs once its small images are read, memory follows on fault.

        `criu restore --restore-sibling` makes the process our child, as an eager restore does;
        the lazy-pages server is our child too until it has sent every page.
        """
        source = req.path
        if app_mount.mount_of(source) is None or not os.path.isdir(source):
            raise UsageError("--lazy restores from a checkpoint directory in the mount, not from --path elsewhere")
        state = _read_state(source)
        _check_owner(caller, state, source)
        app_process.check_pids_free(source)
        work = tempfile.mkdtemp(prefix="cedana-lazy-job-")
        inherit = _log_inheritance(state, job.log if job else state.get("job", {}).get("log", ""))
        options = app_process.restore_options(req, os.path.abspath(source), work, state, inherit=inherit,
                                              sibling=True, default_shell_job=False)
        try:
            restored = app_mount.lazy_restore(source, work, options=options, criu=self.settings.criu.binary_path,
                                              threads=threads)
        except BaseException:
            reap_failed_restore(source)
            raise
        finally:
            for m in inherit:
                os.close(m.fd)
        with self._lock:
            self._page_servers.append(restored.pages)
        return restored.pid, state

    def _restore_from(self, caller: Caller, job: Job | None, req: app_process.RestoreRequest,
                      threads: int) -> tuple[int, dict]:
        source = req.path
        binary = criu.find_criu(self.settings.criu.binary_path)
        with _images(self.settings, source) as images:
            state = _read_state(images.path)
            _check_owner(caller, state, source)
            app_process.check_pids_free(images.path)
            if images.path == source and app_mount.mount_of(source) is not None:
                try:  # the small images in parallel first; pages-*.img follow with the mount's readahead
                    app_mount.prefetch_images(source, threads=threads)
                except OSError as exc:
                    raise CheckpointError(f"cannot read the images of {source} from the store:"
                                          f" {app_mount.read_error(source) or exc.strerror or exc};"
                                          " nothing was restored") from None
            work = tempfile.mkdtemp(prefix="cedana-restore-job-")
            inherit = _log_inheritance(state, job.log if job else state.get("job", {}).get("log", ""))
            try:
                pid = criu.restore(binary, app_process.restore_options(
                    req, images.path, work, state, inherit=inherit, sibling=True, default_shell_job=False))
            except CriuError as exc:
                reap_failed_restore(images.path)
                why = app_mount.read_error(source) if app_mount.mount_of(source) else ""
                if why:  # the mount could not read an image: say which chunk, not only CRIU's EIO
                    raise CriuError(f"{exc} (the store: {why})") from None
                raise
            finally:
                for m in inherit:
                    os.close(m.fd)
        shutil.rmtree(work, ignore_errors=True)
        return pid, state

    def _restored_job(self, caller: Caller, jid: str, job: Job | None, state: dict, pid: int,
                      source: str) -> Job:
        with self._lock:
            if job is None:
                info = state.get("job", {})
                uids = state.get("uids") or [caller.uid]
                job = Job(jid=jid, uid=info.get("uid", uids[0]), gid=(state.get("gids") or [caller.gid])[0],
                          cmd=state.get("cmdline", []), cwd=state.get("cwd", ""), log=info.get("log", ""),
                          type=info.get("type", "process"), created=time.time())
            job.pid, job.start_time, job.exit_code = pid, process_start_time(pid), None
            job.host, job.restored_from = self.host, source
            self.db.put(job)
            self._children[pid] = (jid, None)
        return job

    # --- process commands through the daemon ---

    def dump_process(self, caller: Caller, req: app_process.DumpRequest) -> dict:
        if not caller.is_root:
            _check_process_owner(caller, req.pid)
            _check_dir_owner(caller, req.dir or self.settings.checkpoint.dir)
        with _daemon_credentials(req.dir or self.settings.checkpoint.dir):
            return app_process.dump_process(self.settings, req).to_dict()

    def restore_process(self, caller: Caller, req: app_process.RestoreRequest) -> dict:
        with _daemon_credentials(req.path):
            if not caller.is_root:
                with _images(self.settings, req.path) as images:
                    _check_owner(caller, _read_state(images.path), req.path)
            result = app_process.restore_process(self.settings, req)
        return {"pid": result.pid}


# --- helpers --------------------------------------------------------------------------------

def _poll(pid: int, popen: subprocess.Popen | None) -> int | None:
    """The exit code of a child that has exited (reaping it), else None."""
    if popen is not None:
        code = popen.poll()
        return None if code is None else _exit_code(code)
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return _UNKNOWN_EXIT  # not our child (any more): gone without a code we can know
    if not done:
        return None
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def _safe(getter: Any) -> str:
    try:
        return getter()
    except psutil.Error:
        return ""


def _stdout_file(pid: int) -> str:
    try:
        target = os.readlink(f"/proc/{pid}/fd/1")
    except OSError:
        return ""
    return target if target.startswith("/") and os.path.isfile(target) else ""


def _images(settings: Settings, source: str) -> Any:
    """A CRIU images dir for `source`: a dir as it is; an archive (local or remote) unpacked to a temp dir.

    The one place that leans on app.process's unpacking context manager, so a change there is a
    change here only.
    """
    return app_process.ImagesDir(source, settings)


def _read_state(images_dir: str) -> dict:
    try:
        with open(os.path.join(images_dir, app_process.STATE_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _log_inheritance(state: dict, log_path: str) -> tuple[criu.StdioMapping, ...]:
    """Hand the job's log to the restored process where its stdout/stderr were that log.

    CRIU then uses our open file instead of reopening the path (a rotated, moved or recreated
    log still works); its key is the file's path without the leading slash.
    """
    if not log_path or log_path not in state.get("stdio", {}).values():
        return ()
    try:
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError as exc:
        log.warning("cannot reopen job log %s: %s", log_path, exc)
        return ()
    return (criu.StdioMapping(key=log_path.lstrip("/"), fd=fd),)


_CREDENTIAL_WORDS = ("credentials", "access denied", "accessdenied", "forbidden", "not authorized")


@contextmanager
def _daemon_credentials(target: str | None) -> Iterator[None]:
    """A bucket through the daemon is reached with the daemon's credentials: say so when it has none."""
    try:
        yield
    except StoreError as exc:
        text = str(exc)
        if not app_remote.is_remote(target) or not any(w in text.lower() for w in _CREDENTIAL_WORDS):
            raise
        raise PermissionDenied(
            f"the cedana daemon (pid {os.getpid()}) has no credentials for {target}: {text} -- the daemon,"
            " not this command, talks to the bucket: give its service the AWS_*/GOOGLE_APPLICATION_CREDENTIALS"
            " environment or the aws.*/gcs.* config, or run this command with --no-server") from None


def _check_owner(caller: Caller, state: dict, source: str) -> None:
    if caller.is_root:
        return
    uids = set(state.get("uids") or [])
    if not uids or uids != {caller.uid}:
        raise PermissionDenied(f"the checkpoint {source} holds a process of another user")


def _check_process_owner(caller: Caller, pid: int) -> None:
    try:
        uids = psutil.Process(pid).uids()
    except psutil.NoSuchProcess:
        raise NotFound(f"no such process: PID {pid}") from None
    if set(uids) != {caller.uid}:
        raise PermissionDenied(f"PID {pid} belongs to another user")


def _check_dir_owner(caller: Caller, directory: str) -> None:
    if "://" in directory:
        raise PermissionDenied("only root may dump to remote storage through the daemon")
    try:
        owner = os.stat(directory).st_uid
    except OSError:
        raise NotFound(f"checkpoint directory {directory} does not exist") from None
    if owner != caller.uid:
        raise PermissionDenied(f"checkpoint directory {directory} is not yours")


def _children(pid: int) -> list[int]:
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def dumped_tree(images_dir: str) -> list[int]:
    """The pids of the tree CRIU dumped (pstree.img), root first; empty if the images cannot say."""
    try:
        return [entry.pid for entry in criu.read_pstree(images_dir)]
    except CedanaError as exc:
        log.warning("cannot read the dumped tree from %s: %s", images_dir, exc)
        return []


def job_processes(pid: int) -> list[int]:
    """Every process of a job: its session if it leads one, else its process group, else its tree."""
    try:
        sid, pgid = os.getsid(pid), os.getpgid(pid)
    except ProcessLookupError:
        return []
    if pid not in (sid, pgid):
        return [pid, *_children(pid)]
    found = [pid]
    for proc in psutil.process_iter():
        try:
            if proc.pid != pid and (os.getsid(proc.pid) == sid if pid == sid else os.getpgid(proc.pid) == pgid):
                found.append(proc.pid)
        except (ProcessLookupError, PermissionError):
            continue
    return found + [c for c in _children(pid) if c not in found]


def reap_failed_restore(images_dir: str, wait: float = 5.0) -> None:
    """Reap what a failed restore left as our child (its root, killed by CRIU): its pid is free again."""
    try:
        root = criu.read_pstree(images_dir)[0].pid
    except CedanaError:
        return
    deadline, killed = time.monotonic() + wait, False
    while True:
        try:
            done, _ = os.waitpid(root, os.WNOHANG)
        except ChildProcessError:
            return  # not our child: nothing to reap
        if done:
            log.info("reaped pid %d of a failed restore", root)
            return
        if time.monotonic() > deadline:
            if killed:
                log.warning("pid %d of a failed restore does not end", root)
                return
            capture.signal_tree([root], signal.SIGKILL)
            deadline, killed = time.monotonic() + wait, True
        time.sleep(0.05)


def log_path(settings: Settings, jid: str) -> str:
    """Where a job's output goes unless `run process -o` says otherwise: job.log_dir/cedana-output-<JID>.log."""
    return os.path.join(settings.job.log_dir, os.path.basename(LOG_TEMPLATE.format(jid=jid)))


def _remove_job_log(job: Job) -> str:
    """Remove the output file cedana named for the job (never a file the user chose with -o)."""
    if not job.log or os.path.basename(job.log) != os.path.basename(LOG_TEMPLATE.format(jid=job.jid)):
        return ""
    try:
        os.unlink(job.log)
    except FileNotFoundError:
        return ""
    except OSError as exc:
        log.warning("job %s: cannot remove its log %s: %s", job.jid, job.log, exc)
        return ""
    return job.log


def _discard_quietly(path: str) -> None:
    try:
        app_mount.discard_checkpoint(path)
    except OSError as exc:
        log.warning("cannot discard unfinished checkpoint %s: %s", path, exc)


def _visible(path: str) -> str:
    """`path`, a checkpoint the daemon's catalog knows, once the mount shows it too: a checkpoint
    another machine committed reaches the mount's own catalog up to its refresh interval later
    (each lookup meanwhile lets it refresh). A path that never shows is left to the restore to
    report."""
    deadline = time.monotonic() + 2 * app_mount.REFRESH_INTERVAL + 1
    while not os.path.isdir(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    return path
