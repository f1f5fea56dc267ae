"""Shared pytest wiring: fixture plugins live in tests/fixtures_*.py and are listed here."""

import json
import os

import pytest

pytest_plugins = [
    p for p in (
        "tests.fixtures_procs",
        "tests.fixtures_servers",
        "tests.fixtures_mount",
        "tests.fixtures_daemon",
    )
    if os.path.exists(os.path.join(os.path.dirname(__file__), p.split(".")[1] + ".py"))
]


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path_factory, monkeypatch):
    """Each test sees an empty config dir, so /etc/cedana on the machine cannot change results."""
    cfg = tmp_path_factory.mktemp("cedana-config")
    # State (the catalog index, failed dumps' CRIU logs) in the test's own dir, never the machine's.
    (cfg / "config.json").write_text(json.dumps({"db": {"path": str(cfg / "state" / "cedana.db")}}))
    monkeypatch.setenv("CEDANA_CONFIG_DIR", str(cfg))
    yield cfg
