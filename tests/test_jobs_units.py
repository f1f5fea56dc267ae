"""Units of managed jobs and the daemon protocol: statuses, the job database, ids, errors on the wire."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from cedanafs.app.jobs import Job, JobDB, job_status, new_jid, process_start_time
from cedanafs.catalog import is_valid_job_name
from cedanafs.daemon import handlers, protocol
from cedanafs.errors import AlreadyExists, CedanaError, PermissionDenied

pytestmark = pytest.mark.unit


def me() -> Job:
    return Job(jid="me", pid=os.getpid(), start_time=process_start_time(os.getpid()), host=socket.gethostname())


def test_status_of_a_live_process_is_running_or_sleep():
    assert job_status(me()) in ("running", "sleep")


def test_status_of_a_gone_pid_is_halted():
    proc = subprocess.Popen(["true"])
    proc.wait()
    job = Job(jid="gone", pid=proc.pid, start_time=1.0, host=socket.gethostname())
    assert job_status(job) == "halted"
    assert job_status(Job(jid="never", pid=0)) == "halted"


def test_status_of_a_reused_pid_is_stale():
    job = me()
    job.start_time -= 100  # the pid is alive but started at another time: someone else has it now
    assert job_status(job) == "stale"


def test_status_of_another_hosts_job_is_remote():
    job = me()
    job.host = "elsewhere.example"
    assert job_status(job) == "remote"


def test_status_of_a_zombie():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 10
        while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.01)
        job = Job(jid="z", pid=proc.pid, start_time=process_start_time(proc.pid), host=socket.gethostname())
        assert job_status(job) == "zombie"
    finally:
        proc.wait()


def test_job_db_persists_and_refuses_duplicates(tmp_path):
    path = str(tmp_path / "jobs.db")
    db = JobDB(path)
    job = Job(jid="j1", pid=42, start_time=1.5, uid=1000, cmd=["a", "b c"], exit_code=None, gpu=True)
    db.insert(job)
    with pytest.raises(AlreadyExists, match="j1"):
        db.insert(Job(jid="j1"))
    job.exit_code = 3
    db.put(job)
    db.close()
    again = JobDB(path)
    assert again.get("j1") == job and again.get("nope") is None
    again.delete("j1")
    assert again.all() == []
    again.close()


def test_new_jids_are_valid_and_distinct():
    jids = {new_jid() for _ in range(50)}
    assert len(jids) > 40 and all(is_valid_job_name(j) and j.count("-") == 2 for j in jids)


def test_errors_cross_the_wire_with_their_class_and_exit_code():
    reply = protocol.decode(protocol.error(PermissionDenied("job x belongs to another user")))
    with pytest.raises(PermissionDenied, match="another user") as info:
        protocol.raise_error(reply["error"])
    assert info.value.exit_code == 77
    odd = CedanaError("mount down")
    odd.exit_code = 9
    with pytest.raises(CedanaError) as info:
        protocol.raise_error(protocol.decode(protocol.error(odd))["error"])
    assert info.value.exit_code == 9 and str(info.value) == "mount down"


def test_malformed_messages_are_protocol_errors():
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(b"{not json")
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(b"[1, 2]")
    assert protocol.decode(protocol.request("job.list")) == {"method": "job.list", "params": {},
                                                             "version": protocol.VERSION}


def test_signal_names_and_numbers():
    assert handlers._signal("KILL") == signal.SIGKILL
    assert handlers._signal("sigterm") == signal.SIGTERM
    assert handlers._signal("2") == 2
    with pytest.raises(CedanaError, match="unknown signal"):
        handlers._signal("NOPE")


def test_request_fields_are_checked():
    from cedanafs.app.process import DumpRequest

    req = handlers._dataclass(DumpRequest, {"pid": 5, "external": ["a"], "dir": "/tmp"})
    assert req.pid == 5 and req.external == ("a",)
    with pytest.raises(protocol.ProtocolError, match="evil"):
        handlers._dataclass(DumpRequest, {"pid": 5, "evil": 1})


def test_client_without_a_daemon(tmp_path):
    from cedanafs.daemon import client
    from cedanafs.errors import DaemonUnavailable

    assert not client.is_listening(str(tmp_path / "none.sock"))
    with pytest.raises(DaemonUnavailable, match="no cedana daemon"):
        client.call(str(tmp_path / "none.sock"), "job.list")
