"""What `cedana` loads before it starts: the command's lazy loading (cli/base.py LazyGroup; each
command is there when asked for alone, with all its subcommands, every command a module adds is
declared, a command loads no other command family), and what `dump process` and `restore
process` leave to the paths that need it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.fixtures_procs import ROOT

pytestmark = pytest.mark.unit

# Run in a fresh interpreter: which command paths are there after asking for one lazy entry alone
# (each in a forked child of an interpreter that loaded no command module), and after loading all.
_PROBE = r'''
import json, os, sys
import click
from cedanafs import cli as package
from cedanafs.cli.base import LazyGroup

def added(cmd, path):
    """The command paths under cmd that are added so far, loading nothing."""
    paths = [path]
    for name, sub in getattr(cmd, "commands", {}).items():
        paths += added(sub, f"{path} {name}")
    return paths

def lazy_groups(group, path):
    yield path, group
    for name, sub in group.commands.items():
        if isinstance(sub, LazyGroup):
            yield from lazy_groups(sub, f"{path} {name}")

def alone(path, name):
    """The paths under one lazy entry when it is the only thing asked for (in a child)."""
    read, write = os.pipe()
    if os.fork() == 0:
        group = package.cli
        for part in path.split()[1:]:
            group = group.commands[part]
        cmd = group.get_command(click.Context(group), name)
        os.write(write, json.dumps(added(cmd, f"{path} {name}") if cmd else []).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        found = json.loads(f.read())
    os.wait()
    return found

groups = list(lazy_groups(package.cli, "cedana"))
result = {"alone": {f"{p} {n}": alone(p, n) for p, g in groups for n in g.lazy},
          "own": {p: sorted(g.commands) for p, g in groups}, "declared": {p: sorted(g.lazy) for p, g in groups}}
package.load_commands()
result["all"] = added(package.cli, "cedana")
print(json.dumps(result))
'''


@pytest.fixture(scope="module")
def probe() -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_each_command_comes_alone_with_all_its_subcommands(probe):
    for entry, paths in probe["alone"].items():
        expected = [p for p in probe["all"] if p == entry or p.startswith(entry + " ")]
        assert sorted(paths) == sorted(expected), f"{entry}: its modules in base.py do not add all of it"


def test_every_command_a_module_adds_is_declared(probe):
    full = probe["all"]
    for group, declared in probe["declared"].items():
        names = {p[len(group) + 1:] for p in full if p.startswith(group + " ") and " " not in p[len(group) + 1:]}
        assert names == set(declared) | set(probe["own"][group]), f"{group}: declare every command in base.py"


def _imported(*args: str) -> set[str]:
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "cedanafs.cli", *args], capture_output=True,
                            text=True, timeout=60, cwd=str(ROOT))
    return {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize("args,families", [(("dump", "process", "--help"), {"process"}),
                                           (("restore", "process", "--help"), {"process"}),
                                           (("job", "list", "--help"), {"jobs", "attach"})])
def test_a_command_loads_only_its_family(args, families):
    modules = {f"cedanafs.cli.{m}" for m in ("containers", "jobs", "k8s", "mount", "process", "store", "attach",
                                             "misc", "query")}
    assert _imported(*args) & modules == {f"cedanafs.cli.{m}" for m in families}


def test_dump_and_restore_leave_what_only_some_paths_need():
    """A dump or restore of an images dir loads neither the archive formats, O_DIRECT writes,
    the mount's capture, the images readers nor the other restores."""
    code = ("import sys, cedanafs.cli, cedanafs.cli.process, cedanafs.app.process, cedanafs.app.procinfo,"
            " cedanafs.daemon.client; print(' '.join(sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=str(ROOT))
    loaded = set(out.stdout.split())
    assert "cedanafs.app.process" in loaded
    assert loaded & {"cedanafs.app.archive", "cedanafs.app.sums", "cedanafs.fsio", "cedanafs.app.capture",
                     "cedanafs.criu.images", "cedanafs.criu.probe", "cedanafs.criu.stream", "cedanafs.criu.terminal",
                     "cedanafs.types", "isal", "hashlib", "ctypes"} == set()
