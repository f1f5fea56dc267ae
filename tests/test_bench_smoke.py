"""The benchmark harness's own logic: statistics, figure statuses, the table, the JSON shape.

Plus one real run of the floor (raw CRIU dump/restore of a tiny workload), marked slow. A benchmark
is not a test: nothing here asserts on how long anything took.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import run
from bench.harness import Recorder, select_methods
from bench.methods import Spec, all_methods, compressions_offered
from bench.procs import Cleanup
from bench.remote import remote_methods
from bench.report import format_header, format_table, write_results
from bench.stats import ratio, summarize

pytestmark = pytest.mark.real

ROOT = Path(__file__).resolve().parent.parent
FIGURE_KEYS = {"id", "kind", "label", "unit", "floor", "status", "reason", "n", "median", "min", "max",
               "spread", "spread_pct", "samples", "checksum", "errors", "ratio_to_floor"}


def test_summarize_odd_and_even_counts():
    assert summarize([3.0, 1.0, 2.0]) == {"n": 3, "median": 2.0, "min": 1.0, "max": 3.0, "spread": 2.0,
                                          "spread_pct": 100.0}
    assert summarize([1.0, 2.0, 4.0, 10.0])["median"] == 3.0


def test_summarize_nothing_measured():
    assert summarize([]) == {"n": 0, "median": None, "min": None, "max": None, "spread": None, "spread_pct": None}


def test_ratio_needs_both_values():
    assert ratio(3.0, 1.5) == 2.0
    assert ratio(None, 1.0) is None
    assert ratio(1.0, None) is None
    assert ratio(1.0, 0.0) is None


def specs() -> list[Spec]:
    return [Spec("dump/floor", "dump", "dump: floor", "s", "dump/floor"),
            Spec("dump/x", "dump", "dump: x", "s", "dump/floor"),
            Spec("restore/floor", "restore", "restore: floor", "s", "restore/floor"),
            Spec("restore/x", "restore", "restore: x", "s", "restore/floor"),
            Spec("bytes/x", "bytes", "stored: x", "B", None),
            Spec("dump/mount", "dump", "dump: mount", "s", "dump/floor")]


def recorded() -> Recorder:
    rec = Recorder()
    rec.declare(specs())
    for value in (1.0, 2.0, 3.0):
        rec.sample("dump/floor", value)
        rec.sample("dump/x", 2 * value)
    rec.sample("restore/floor", 1.0)
    rec.check("restore/floor", True)
    rec.sample("restore/x", 2.0)
    rec.check("restore/x", True)
    rec.check("restore/x", False)
    rec.sample("bytes/x", 3 * 1024 * 1024)
    rec.not_available(["dump/mount"], "`cedana mount` does not exist yet")
    return rec


def by_id(figures: list[dict]) -> dict[str, dict]:
    return {f["id"]: f for f in figures}


def test_recorder_statuses_and_ratios():
    figs = by_id(recorded().figures())
    assert figs["dump/floor"]["status"] == "ok" and figs["dump/floor"]["ratio_to_floor"] == 1.0
    assert figs["dump/x"]["ratio_to_floor"] == 2.0
    assert figs["restore/x"]["status"] == "failed"
    assert figs["restore/x"]["checksum"] == {"ok": 1, "failed": 1}
    assert figs["dump/mount"]["status"] == "not available"
    assert figs["dump/mount"]["reason"] == "`cedana mount` does not exist yet"
    assert figs["bytes/x"]["ratio_to_floor"] is None


def test_a_step_error_fails_the_figure_even_with_samples():
    rec = recorded()
    rec.error(["dump/x"], "`criu dump` exited 1: boom")
    fig = by_id(rec.figures())["dump/x"]
    assert fig["status"] == "failed" and fig["reason"] == "`criu dump` exited 1: boom"


def test_a_declared_figure_without_samples_is_not_silently_ok():
    rec = Recorder()
    rec.declare(specs()[:1])
    assert rec.figures()[0]["status"] == "failed"


def test_ranges_equal_at_display_precision_say_so():
    rec = Recorder()
    rec.declare([Spec("bytes/y", "bytes", "stored: y", "B", None)])
    rec.sample("bytes/y", 100 << 20)
    rec.sample("bytes/y", (100 << 20) + 7)
    assert "all equal" in format_table(rec.figures())


def test_table_shows_medians_ratios_checks_and_reasons():
    table = format_table(recorded().figures())
    lines = table.splitlines()
    assert any(line.startswith("Committed") for line in lines) and any(line.startswith("Restore") for line in lines)
    dump_x = next(line for line in lines if line.startswith("dump: x"))
    assert "4.00 s" in dump_x and "2.00-6.00" in dump_x and "x2.00" in dump_x
    restore_x = next(line for line in lines if line.startswith("restore: x"))
    assert "FAIL 1/2" in restore_x and "FAILED" in restore_x
    assert "ok 1/1" in next(line for line in lines if line.startswith("restore: floor"))
    stored = next(line for line in lines if line.startswith("stored: x"))
    assert "3.0 MiB" in stored and "all equal" not in stored  # one sample: no range at all
    assert "not available: `cedana mount` does not exist yet" in next(
        line for line in lines if line.startswith("dump: mount"))


def fake_args(**overrides) -> argparse.Namespace:
    values = {"size": "16M", "reps": 1, "mix": "0.3,0.3,0.4", "change": "256K", "only": None, "smoke": True}
    return argparse.Namespace(**{**values, **overrides})


def test_json_document_shape(tmp_path):
    rec = recorded()
    figures = rec.figures()
    doc = run.results_document(fake_args(), 0.0, rec, [], figures)
    assert doc["ok"] is False and doc["failed"] == ["restore/x"]
    assert doc["not_available"] == {"dump/mount": "`cedana mount` does not exist yet"}
    assert {"cpu_model", "cores", "memory_bytes", "kernel", "criu_version"} <= set(doc["machine"])
    assert doc["params"]["size_bytes"] == 16 << 20
    for fig in doc["figures"]:
        assert FIGURE_KEYS <= set(fig)
    assert "16M" in format_header(doc) and "cores" in format_header(doc)
    path = write_results(doc, tmp_path, "20260101T000000", smoke=False)
    assert path.name == "20260101T000000.json"
    assert json.loads((tmp_path / "latest.json").read_text()) == json.loads(json.dumps(doc))


def test_smoke_results_never_replace_latest(tmp_path):
    write_results({"x": 1}, tmp_path, "s1", smoke=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smoke-latest.json", "smoke-s1.json"]


def test_defaults_differ_for_smoke():
    assert (run.parse_args([]).size, run.parse_args([]).reps) == ("256M", 3)
    smoke = run.parse_args(["--smoke"])
    assert (smoke.size, smoke.reps) == ("16M", 1)
    assert run.parse_args(["--smoke", "--size", "32M"]).size == "32M"


def test_only_keeps_the_floor_and_matching_methods_and_remote_ones_only_when_asked():
    methods = all_methods() + remote_methods()
    keys = [m.key for m in select_methods(methods, ["cedana-way", "mount"])]
    assert keys == ["floor", "cedana-way-gzip", "cedana-way-lz4", "mount"]
    assert [m.key for m in select_methods(methods, ["s3"])] == ["floor", "s3-cedana-way-lz4", "s3-cedana-lz4",
                                                                 "s3-mount"]
    assert [m.key for m in select_methods(methods, None)] == [m.key for m in all_methods()]


def test_compression_choices_are_read_from_click_help():
    help_text = "Options:\n  --compression [none|tar|gzip|lz4|zlib|zstd]\n                 How to pack it."
    assert compressions_offered(help_text) == {"none", "tar", "gzip", "lz4", "zlib", "zstd"}
    assert compressions_offered("no such option here") is None


def test_cleanup_runs_in_reverse_once_and_survives_errors():
    done, logged = [], []
    cleanup = Cleanup(log=logged.append)
    cleanup.add("first", lambda: done.append(1))
    token = cleanup.add("second", lambda: done.append(2))
    cleanup.add("broken", lambda: 1 / 0)
    cleanup.add("last", lambda: done.append(4))
    cleanup.run(token)
    cleanup.run_all()
    cleanup.run_all()
    assert done == [2, 4, 1]
    assert len(logged) == 1 and "broken" in logged[0]


def criu_binary() -> str | None:
    return run.find_criu()


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="CRIU needs root")
@pytest.mark.skipif(criu_binary() is None, reason="no criu binary")
def test_real_floor_run(tmp_path):
    """A real tiny run of the floor: CRIU dumps into a tmpfs and restores, checksum verified.

    In a subprocess, because the harness makes itself a child subreaper."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--only", "floor",
                           "--size", "8M", "--results-dir", str(tmp_path), "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads((tmp_path / "smoke-latest.json").read_text())
    figs = by_id(doc["figures"])
    assert figs["dump/floor"]["status"] == "ok" and figs["dump/floor"]["n"] == 1
    assert figs["restore/floor"]["checksum"] == {"ok": 1, "failed": 0}
    assert figs["bytes/floor"]["median"] > 8 << 20
    assert set(figs) == {"dump/floor", "dump/floor:second", "restore/floor", "bytes/floor", "bytes/floor:second",
                         "frozen/floor", "frozen/floor:second"}
    # Seen from the workload's own ticks: a raw dump freezes it for a moment, and that is measured.
    assert figs["frozen/floor"]["status"] == "ok" and 0 < figs["frozen/floor"]["median"] < 60
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith("cedanafs-bench-")]
    assert leftovers == [], "the harness left its work directory behind"
    mounts = Path("/proc/self/mounts").read_text()
    assert str(tmp_path) not in mounts, "the harness left its tmpfs mounted"
