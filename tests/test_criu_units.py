"""The criu layer without running CRIU: reading a failure's cause from its log, flags for the command
line, and the app's keeping of failed dumps' logs.
"""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from cedanafs.app import process as app_process
from cedanafs.config import load_settings
from cedanafs.criu import RestoreOptions, StdioMapping, log_errors
from cedanafs.criu.lazy import restore_args
from cedanafs.errors import UsageError

pytestmark = pytest.mark.unit

FAILED_DUMP_LOG = """\
(00.000000) CRIU run id = a5cadbae
(00.038916) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted
(00.045000) Dumping path for 3 fd via self 9 [/tmp/x]
(00.045768) Error (criu/sk-inet.c:200): inet: Connected TCP socket, consider using --tcp-established option.
(00.045783) Error (criu/cr-dump.c:1545): Dump files (pid: 23223) failed with -1
(00.046115) Error (criu/cr-dump.c:1975): Dumping FAILED.
"""


def test_log_errors_quotes_the_cause_not_the_noise(tmp_path):
    log = tmp_path / "dump.log"
    log.write_text(FAILED_DUMP_LOG)
    assert log_errors(str(log)) == "inet: Connected TCP socket, consider using --tcp-established option."


def test_log_errors_falls_back_to_the_last_line(tmp_path):
    log = tmp_path / "dump.log"
    log.write_text("(00.1) Error (criu/cr-dump.c:1975): Dumping FAILED.\n")
    assert log_errors(str(log)) == "Dumping FAILED."
    assert log_errors(str(tmp_path / "missing.log")) == ""


def test_lazy_restore_gets_the_same_flags_as_an_eager_one():
    opts = RestoreOptions(images_dir="/x", shell_job=True, tcp_established=True, file_locks=True,
                          external=("mnt[a]:/b",), rst_sibling=True, inherit=(StdioMapping("var/log/x", 7),),
                          extra={"tcp_skip_in_flight": True, "ghost_limit": 1024})
    args = restore_args(opts)
    for flag in ("--shell-job", "--tcp-established", "--file-locks", "--restore-sibling", "--tcp-skip-in-flight"):
        assert flag in args
    assert args[args.index("--external") + 1] == "mnt[a]:/b"
    assert args[args.index("--inherit-fd") + 1] == "fd[7]:var/log/x"
    assert args[args.index("--ghost-limit") + 1] == "1024"
    with pytest.raises(UsageError):
        restore_args(RestoreOptions(images_dir="/x", extra={"external": ["a"]}))


def test_failed_dump_logs_are_kept_and_pruned(tmp_path, monkeypatch):
    monkeypatch.setenv("CEDANA_DB_PATH", str(tmp_path / "state" / "cedana.db"))
    settings = load_settings(None, None)
    log = tmp_path / "criu.log"
    log.write_text(FAILED_DUMP_LOG)
    kept = [app_process.keep_failed_log(settings, str(log), pid) for pid in range(100, 108)]
    where = tmp_path / "state" / app_process.FAILED_DUMPS
    assert kept[-1].startswith(str(where)) and open(kept[-1]).read() == FAILED_DUMP_LOG
    assert sorted(str(p) for p in where.iterdir()) == sorted(kept[-app_process.KEEP_FAILED_DUMPS:])
    assert (where.stat().st_mode & 0o777) == 0o700


def test_a_zombie_holding_a_pid_is_not_taken_for_free():
    child = subprocess.Popen(["sleep", "60"])
    try:
        child.send_signal(signal.SIGKILL)
        time.sleep(0.3)  # dead, not reaped: a zombie of ours
        holder = app_process._pid_holder(child.pid, wait=0.2)
        assert holder is not None and "zombie" in holder
    finally:
        child.wait()
    assert app_process._pid_holder(child.pid, wait=0.2) is None


def test_dumps_use_the_command_line_unless_rpc_fields_are_asked(monkeypatch):
    from cedanafs.criu import DumpOptions, rpc

    ran = []
    monkeypatch.setattr(rpc, "_dump_cli", lambda binary, o: ran.append(("cli", rpc.dump_args(o))))
    monkeypatch.setattr(rpc, "_dump_rpc", lambda binary, o: ran.append(("rpc", dict(o.extra))))
    plain = DumpOptions(images_dir="/x", pid=7, leave_running=True, tcp_established=True, file_locks=True,
                        external=("unix[1]",), extra={"leave_stopped": True})
    rpc.dump("criu", plain)
    rpc.dump("criu", DumpOptions(images_dir="/x", pid=7, extra={"ghost_limit": 10}))
    assert ran == [("cli", ["--tcp-established", "--file-locks", "--leave-running", "--leave-stopped",
                            "--external", "unix[1]"]),
                   ("rpc", {"ghost_limit": 10})]
