#!/usr/bin/env python3
"""cedanafs benchmarks (`make bench`, `make bench-smoke`): what a checkpoint costs, against the floor.

Measures in one run, on one workload (bench/workload.py), repeated --reps times: raw `criu dump`
into a tmpfs (the floor), Cedana's way (criu to disk, tar + gzip / lz4, copy to a store),
`cedana dump process` for each compression, dumps into the cedanafs mount; restores from each,
checking the workload's checksum after every restore; bytes stored; peak memory. Prints a table
and writes bench/results/<timestamp>.json and latest.json. A figure whose command does not exist
yet is reported as "not available: <reason>"; any other failure makes the exit status non-zero.

    bench/run.py [--size 256M] [--reps 3] [--mix 0.3,0.3,0.4] [--only floor,cedana-way,...] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable as a package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import Params, Recorder, Run, check_availability, select_methods, size_timeout  # noqa: E402
from bench.methods import Env, all_methods  # noqa: E402
from bench.remote import remote_methods  # noqa: E402
from bench.procs import Cleanup, StepError, become_subreaper, mount_tmpfs, reap_orphans  # noqa: E402
from bench.report import SCHEMA_VERSION, format_header, format_table, machine_info, write_results  # noqa: E402
from bench.workload import parse_size  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
DEFAULTS = {"size": "256M", "reps": 3}
SMOKE_DEFAULTS = {"size": "16M", "reps": 1}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", help="workload memory, e.g. 256M, 1G (default 256M; smoke 16M); several"
                                       " sizes (1G,4G) run one after the other, then a table across sizes")
    parser.add_argument("--reps", type=int, help="repetitions of every figure (default 3; smoke 1)")
    parser.add_argument("--mix", default="0.3,0.3,0.4", help="fractions of zeros,text,random memory")
    parser.add_argument("--change", default="256K", help="memory changed between 1st and 2nd checkpoint")
    parser.add_argument("--only", help="comma-separated method prefixes: floor, cedana-way, cedana-gzip, mount, "
                                       "s3 (remote methods, not run by default)...")
    parser.add_argument("--smoke", action="store_true", help="tiny and quick: is the harness still working?")
    parser.add_argument("--workdir", default="/var/tmp", help="where dumps and stores go (a local disk)")
    parser.add_argument("--results-dir", default=str(BENCH_DIR / "results"))
    args = parser.parse_args(argv)
    for key, value in (SMOKE_DEFAULTS if args.smoke else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    for size in args.size.split(","):
        parse_size(size)
    return args


def find_criu() -> str | None:
    for candidate in (os.environ.get("CRIU"), "/usr/local/sbin/criu", shutil.which("criu")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def find_cedana() -> str | None:
    beside = Path(sys.executable).parent / "cedana"
    return str(beside) if beside.exists() else shutil.which("cedana")


def cedana_env(workdir: Path, criu: str) -> dict:
    """Run cedana with a config of its own, so /etc/cedana or a running daemon cannot change results."""
    (workdir / "config").mkdir()
    (workdir / "tmp").mkdir()
    # TMPDIR: temporary dirs cedana makes (e.g. lazy restore work dirs) go away with the work dir.
    return {**os.environ, "TMPDIR": str(workdir / "tmp"), "CEDANA_CONFIG_DIR": str(workdir / "config"), "CEDANA_CRIU_BINARY_PATH": criu,
            "CEDANA_DB_PATH": str(workdir / "cedana.db"), "CEDANA_CACHE_DIR": str(workdir / "cache"),
            "CEDANA_ADDRESS": str(workdir / "no-daemon.sock")}


def make_env(args: argparse.Namespace, cleanup: Cleanup, criu: str) -> Env:
    workdir = Path(tempfile.mkdtemp(prefix="cedanafs-bench-", dir=args.workdir))
    cleanup.add(f"remove {workdir}", lambda: remove_workdir(workdir))
    floor_dir = workdir / "floor-tmpfs"
    mount_tmpfs(floor_dir, cleanup)
    store_dir = workdir / "store"
    store_dir.mkdir()
    return Env(criu=criu, cedana=find_cedana(), workdir=workdir, floor_dir=floor_dir, store_dir=store_dir,
               cleanup=cleanup, timeout=size_timeout(args.size), cmd_env=cedana_env(workdir, criu))


def remove_workdir(workdir: Path) -> None:
    """Remove the work directory, unless something is still mounted under it (never rm through a mount)."""
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    if any(m == str(workdir) or m.startswith(f"{workdir}/") for m in mounts):
        print(f"bench: leaving {workdir}: still mounted below it", file=sys.stderr)
        return
    shutil.rmtree(workdir, ignore_errors=True)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def measure(args: argparse.Namespace, cleanup: Cleanup, rec: Recorder) -> list[str]:
    """Run every available figure; returns errors that stopped the run as a whole."""
    criu = find_criu()
    if criu is None:
        return ["no criu binary found (set CRIU=/path/to/criu)"]
    env = make_env(args, cleanup, criu)
    only = [w.strip() for w in args.only.split(",")] if args.only else None
    active = check_availability(select_methods(all_methods() + remote_methods(), only), env, rec)
    params = Params(size=args.size, reps=args.reps, mix=args.mix, change=args.change, smoke=args.smoke)
    try:
        Run(params, env, active, rec, log).all()
    except StepError as err:
        return [str(err)]
    return []


def results_document(args, started: float, rec: Recorder, errors: list[str], figures: list[dict],
                     load_start: list[float] | None = None) -> dict:
    failed = [f["id"] for f in figures if f["status"] == "failed"]
    return {
        "schema": SCHEMA_VERSION,
        "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
        "duration_s": round(time.time() - started, 1),
        "params": {"size": args.size, "size_bytes": parse_size(args.size), "reps": args.reps, "mix": args.mix,
                   "change": args.change, "only": args.only, "smoke": args.smoke},
        "machine": machine_info(find_criu()),
        # The machine is shared: how busy it was says how far to trust the figures.
        "load_average": {"start": load_start, "end": list(os.getloadavg())},
        "ok": not errors and not failed,
        "errors": errors,
        "failed": failed,
        "not_available": {f["id"]: f["reason"] for f in figures if f["status"] == "not available"},
        "figures": figures,
    }


def interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if "," in args.size:
        return main_sizes(args, argv or sys.argv[1:])
    started, load_start = time.time(), list(os.getloadavg())
    cleanup, rec = Cleanup(), Recorder()
    # Ctrl-C, and SIGTERM (e.g. from a CI timeout), must clean up; SIGINT explicitly, because a
    # shell starting us in the background would have left it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupted)
    become_subreaper()
    compile_cedanafs()
    log(f"size {args.size}, {args.reps} repetition(s), mix {args.mix}{' (smoke)' if args.smoke else ''}")
    try:
        errors = measure(args, cleanup, rec)
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        errors = ["interrupted"]
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave mounts behind
        cleanup.run_all()
        reap_orphans()
        signal.signal(signal.SIGINT, signal.default_int_handler)
    figures = rec.figures()
    doc = results_document(args, started, rec, errors, figures, load_start)
    print(format_header(doc) + "\n")
    print(format_table(figures))
    stamp = datetime.fromtimestamp(started).strftime("%Y%m%dT%H%M%S")
    path = write_results(doc, Path(args.results_dir), stamp, args.smoke)
    print(f"\nresults: {path}" + "".join(f"\nerror: {e}" for e in errors))
    for fid in doc["failed"]:
        print(f"FAILED {fid}: {next(f['reason'] for f in figures if f['id'] == fid)}")
    return 0 if doc["ok"] else 1


# The figures that show how time-to-run and memory grow with the process (issue 6: lazy
# time-to-run should stay nearly flat from 1 GiB to 4 GiB).
SIZE_TABLE = ("dump/s3-mount", "dump/s3-cedana-way-lz4", "restore/s3-mount", "restore/s3-mount-lazy:run",
              "restore/s3-mount-lazy:all", "restore/s3-cedana-way-lz4", "memory/s3-mount-daemon",
              "dump/mount", "restore/mount", "restore/mount-lazy:run", "restore/mount-lazy:all",
              "memory/mount-daemon", "dump/floor", "restore/floor")


def compile_cedanafs() -> None:
    """Byte-compile cedanafs once, as installing it does: in a source checkout with
    PYTHONDONTWRITEBYTECODE set, every `cedana` command would otherwise compile the modules it
    imports (0.1-0.2 s here), a cost no installed copy pays."""
    import compileall

    try:
        import cedanafs
    except ImportError:
        return
    compileall.compile_dir(os.path.dirname(cedanafs.__file__), quiet=1)


def main_sizes(args: argparse.Namespace, argv: list[str]) -> int:
    """One whole run per size (each writes its own JSON), then one table of the key figures by size."""
    sizes = args.size.split(",")
    docs, code = {}, 0
    for size in sizes:
        sub = [a for a in argv]
        i = next(i for i, a in enumerate(sub) if a == "--size" or a.startswith("--size="))
        sub[i:i + (1 if "=" in sub[i] else 2)] = ["--size", size]
        log(f"=== size {size} ===")
        code = max(code, main(sub))
        latest = Path(args.results_dir) / ("smoke-latest.json" if args.smoke else "latest.json")
        docs[size] = json.loads(latest.read_text())
    medians = {size: {f["id"]: f for f in doc["figures"]} for size, doc in docs.items()}
    print("\nacross sizes (medians):")
    print("figure".ljust(30) + "".join(size.rjust(14) for size in sizes))
    for fid in SIZE_TABLE:
        cells = [medians[size].get(fid) for size in sizes]
        if not any(c and c.get("median") is not None for c in cells):
            continue
        print(fid.ljust(30) + "".join(_cell(c).rjust(14) for c in cells))
    combined = {"sizes": sizes, "runs": {size: doc for size, doc in docs.items()}}
    path = Path(args.results_dir) / f"{'smoke-' if args.smoke else ''}sizes-latest.json"
    path.write_text(json.dumps(combined, indent=2) + "\n")
    print(f"\nresults across sizes: {path}")
    return code


def _cell(fig: dict | None) -> str:
    if not fig or fig.get("median") is None:
        return "-"
    value = fig["median"]
    if fig.get("unit") == "B":
        return f"{value / (1 << 20):.0f} MiB"
    return f"{value:.2f} s" if fig.get("unit") == "s" else f"{value:g}"


if __name__ == "__main__":
    sys.exit(main())
