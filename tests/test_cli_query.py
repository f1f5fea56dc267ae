"""`freeze`/`unfreeze` of a process tree and of a job, `query process` predicting what a dump needs,
`features`, through the real command (and the real daemon for jobs).
"""

from __future__ import annotations

import json
import socket
import sys
import time

import psutil
import pytest

from tests.fixtures_procs import PROGRAMS, read_lines, wait_for

pytestmark = [pytest.mark.real, pytest.mark.timeout(300)]

# Two counters in one tree: a shell and its two children, each appending to its own file.
TREE = f"{sys.executable} {PROGRAMS / 'counter.py'} $0 --interval 0.05 & " \
       f"{sys.executable} {PROGRAMS / 'counter.py'} $1 --interval 0.05 & wait"


def states(pid: int) -> dict[int, str]:
    root = psutil.Process(pid)
    return {p.pid: p.status() for p in [root, *root.children(recursive=True)]}


def counts(*paths) -> list[int]:
    return [len(read_lines(p)) for p in paths]


def assert_frozen_then_thawed(freeze, unfreeze, pid: int, files) -> None:
    wait_for(lambda: all(counts(*files)) and len(states(pid)) == 3, what="the tree to count")
    frozen = freeze()
    assert frozen["method"] == "signal" and sorted(frozen["pids"]) == sorted(states(pid))
    assert set(states(pid).values()) == {psutil.STATUS_STOPPED}  # state T, every process
    before = counts(*files)
    time.sleep(1.0)
    assert counts(*files) == before, "a frozen counter went on counting"
    thawed = unfreeze()
    assert not thawed["frozen"]
    wait_for(lambda: all(a > b for a, b in zip(counts(*files), before)), what="both counters to resume")
    assert psutil.STATUS_STOPPED not in states(pid).values()


def test_freeze_and_unfreeze_a_process_tree(procs, cedana, tmp_path):
    files = [tmp_path / "a", tmp_path / "b"]
    shell = procs.start(["sh", "-c", TREE, *map(str, files)])
    run = lambda *a: json.loads(cedana(*a, "--output", "json", check=True).stdout)  # noqa: E731
    assert_frozen_then_thawed(lambda: run("freeze", "process", shell.pid),
                              lambda: run("unfreeze", "process", shell.pid), shell.pid, files)


@pytest.mark.slow
def test_freeze_and_unfreeze_a_job(daemon):
    files = [daemon.root / "a", daemon.root / "b"]
    daemon.cedana("run", "process", "--jid", "tree", "--", "sh", "-c", TREE, *map(str, files), check=True)
    pid = daemon.job("tree")["pid"]
    assert_frozen_then_thawed(lambda: daemon.json("freeze", "job", "tree"),
                              lambda: daemon.json("unfreeze", "job", "tree"), pid, files)


def test_freeze_of_a_missing_process_is_one_line(cedana):
    result = cedana("freeze", "process", "999999")
    assert result.returncode == 3 and result.stderr.startswith("Error: no such process")


def query(cedana, *pids, tree=True):
    args = ["query", "process", *map(str, pids), *(["--tree"] if tree else []), "--output", "json"]
    return json.loads(cedana(*args, check=True).stdout)


SERVER = """
import socket, sys, time
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
open(sys.argv[1], "w").write(str(srv.getsockname()[1]))
conn, _ = srv.accept()
while True:
    time.sleep(1)
"""


def test_query_predicts_tcp_established_for_a_connected_server(procs, cedana, tmp_path):
    port_file = tmp_path / "port"
    server = procs.start([sys.executable, "-c", SERVER, str(port_file)])
    port = int(wait_for(lambda: port_file.exists() and port_file.read_text(), what="the server's port"))
    listening = query(cedana, server.pid)[0]
    assert listening["flags"] == [] and not listening["tcp_established"]
    assert any(s["type"] == "tcp" and s["status"] == "LISTEN" for s in listening["processes"][0]["sockets"])
    with socket.create_connection(("127.0.0.1", port)):
        connected = wait_for(lambda: (q := query(cedana, server.pid)[0])["tcp_established"] and q,
                             what="the connection to show")
    assert connected["flags"] == ["--tcp-established"]


