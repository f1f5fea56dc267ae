"""Scripting: `--output json` parses for every command that reports a result (same keys as the
tables), completion scripts load in bash, `daemon stop`, `umount` refusing the daemon's mount, and
--config overrides a daemon-served command cannot honour refused with a reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures_daemon import wait_status
from tests.fixtures_procs import PROGRAMS, ROOT, read_lines, wait_for

pytestmark = [pytest.mark.real, pytest.mark.timeout(300)]


def as_json(result: subprocess.CompletedProcess):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.slow
def test_every_reporting_command_speaks_json_through_the_daemon(daemon, procs, tmp_path):
    j = lambda *a: as_json(daemon.cedana(*a[:2], "--output", "json", *a[2:]))  # noqa: E731
    out = daemon.root / "c.count"
    started = j("run", "process", "--jid", "js", "--", sys.executable, PROGRAMS / "counter.py", out)
    assert {"job", "pid", "status", "log"} <= set(started)
    wait_for(lambda: len(read_lines(out)) >= 3, what="the counter")
    listed = j("job", "list")
    assert [r["job"] for r in listed] == ["js"]
    assert {"job", "type", "pid", "status", "gpu", "checkpoint", "size", "log"} <= set(listed[0])  # the table's columns
    dumped = j("dump", "job", "js")
    assert dumped["job"] == "js" and dumped["checkpoint"] and dumped["path"].startswith(str(daemon.mount_dir))
    from cedanafs.config import format_size

    size = format_size(dumped["size"])  # one size format in every table
    assert size in daemon.cedana("job", "list", check=True).stdout
    assert size in daemon.cedana("job", "checkpoints", "js", check=True).stdout
    ckpts = j("job", "checkpoints", "js")
    assert [c["id"] for c in ckpts] == [dumped["checkpoint"]] and {"id", "time", "size", "path"} <= set(ckpts[0])
    restored = j("restore", "job", "js")
    assert restored["job"] == "js" and restored["pid"] and restored["path"] == dumped["path"]
    killed = j("job", "kill", "js")
    assert killed == {"job": "js", "pid": restored["pid"], "signal": "SIGKILL", "pids": killed["pids"]}
    assert restored["pid"] in killed["pids"]  # the job's whole session
    wait_status(daemon, "js", ("halted",))
    deleted = j("job", "delete", "js", "--yes")
    assert deleted["job"] == "js" and deleted["checkpoints_deleted"] == [dumped["checkpoint"]]

    proc = procs.counter(tmp_path / "m.count")
    managed = j("manage", "process", str(proc.pid), "--jid", "mgd")
    assert managed["job"] == "mgd" and managed["pid"] == proc.pid
    health = j("daemon", "check")
    assert health["healthy"] and health["mount"]["mounted"]
    frozen = j("freeze", "job", "mgd")
    assert frozen["pids"] == [proc.pid]
    j("unfreeze", "job", "mgd")
    dumped = j("dump", "process", str(proc.pid), "--dir", tmp_path, "--name", "p", "--compression", "zstd")
    assert dumped["path"].endswith("p.tar.zst")
    proc.wait(timeout=30)  # our child: reap it, so its PID is free for the restore
    restored = j("restore", "process", "--path", dumped["path"])
    procs.watch(restored["pid"])
    assert restored["pid"] == proc.pid


def test_store_commands_speak_json(cedana, procs, tmp_path, monkeypatch):
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "config.json").write_text(json.dumps({"store": {"url": str(tmp_path / "store")},
                                                 "db": {"path": str(tmp_path / "db" / "c.db")}}))
    monkeypatch.setenv("CEDANA_CONFIG_DIR", str(cfg))
    j = lambda *a: as_json(cedana(*a, "--output", "json"))  # noqa: E731
    proc = procs.counter(tmp_path / "n.count")
    wait_for(lambda: read_lines(tmp_path / "n.count"), what="the counter")
    dumped = j("dump", "process", str(proc.pid), "--dir", tmp_path, "--name", "d", "--no-server", "--leave-running")
    imported = j("checkpoint", "import", dumped["path"], "--job", "imp")
    assert imported["job"] == "imp" and imported["files"] > 3
    listed = j("checkpoint", "list")
    assert [c["id"] for c in listed] == [imported["id"]]
    assert j("checkpoint", "inspect", "imp")["id"] == imported["id"]
    assert j("checkpoint", "verify", "imp")["ok"]
    exported = j("checkpoint", "export", "imp", tmp_path / "out")
    assert exported["files"] == imported["files"] and (tmp_path / "out" / "inventory.img").exists()
    assert j("store", "stats")["checkpoints"] == 1
    assert j("checkpoint", "delete", "imp") == {"job": "imp", "id": imported["id"], "deleted": True}
    assert "deleted" in j("gc", "--grace", "0")
    assert {c["name"] for c in j("check")} >= {"criu", "root"}
    assert j("query", "process", str(proc.pid))[0]["pid"] == proc.pid


def test_completion_scripts_load_in_bash_and_complete(cedana, tmp_path):
    for shell in ("bash", "zsh", "fish"):
        assert "_CEDANA_COMPLETE" in cedana("completion", shell, check=True).stdout
    script = tmp_path / "cedana.bash"
    script.write_text(cedana("completion", "bash", check=True).stdout)
    # Load it, then ask it what `cedana fre<TAB>` completes to, as bash would.
    bindir = Path(sys.executable).parent  # the virtualenv's `cedana` entry point
    assert (bindir / "cedana").exists()
    probe = (f"export PATH={bindir}:$PATH; source {script} && complete -p cedana && "
             "COMP_WORDS=(cedana fre); COMP_CWORD=1; _cedana_completion cedana; echo \"${COMPREPLY[@]}\"")
    result = subprocess.run(["bash", "--norc", "-c", probe], capture_output=True, text=True, cwd=str(ROOT),
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "complete -o nosort -F _cedana_completion cedana" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "freeze"


@pytest.mark.slow
def test_umount_refuses_the_daemons_mount_and_daemon_stop_stops_it(daemon):
    refused = daemon.cedana("umount", daemon.mount_dir)
    assert refused.returncode == 2 and "daemon's mount" in refused.stderr and "cedana daemon stop" in refused.stderr
    assert daemon.json("daemon", "check")["mount"]["mounted"]
    stopped = daemon.cedana("daemon", "stop", check=True)
    assert "Stopped the cedana daemon" in stopped.stdout
    assert daemon.proc.wait(timeout=30) == 0
    assert daemon.cedana("job", "list").returncode == 10  # no daemon


@pytest.mark.slow
def test_config_overrides_the_daemon_cannot_honour_are_refused(daemon):
    refused = daemon.cedana("--config", '{"store": {"url": "/elsewhere"}}', "job", "list")
    assert refused.returncode == 2 and "store.url" in refused.stderr and "daemon" in refused.stderr
    honoured = daemon.cedana("--config", json.dumps({"address": str(daemon.address)}), "job", "list", check=True)
    assert "JOB" in honoured.stdout


@pytest.mark.slow
def test_mount_seal_and_umount_speak_json(mount_factory, cedana, procs, tmp_path):
    m = mount_factory(autoseal_after=0)
    mounted = as_json(m.cedana("mount", m.mountpoint, "--autoseal-after", "0", "--output", "json"))
    assert mounted == {"mountpoint": str(m.mountpoint), "store": str(m.store)}
    proc = procs.start(["sleep", "600"])
    cedana("dump", "process", proc.pid, "--dir", tmp_path, "--name", "c", "--no-server", check=True)
    target = m.jobs / "s1" / "c1"
    target.mkdir(parents=True)
    for f in (tmp_path / "c").iterdir():
        (target / f.name).write_bytes(f.read_bytes())
    assert as_json(m.cedana("checkpoint", "seal", target, "--output", "json")) == {"path": str(target),
                                                                                 "sealed": "s1/c1"}
    assert as_json(m.cedana("umount", m.mountpoint, "--output", "json")) == {"mountpoint": str(m.mountpoint),
                                                                          "unmounted": True}
