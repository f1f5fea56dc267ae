"""The benchmark's outputs: a readable table, a JSON file, and the machine they came from."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

KIND_TITLES = {
    "frozen": "Frozen (longest gap in the workload's own ticks during the dump; lower is better)",
    "dump": "Committed (the dump command's wall time: until the checkpoint is safe; lower is better)",
    "settle": "Compressed (after the commit, until the store has compressed the new chunks; the job runs meanwhile)",
    "restore": "Restore (until the process runs again; lower is better)",
    "bytes": "Bytes stored",
    "memory": "Peak memory (max RSS)",
    "cpu": "CPU of the mount server per GiB of images ingested (first checkpoint; with-compaction: until compressed)",
}
SCHEMA_VERSION = 1


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value:.2f} s" if value < 100 else f"{value:.0f} s"
    return fmt_bytes(value)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def fmt_range(fig: dict) -> str:
    if fig["min"] is None or fig["n"] < 2:
        return "-"
    if fig["unit"] == "s":
        low, high = f"{fig['min']:.2f}", f"{fig['max']:.2f}"
    else:
        low, high = fmt_bytes(fig["min"]), fmt_bytes(fig["max"])
    return "all equal" if low == high else f"{low}-{high}"


def fmt_check(fig: dict) -> str:
    checks = fig.get("checksum")
    if not checks:
        return "-"
    total = checks["ok"] + checks["failed"]
    return f"ok {total}/{total}" if not checks["failed"] else f"FAIL {checks['failed']}/{total}"


def fmt_ratio(fig: dict) -> str:
    return "-" if fig.get("ratio_to_floor") is None else f"x{fig['ratio_to_floor']:.2f}"


def figure_row(fig: dict) -> list[str]:
    if fig["status"] == "not available":
        return [fig["label"], f"not available: {fig['reason']}"]
    row = [fig["label"], fmt_value(fig["median"], fig["unit"]), fmt_range(fig), str(fig["n"]), fmt_ratio(fig),
           fmt_check(fig)]
    if fig["status"] == "failed":
        row.append(f"FAILED: {fig['reason']}")
    return row


HEADERS = ["figure", "median", "min-max", "n", "vs floor", "checksum"]


def format_table(figures: list[dict]) -> str:
    """Figures grouped by kind; a row that is not available spans the value columns with its reason."""
    rows = [figure_row(f) for f in figures]
    full = [r for r in rows if len(r) >= len(HEADERS)] + [HEADERS]
    widths = [max(len(r[i]) for r in full) for i in range(len(HEADERS))]
    lines: list[str] = []
    for kind, title in KIND_TITLES.items():
        group = [(f, r) for f, r in zip(figures, rows) if f["kind"] == kind]
        if not group:
            continue
        lines += ["", title, join_row(HEADERS, widths), join_row(["-" * w for w in widths], widths)]
        lines += [join_row(r, widths) for _, r in group]
    return "\n".join(lines).lstrip("\n")


def join_row(cells: list[str], widths: list[int]) -> str:
    head = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
    return "  ".join(head + cells[len(widths):]).rstrip()


def format_header(doc: dict) -> str:
    """One line on what ran where, printed above the table."""
    m, p = doc["machine"], doc["params"]
    load = doc.get("load_average", {}).get("start")
    return (f"workload {p['size']} (mix {p['mix']}), {p['reps']} repetition(s); {m['cpu_model']}, {m['cores']} cores, "
            f"{fmt_bytes(m['memory_bytes'] or 0)}, kernel {m['kernel']}, CRIU {m['criu_version']}"
            + (f"; load average {load[0]:.1f} at start" if load else ""))


def machine_info(criu: str | None) -> dict:
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "memory_bytes": mem_total(),
        "kernel": platform.release(),
        "os": os_name(),
        "criu_version": criu_version(criu),
        "python": platform.python_version(),
        "cedanafs_commit": git_commit(),
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_total() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def criu_version(criu: str | None) -> str | None:
    if not criu:
        return None
    try:
        out = subprocess.run([criu, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.splitlines()[0].replace("Version:", "").strip() if out else None


def git_commit() -> str | None:
    try:
        proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() or None


def write_results(results: dict, results_dir: Path, stamp: str, smoke: bool) -> Path:
    """<stamp>.json and latest.json (smoke runs: smoke-<stamp>.json and smoke-latest.json, so a
    `make test` never replaces the results of the last real run)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    prefix = "smoke-" if smoke else ""
    text = json.dumps(results, indent=2, sort_keys=False) + "\n"
    path = results_dir / f"{prefix}{stamp}.json"
    path.write_text(text)
    latest = results_dir / f"{prefix}latest.json"
    tmp = latest.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, latest)
    return path
