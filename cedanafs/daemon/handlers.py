"""The daemon's methods: each turns one request into a call of the job use cases (app.jobs).

Blocking work (CRIU, the store, SQLite, /proc) runs on worker threads under one limiter; the
only method that waits for long without a thread is `job.wait` (for `run --attach`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import signal
from typing import Any, Awaitable, Callable

import trio

from ..app import container_jobs as app_containers
from ..app import process as app_process
from ..app.jobs import ALIVE, Caller, JobService, RunRequest, jobs_db_path, new_jid
from ..errors import NotFound, UsageError
from ..runtimes import runc
from . import console
from .protocol import ProtocolError

log = logging.getLogger(__name__)

WAIT_POLL = 0.2
Method = Callable[[Caller, dict, list[int]], Awaitable[Any]]


class Handlers:
    """Method name -> handler; `dispatch` is what the server calls."""

    def __init__(self, jobs: JobService, health: Callable[[], dict], threads: int = 16):
        self.jobs = jobs
        self.health = health
        self.limiter = trio.CapacityLimiter(threads)
        # The sockets of attachable jobs' console keepers, beside the job database.
        self.consoles_dir = os.path.join(os.path.dirname(jobs_db_path(jobs.settings)), "consoles")
        self.methods: dict[str, Method] = {
            "daemon.health": self._health, "job.run": self._run, "job.manage": self._manage,
            "job.list": self._list, "job.checkpoints": self._checkpoints, "job.inspect": self._inspect,
            "job.kill": self._kill, "job.delete": self._delete, "job.dump": self._dump,
            "job.restore": self._restore, "job.wait": self._wait, "job.attach": self._attach,
            "process.dump": self._dump_process, "process.restore": self._restore_process,
            "runc.run": self._run_runc, "runc.manage": self._manage_runc,
            "containerd.manage": self._manage_containerd,
        }

    async def dispatch(self, method: str, caller: Caller, params: dict, fds: list[int]) -> Any:
        handler = self.methods.get(method)
        if handler is None:
            raise ProtocolError(f"the daemon has no method {method!r} (is it older than this command?)")
        return await handler(caller, params, fds)

    async def _thread(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=self.limiter)

    async def _health(self, caller: Caller, params: dict, fds: list[int]) -> Any:
        return await self._thread(self.health)

    async def _run(self, caller: Caller, params: dict, fds: list[int]) -> Any:
        cmd = params.get("cmd")
        if not isinstance(cmd, list) or not all(isinstance(a, str) for a in cmd):
            raise ProtocolError("job.run: cmd must be a list of strings")
        stdin, stdout, stderr = _stdio(params, fds)
        req = RunRequest(cmd=tuple(cmd), jid=params.get("jid"), cwd=str(params.get("cwd") or "/"),
                         env=params.get("env"), log=str(params.get("log") or ""),
                         stdin=stdin, stdout=stdout, stderr=stderr)
        if params.get("attachable"):
            return await self._run_attachable(caller, req)
        return await self._thread(self.jobs.run, caller, req)

    async def _run_attachable(self, caller: Caller, req: RunRequest) -> Any:
        """The job's stdio is a new pty; its master side goes to a keeper process (console.py) that
        writes the output to the log the caller opened and relays it to attachers."""
        jid = req.jid or new_jid()
        master, slave = os.openpty()
        try:
            if not caller.is_root:
                os.fchown(slave, caller.uid, -1)
            tty = os.ttyname(slave)
            run = dataclasses.replace(req, jid=jid, stdin=slave, stdout=slave, stderr=slave, tty=tty)
            result = await self._thread(self.jobs.run, caller, run)
            await self._thread(console.start_keeper, self.consoles_dir, jid, master, req.stdout)
        finally:
            os.close(slave)
            os.close(master)
        return result | {"attachable": True}

    async def _attach(self, caller: Caller, params: dict, fds: list[int]) -> Any:
        """Hand the caller's end of a socket pair (its one fd) to the job's console keeper."""
        if len(fds) != 1:
            raise ProtocolError("job.attach needs one socket descriptor")
        jid = params.get("jid") or await self._jid_of_pid(caller, params.get("pid"))
        state = await self._thread(self.jobs.exit_status, caller, jid)  # checks the caller may
        if state["status"] not in ALIVE:
            raise NotFound(f"job {jid} is not running ({state['status']}); nothing to attach to")
        handed = await self._thread(console.hand_over, self.consoles_dir, jid, fds[0],
                                    int(params.get("rows") or 0), int(params.get("cols") or 0))
        if not handed:
            raise NotFound(f"job {jid} is not attachable (start it with `cedana run process --attachable`)")
        return {"job": jid, "status": state["status"]}

    async def _jid_of_pid(self, caller: Caller, pid: Any) -> str:
        if not isinstance(pid, int) or isinstance(pid, bool):
            raise UsageError("a job id (JID) or a PID is required")
        for job in await self._thread(self.jobs.list, caller):
            if job["pid"] == pid and job["status"] in ALIVE:
                return job["job"]
        raise NotFound(f"PID {pid} is not a job of this daemon (see `cedana job list`)")

    async def _manage(self, caller: Caller, params: dict, fds: list[int]) -> Any:
        return await self._thread(self.jobs.manage, caller, int(params["pid"]), params.get("jid"))

    async def _list(self, caller: Caller, params: dict, fds: list[int]) -> Any:
        return await self._thread(self.jobs.list, caller)

    async def _checkpoints(self, caller: Caller, params: dict, fds: list[int]) -> Any:
        return await self._thread(self.jobs.checkpoints, caller, _jid(params))

    async def _inspect(self, caller: Caller, params: dict, fds: list[int]) -> Any:
        return await self._thread(self.jobs.inspect, caller, _jid(params))

    async def _kill(self, caller: Caller, params: dict, fds: list[int]) -> Any:
        return await self._thread(self.jobs.kill, caller, _jid(params), _signal(params.get("signal", "KILL")))

    async def _delete(self, caller: Caller, params: dict, fds: list[int]) -> Any:
        return await self._thread(self.jobs.delete, caller, _jid(params))

    async def _dump(self, caller: Caller, params: dict, fds: list[int]) -> Any:
        if await self._thread(console.has_console, self.consoles_dir, _jid(params)):
            raise UsageError(f"job {params['jid']} is attachable: its terminal is the daemon's, and dumping"
                             " such a job is not supported yet (run it without --attachable to checkpoint it)")
        return await self._thread(self.jobs.dump, caller, _jid(params), bool(params.get("leave_running")),
                                  streams=_streams(params), flags=_criu(params, app_process.DumpRequest))

    async def _restore(self, caller: Caller, params: dict, fds: list[int]) -> Any:
        return await self._thread(self.jobs.restore, caller, _jid(params), path=params.get("path"),
                                  checkpoint=params.get("checkpoint"), lazy=bool(params.get("lazy")),
                                  streams=_streams(params), flags=_criu(params, app_process.RestoreRequest))

    async def _wait(self, caller: Caller, params: dict, fds: list[int]) -> Any:
        """Answer once the job has no live process: its status and exit code."""
        jid = _jid(params)
        while True:
            state = await self._thread(self.jobs.exit_status, caller, jid)
            if state["status"] not in ALIVE:
                return state
            await trio.sleep(WAIT_POLL)

    async def _dump_process(self, caller: Caller, params: dict, fds: list[int]) -> Any:
        req = _dataclass(app_process.DumpRequest, params)
        return await self._thread(self.jobs.dump_process, caller, req)

    async def _restore_process(self, caller: Caller, params: dict, fds: list[int]) -> Any:
        req = _dataclass(app_process.RestoreRequest, params)
        if req.no_server:
            raise UsageError("--no-server restores are done by the command itself, not the daemon")
        return await self._thread(self.jobs.restore_process, caller, req)


    async def _run_runc(self, caller: Caller, params: dict, fds: list[int]) -> Any:
        job = await self._thread(app_containers.run_runc_job, self.jobs, caller, str(params["bundle"]),
                                 str(params["id"]), str(params.get("root") or runc.DEFAULT_ROOT), params.get("jid"),
                                 str(params["log"]))
        return self.jobs._view(job)

    async def _manage_runc(self, caller: Caller, params: dict, fds: list[int]) -> Any:
        job = await self._thread(app_containers.manage_runc_job, self.jobs, caller, str(params["id"]),
                                 str(params.get("root") or runc.DEFAULT_ROOT), params.get("jid"),
                                 str(params.get("log") or ""))
        return self.jobs._view(job)

    async def _manage_containerd(self, caller: Caller, params: dict, fds: list[int]) -> Any:
        job = await self._thread(app_containers.manage_containerd_job, self.jobs, caller, str(params["id"]),
                                 str(params["address"]), str(params["namespace"]), params.get("jid"),
                                 str(params.get("log") or ""))
        return self.jobs._view(job)


def _streams(params: dict) -> int:
    streams = params.get("streams") or 0
    if not isinstance(streams, int) or isinstance(streams, bool) or not 0 <= streams <= 256:
        raise UsageError(f"streams must be a number from 0 to 256, not {streams!r}")
    return streams


# What a job command may set of a process command's request: its CRIU flags, nothing else.
_JOB_FLAGS = {"tcp_established", "file_locks", "external", "shell_job", "link_remap", "criu_opts",
              "skip_in_flight", "tcp_close", "leave_stopped"}


def _criu(params: dict, cls: type) -> dict:
    """The `criu` parameter of job.dump / job.restore: CRIU flags named as in `cls`'s fields."""
    flags = params.get("criu") or {}
    if not isinstance(flags, dict):
        raise ProtocolError("criu must be an object of CRIU flags")
    allowed = _JOB_FLAGS & {f.name for f in dataclasses.fields(cls)}
    unknown = set(flags) - allowed
    if unknown:
        raise ProtocolError(f"unknown CRIU flags: {', '.join(sorted(unknown))}")
    if "external" in flags:
        flags = flags | {"external": tuple(flags["external"] or ())}
    if not isinstance(flags.get("criu_opts", {}), dict):
        raise ProtocolError("criu_opts must be an object")
    return flags


def _jid(params: dict) -> str:
    jid = params.get("jid")
    if not isinstance(jid, str) or not jid:
        raise UsageError("a job id (JID) is required")
    return jid


def _signal(name: Any) -> int:
    text = str(name).upper()
    try:
        return int(text) if text.isdigit() else int(signal.Signals[text if text.startswith("SIG") else "SIG" + text])
    except (KeyError, ValueError):
        raise UsageError(f"unknown signal {name!r}") from None


def _stdio(params: dict, fds: list[int]) -> tuple[int | None, int | None, int | None]:
    """attach: the caller's stdin, stdout, stderr; else one fd, the log the caller opened."""
    if params.get("attach"):
        if len(fds) != 3:
            raise ProtocolError("job.run --attach needs the caller's three stdio descriptors")
        return fds[0], fds[1], fds[2]
    if len(fds) != 1:
        raise ProtocolError("job.run needs the log file's descriptor")
    return None, fds[0], fds[0]


def _dataclass(cls: type, params: dict) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(params) - names
    if unknown:
        raise ProtocolError(f"unknown request fields: {', '.join(sorted(unknown))}")
    values = dict(params)
    if "external" in values:
        values["external"] = tuple(values["external"] or ())
    return cls(**values)
