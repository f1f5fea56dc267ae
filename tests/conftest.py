"""Shared pytest wiring: fixture plugins live in tests/fixtures_*.py and are listed here.

Two rules hold for every test:
- It carries exactly one tier marker (unit, ops, conformance, real: DESIGN.md section 4), so
  `pytest -m unit` runs the fast tier and nothing is a tier only by its file name.
- It fails if cedanafs logs a warning (or worse) while it runs, unless it is marked
  `expect_warnings` (or uses the `expect_warnings` fixture): an unexpected warning is a bug
  report nobody reads, as S3QL's test plugin has it.
"""

import json
import logging
import os

import pytest

pytest_plugins = [
    p for p in (
        "tests.fixtures_procs",
        "tests.fixtures_servers",
        "tests.fixtures_mount",
        "tests.fixtures_daemon",
        "tests.fixtures_containers",
        "tests.fixtures_containerd",
    )
    if os.path.exists(os.path.join(os.path.dirname(__file__), p.split(".")[1] + ".py"))
]

TIERS = ("unit", "ops", "conformance", "real")


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path_factory, monkeypatch):
    """Each test sees an empty config dir, so /etc/cedana on the machine cannot change results."""
    cfg = tmp_path_factory.mktemp("cedana-config")
    # State (the catalog index, failed dumps' CRIU logs) in the test's own dir, never the machine's.
    (cfg / "config.json").write_text(json.dumps({"db": {"path": str(cfg / "state" / "cedana.db")}}))
    monkeypatch.setenv("CEDANA_CONFIG_DIR", str(cfg))
    yield cfg


@pytest.fixture
def expect_warnings(request):
    """Use in a test that means to make cedanafs log warnings (same as the marker)."""
    request.node.add_marker(pytest.mark.expect_warnings)


def pytest_runtest_setup(item):
    tiers = sorted({m.name for m in item.iter_markers() if m.name in TIERS})
    if len(tiers) != 1:
        pytest.fail(f"{item.nodeid} needs exactly one tier marker of {', '.join(TIERS)}, not {tiers or 'none'}"
                    " (set pytestmark in its module)", pytrace=False)


class _Warnings(logging.Handler):
    """Collects what cedanafs logs at WARNING or above while a test runs."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "cedanafs" or record.name.startswith("cedanafs."):
            self.records.append(record)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    handler = _Warnings()
    logger = logging.getLogger("cedanafs")
    level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.WARNING:
        logger.setLevel(logging.WARNING)
    try:
        result = yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    if handler.records and not item.get_closest_marker("expect_warnings"):
        lines = "\n".join(f"  {r.name}: {r.levelname}: {r.getMessage()}" for r in handler.records[:10])
        pytest.fail(f"cedanafs logged {len(handler.records)} unexpected warning(s) (mark the test"
                    f" expect_warnings if it means to):\n{lines}", pytrace=False)
    return result