def test_query_predicts_shell_job_file_locks_and_size(procs, cedana, tmp_path):
    # Not a session leader (it shares our session): a shell job.
    child = procs.start(["sleep", "600"], start_new_session=False)
    assert query(cedana, child.pid)[0]["flags"] == ["--shell-job"]
    # A session leader holding a lock and 64 MiB of touched memory.
    holder = tmp_path / "held"
    code = (f"import fcntl, time; f = open({str(holder)!r}, 'w'); fcntl.lockf(f, fcntl.LOCK_EX);"
            " m = bytearray(64 << 20); m[::4096] = b'x' * len(m[::4096]); open(f.name + '.ok', 'w');"
            " time.sleep(600)")
    locker = procs.start([sys.executable, "-c", code])
    wait_for(lambda: (tmp_path / "held.ok").exists(), what="the lock and memory")
    found = query(cedana, locker.pid)[0]
    assert found["flags"] == ["--file-locks"] and found["file_locks"]
    assert 64 << 20 <= found["predicted_size"] <= 128 << 20
    assert any(f["path"] == str(holder) for f in found["processes"][0]["files"])
    table = cedana("query", "process", str(locker.pid), check=True).stdout
    assert "needs --file-locks" in table and "COMMAND" in table
    assert str(holder) in cedana("query", "process", str(locker.pid), "--inspect", check=True).stdout
    # The prediction against what CRIU then writes as pages.
    cedana("dump", "process", locker.pid, "--dir", tmp_path, "--name", "real", "--no-server", "--leave-running",
           "--file-locks", check=True)
    pages = sum(p.stat().st_size for p in (tmp_path / "real").glob("pages-*.img"))
    assert 0.8 * pages <= found["predicted_size"] <= 1.25 * pages, (found["predicted_size"], pages)


def test_features_lists_criu_and_stores_as_json(cedana):
    items = {f["name"]: f for f in json.loads(cedana("features", "--output", "json", check=True).stdout)}
    assert {"criu", "lazy pages", "fuse mount", "s3 store", "gcs store", "runc", "containerd", "gpu"} <= set(items)
    assert items["criu"]["available"] and "4.2" in items["criu"]["detail"]
    assert items["s3 store"]["available"] and items["gcs store"]["available"]
    assert "FEATURE" in cedana("features", check=True).stdout


@pytest.fixture
def private_cgroup():
    """A cgroup v2 group of our own (the tree alone in it); removed at the end once empty."""
    import os
    import uuid

    from cedanafs.app.freeze import cgroup2_root

    root = cgroup2_root()
    if not root or not os.access(root, os.W_OK):
        pytest.skip("no writable cgroup v2 hierarchy on this machine")
    path = os.path.join(root, f"cedana-freeze-test-{uuid.uuid4().hex[:8]}")
    os.mkdir(path)
    try:
        yield path
    finally:
        for pid in open(os.path.join(path, "cgroup.procs")).read().split():
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass
        with open(os.path.join(path, "cgroup.freeze"), "w") as f:
            f.write("0")
        wait_for(lambda: not open(os.path.join(path, "cgroup.procs")).read().strip(), what="the cgroup to empty")
        os.rmdir(path)


def test_freeze_uses_the_cgroup_freezer_when_the_tree_has_its_own_cgroup(procs, cedana, tmp_path, private_cgroup):
    import os

    files = [tmp_path / "a", tmp_path / "b"]
    # The shell moves itself into the group before it forks the counters: the tree is alone in it.
    shell = procs.start(["sh", "-c", f"echo $$ > {private_cgroup}/cgroup.procs; {TREE}", *map(str, files)])
    wait_for(lambda: all(counts(*files)) and len(states(shell.pid)) == 3, what="the tree to count")
    run = lambda *a: json.loads(cedana(*a, "--output", "json", check=True).stdout)  # noqa: E731
    frozen = run("freeze", "process", shell.pid)
    assert frozen["method"] == "cgroup" and frozen["cgroup"] == "/" + os.path.basename(private_cgroup)
    assert "frozen 1" in open(os.path.join(private_cgroup, "cgroup.events")).read()
    before = counts(*files)
    time.sleep(1.0)
    assert counts(*files) == before, "a frozen counter went on counting"
    assert run("unfreeze", "process", shell.pid)["method"] == "cgroup"
    assert "frozen 0" in open(os.path.join(private_cgroup, "cgroup.events")).read()
    wait_for(lambda: all(a > b for a, b in zip(counts(*files), before)), what="both counters to resume")
