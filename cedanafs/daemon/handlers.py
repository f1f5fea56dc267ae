"""The daemon's methods: each turns one request into a call of the job use cases (app.jobs).

Blocking work (CRIU, the store, SQLite, /proc) runs on worker threads under one limiter; the
only method that waits for long without a thread is `job.wait` (for `run --attach`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import signal
from typing import Any, Awaitable, Callable

import trio

from ..app import process as app_process
from ..app.jobs import ALIVE, Caller, JobService, RunRequest
from ..errors import UsageError
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
        self.methods: dict[str, Method] = {
            "daemon.health": self._health, "job.run": self._run, "job.manage": self._manage,
            "job.list": self._list, "job.checkpoints": self._checkpoints, "job.inspect": self._inspect,
            "job.kill": self._kill, "job.delete": self._delete, "job.dump": self._dump,
            "job.restore": self._restore, "job.wait": self._wait,
            "process.dump": self._dump_process, "process.restore": self._restore_process,
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
        return await self._thread(self.jobs.run, caller, req)

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
