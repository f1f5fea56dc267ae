"""The layer rules of DESIGN.md section 4, enforced by walking every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parent.parent / "cedanafs"

LAYER = {
    "errors": 0, "types": 0, "config": 0, "log": 0, "spool": 0, "fsio": 0, "priority": 0, "__init__": 0,
    "catalog": 1, "streamer": 1, "criu": 1,
    "fuse": 2, "runtimes": 2,
    "app": 3,
    "cli": 4, "daemon": 4,
}
SIBLINGS_APART = {"catalog", "streamer", "criu"}


def _part(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else "__init__"


def _imports(path: Path, root: Path = PACKAGE.parent) -> list[str]:
    rel = path.relative_to(root).with_suffix("")
    here = ".".join(rel.parts)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    if path.name == "__init__.py":
        here = package
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
                found += [mod] if node.module else [_name_in(root, mod, a.name) for a in node.names]
            elif node.module:
                found.append(node.module)
    return found


def _name_in(root: Path, package: str, name: str) -> str:
    """`from . import x`: x is a submodule if a file or package of that name exists, else an attribute."""
    base = root.joinpath(*package.split("."))
    return f"{package}.{name}" if (base / f"{name}.py").exists() or (base / name).is_dir() else package


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        yield path, ".".join(rel.parts)


def test_imports_only_go_down():
    problems = []
    for path, module in _modules():
        mine = _part(module)
        for target in _imports(path):
            if not target.startswith("cedanafs.") or target == "cedanafs.__init__":
                continue
            theirs = _part(target)
            if theirs == mine or theirs == "__init__":
                continue
            if LAYER[theirs] > LAYER[mine]:
                problems.append(f"{module} (layer {LAYER[mine]}) imports {target} (layer {LAYER[theirs]})")
            if mine in SIBLINGS_APART and theirs in SIBLINGS_APART:
                problems.append(f"{module} imports its sibling {target}")
    assert not problems, "\n".join(problems)


def test_only_fuse_imports_pyfuse3_and_only_cli_imports_click():
    problems = []
    for path, module in _modules():
        for target in _imports(path):
            root = target.split(".")[0]
            if root == "pyfuse3" and _part(module) != "fuse":
                problems.append(f"{module} imports pyfuse3")
            if root == "click" and _part(module) != "cli":
                problems.append(f"{module} imports click")
    assert not problems, "\n".join(problems)


def test_every_part_is_known():
    unknown = {_part(m) for _, m in _modules()} - set(LAYER)
    assert not unknown, f"modules outside the layer map: {unknown}"


def test_the_walker_sees_violations(tmp_path):
    bad = tmp_path / "cedanafs" / "catalog"
    bad.mkdir(parents=True)
    (bad / "x.py").write_text("from ..streamer import chunkstore\nimport click\n")
    (bad.parent / "streamer").mkdir()
    found = _imports(bad / "x.py", tmp_path)
    assert "cedanafs.streamer" in found and "click" in found


def _graph() -> dict[str, set[str]]:
    """Module -> the cedanafs modules it imports (a package import counts as its __init__)."""
    modules = {module: path for path, module in _modules()}
    graph = {}
    for module, path in modules.items():
        here = module[: -len(".__init__")] if module.endswith(".__init__") else module
        targets = set()
        for target in _imports(path):
            if target in modules:
                targets.add(target)
            elif f"{target}.__init__" in modules:
                targets.add(f"{target}.__init__")
        targets.discard(module)
        graph[here if not module.endswith(".__init__") else module] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles among modules, ignoring the edges into a package's own __init__ (re-exports)."""
    def edges(module: str) -> set[str]:
        own = module.rsplit(".", 1)[0]
        return {t for t in graph.get(module, ()) if not (t.endswith(".__init__") and own.startswith(t[:-9]))}

    found, state = [], {}

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges(module)):
            if state.get(target) == 1:
                found.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


def test_no_import_cycles():
    """Dependencies go one way inside a layer too (files -> store, chunkstore -> gc, were cycles);
    imports made only for type checking count: they are dependencies all the same."""
    cycles = _cycles(_graph())
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_finder_sees_a_cycle():
    assert _cycles({"a.x": {"a.y"}, "a.y": {"a.x"}, "a.z": set()}) == [["a.x", "a.y", "a.x"]]


FUSE_MODULES = {"__init__", "operations", "xattrs", "mount"}
FUSE_MAX_LINES = 500


def test_fuse_is_only_the_adapter_and_the_mount_loop():
    """The tree and its lifecycle live in catalog/, the bytes in streamer/: fuse/ only translates."""
    fuse = PACKAGE / "fuse"
    names = {p.stem for p in fuse.glob("*.py")}
    assert names == FUSE_MODULES, f"fuse/ holds {sorted(names - FUSE_MODULES)} beyond the adapter"
    lines = sum(len(p.read_text().splitlines()) for p in fuse.glob("*.py"))
    assert lines <= FUSE_MAX_LINES, f"fuse/ has grown to {lines} lines"


def test_the_tree_and_the_pending_bytes_live_below_fuse():
    for module in ("catalog/tree.py", "catalog/lifecycle.py", "catalog/nodes.py", "streamer/pending.py",
                   "streamer/session.py"):
        path = PACKAGE / module
        assert path.exists(), module
        assert not [t for t in _imports(path) if t.startswith(("pyfuse3", "cedanafs.fuse"))], module


def test_every_module_says_what_it_owns():
    missing = [m for p, m in _modules() if not ast.get_docstring(ast.parse(p.read_text()))]
    assert not missing, f"modules without a docstring: {missing}"
