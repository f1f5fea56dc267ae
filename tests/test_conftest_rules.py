"""The rules tests/conftest.py holds every test to: one tier marker each, no unexpected warning."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

pytest_plugins = ["pytester"]

CONFTEST = (Path(__file__).parent / "conftest.py").read_text()
MARKERS = """
[pytest]
markers =
    unit: u
    ops: o
    conformance: c
    real: r
    expect_warnings: w
"""


@pytest.fixture
def inner(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makeini(MARKERS)
    return pytester


@pytest.mark.expect_warnings  # the inner tests' warnings reach this test's handler too
def test_an_unexpected_warning_fails_the_test(inner):
    inner.makepyfile("""
        import logging
        import pytest

        pytestmark = pytest.mark.unit

        def test_quiet():
            logging.getLogger("cedanafs.x").info("fine")
            logging.getLogger("elsewhere").warning("not ours")

        def test_warns():
            logging.getLogger("cedanafs.catalog.tree").warning("something is off")

        @pytest.mark.expect_warnings
        def test_means_to_warn():
            logging.getLogger("cedanafs.streamer").error("as intended")

        def test_means_to_warn_too(expect_warnings):
            logging.getLogger("cedanafs.streamer").warning("as intended")
    """)
    result = inner.runpytest_inprocess("-q")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*test_warns*", "*cedanafs.catalog.tree: WARNING: something is off*"])


def test_a_test_without_exactly_one_tier_fails(inner):
    inner.makepyfile("""
        import pytest

        def test_no_tier():
            pass

        @pytest.mark.unit
        @pytest.mark.real
        def test_two_tiers():
            pass

        @pytest.mark.ops
        def test_one_tier():
            pass
    """)
    result = inner.runpytest_inprocess("-q")
    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines(["*needs exactly one tier marker*"])
