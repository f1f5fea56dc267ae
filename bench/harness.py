"""One benchmark run: every available method, several repetitions, on the same workload.

A repetition starts a fresh workload (same seed, so the same memory and checksum every time),
dumps it with each method while it keeps running, changes it a little (SIGUSR2) and takes the
second checkpoints, then kills it and restores each checkpoint in turn, checking after every
restore that the restored process computes the checksum its memory had when it was dumped.
"""

from __future__ import annotations

import shutil
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .methods import Artifact, Env, Method, MountDump, Spec, criu_dump
from .procs import HeartbeatWatch, StepError, Workload, is_running, kill_restored
from .stats import ratio, summarize
from .workload import parse_size


@dataclass
class Timings:
    """Of one restore, in seconds from its start."""
    command: float  # the restore command returned
    running: float  # the restored process ran again (its first heartbeat)
    memory_back: float  # no lazy-pages daemon left (= about `command` for eager restores)
    checksum_pass: float  # how long the restored process took to checksum all its memory


@dataclass
class Params:
    size: str
    reps: int
    mix: str
    change: str = "256K"
    smoke: bool = False


class Recorder:
    """Samples, checksum checks and errors per figure; turns them into the figures of the report."""

    def __init__(self) -> None:
        self.specs: dict[str, Spec] = {}
        self.samples: dict[str, list[float]] = defaultdict(list)
        self.checks: dict[str, list[bool]] = defaultdict(list)
        self.errors: dict[str, list[str]] = defaultdict(list)
        self.unavailable: dict[str, str] = {}
        self.extra: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))

    def declare(self, specs: list[Spec]) -> None:
        for spec in specs:
            self.specs.setdefault(spec.id, spec)

    def not_available(self, ids: list[str], reason: str) -> None:
        for fid in ids:
            self.unavailable[fid] = reason

    def sample(self, fid: str, value: float, replace: bool = False) -> None:
        """Add a sample (replace: instead of this repetition's last one)."""
        if replace and self.samples[fid]:
            self.samples[fid][-1] = value
        else:
            self.samples[fid].append(value)

    def check(self, fid: str, ok: bool) -> None:
        self.checks[fid].append(ok)

    def error(self, ids: list[str], message: str) -> None:
        for fid in ids:
            self.errors[fid].append(message)

    def note(self, fid: str, key: str, value: object) -> None:
        self.extra[fid][key].append(value)

    def figure(self, spec: Spec) -> dict:
        fid = spec.id
        checks = self.checks.get(fid, [])
        fig = {"id": fid, "kind": spec.kind, "label": spec.label, "unit": spec.unit, "floor": spec.floor,
               **summarize(self.samples.get(fid, [])), "samples": self.samples.get(fid, []),
               "checksum": ({"ok": sum(checks), "failed": len(checks) - sum(checks)} if checks else None),
               "errors": self.errors.get(fid, []), **{k: v for k, v in self.extra.get(fid, {}).items()}}
        fig["status"], fig["reason"] = self.status(fid, checks)
        return fig

    def status(self, fid: str, checks: list[bool]) -> tuple[str, str | None]:
        if fid in self.unavailable:
            return "not available", self.unavailable[fid]
        if self.errors.get(fid):
            return "failed", self.errors[fid][0]
        if not all(checks):
            return "failed", "checksum after restore differs from the dumped process's"
        if self.samples.get(fid):
            return "ok", None
        return "failed", "not measured"

    def figures(self) -> list[dict]:
        figs = [self.figure(spec) for spec in self.specs.values()]
        medians = {f["id"]: f["median"] for f in figs}
        for fig in figs:
            fig["ratio_to_floor"] = ratio(fig["median"], medians.get(fig["floor"])) if fig["floor"] else None
        return figs


def select_methods(methods: list[Method], only: list[str] | None) -> list[Method]:
    """--only keeps methods whose key starts with one of the words; the floor is always kept.

    Without --only, the remote (s3-*) methods are left out: through moto they take minutes per GiB.
    """
    if not only:
        return [m for m in methods if not m.key.startswith("s3-")]
    return [m for m in methods if m.key == "floor" or any(m.key.startswith(word) for word in only)]


def check_availability(methods: list[Method], env: Env, rec: Recorder) -> list[Method]:
    """Declare every figure; mark those whose commands do not exist yet; return what can run."""
    active = []
    for method in methods:
        rec.declare(method.specs())
        reason = method.unavailable(env)
        if reason:
            rec.not_available([s.id for s in method.specs()], reason)
            continue
        for mode in method.restore_modes():
            why = method.mode_unavailable(env, mode)
            if why:
                rec.not_available([s.id for s in method.restore_specs(mode)], why)
        active.append(method)
    return active


def size_timeout(size: str) -> float:
    """Generous per-step time limit: a step that takes longer is stuck, not slow."""
    return 120.0 + 240.0 * parse_size(size) / (1 << 30)


class Run:
    """The repetitions of one benchmark run."""

    def __init__(self, params: Params, env: Env, active: list[Method], rec: Recorder,
                 log: Callable[[str], None]):
        self.params, self.env, self.active, self.rec, self.log = params, env, active, rec, log
        self.timeout = size_timeout(params.size)
        self.workload = Workload(params.size, params.mix, env.workdir / "state.json", params.change)
        self.checksums: dict[str, str] = {}
        self.mem_peaks: dict[str, int] = defaultdict(int)
        self.artifacts: list[Artifact] = []

    def all(self) -> None:
        for rep in range(self.params.reps):
            self.log(f"repetition {rep + 1}/{self.params.reps}")
            self.repetition(rep)

    def repetition(self, rep: int) -> None:
        self.mem_peaks.clear()
        self.start_workload()
        self.warm_up(rep)
        started = [m for m in self.active if self.begin(m, rep)]
        try:
            arts = self.dumps(started, rep)
            self.workload.stop()
            for method in started:
                self.restores(method, arts.get(method.key), rep)
        finally:
            self.workload.stop()
            self.end(started)
            self.record_memory(started)
            self.remove_checkpoints()

    def start_workload(self) -> None:
        state = self.workload.start(self.env.cleanup, self.timeout)
        first = self.checksums.setdefault("first", state["checksum"])
        if state["checksum"] != first:  # same seed: anything else means the workload itself is broken
            raise StepError("the workload's checksum changed between repetitions")

    def warm_up(self, rep: int) -> None:
        """One untimed raw dump first: the first dump of a fresh process pays one-off costs (page
        tables, CRIU's own start) that would otherwise all land on whichever method runs first."""
        images = self.env.floor_dir / f"warm-up-{rep}"
        try:
            criu_dump(self.env, self.workload.pid, images)
        finally:
            shutil.rmtree(images, ignore_errors=True)

    def begin(self, method: Method, rep: int) -> bool:
        try:
            method.begin_rep(self.env, rep)
            return True
        except (StepError, OSError) as err:
            self.rec.error([s.id for s in method.specs()], f"setup: {err}")
            return False

    def dumps(self, methods: list[Method], rep: int) -> dict[str, Artifact]:
        arts: dict[str, Artifact] = {}
        for method in methods:
            art = self.dump(method, rep, second=False)
            if art:
                arts[method.key] = art
        self.checksums["second"] = self.workload.change(self.timeout)["checksum"]
        for method in methods:
            if method.has_second and method.key in arts:
                self.dump(method, rep, second=True)
        return arts

    def dump(self, method: Method, rep: int, second: bool) -> Artifact | None:
        suffix = ":second" if second else ""
        checksum = self.checksums["second" if second else "first"]
        if not is_running(self.workload.pid):
            self.log("  the workload died; starting it again")
            self.workload.stop()
            self.start_workload()
        self.log(f"  dump {method.key}{' (2nd)' if second else ''}")
        self.workload.longest_gap()  # a new measurement starts now
        cpu_before = method.server_cpu()
        start = time.perf_counter()
        try:
            art = method.dump(self.env, self.workload.pid, rep, checksum, second=second)
        except (StepError, OSError) as err:
            self.rec.error([f"dump/{method.key}{suffix}", f"bytes/{method.key}{suffix}"], str(err))
            self.log(f"    failed: {err}")
            return None
        self.rec.sample(f"dump/{method.key}{suffix}", time.perf_counter() - start)
        frozen = self.workload.longest_gap()
        if frozen is not None and f"frozen/{method.key}{suffix}" in self.rec.specs:
            self.rec.sample(f"frozen/{method.key}{suffix}", frozen)
        cpu_after = method.server_cpu()
        if cpu_before is not None and cpu_after is not None and art.image_bytes and not second:
            self.rec.sample(f"cpu/{method.key}", (cpu_after - cpu_before) / (art.image_bytes / (1 << 30)))
        self.rec.sample(f"bytes/{method.key}{suffix}", art.nbytes)
        self.settle(method, art, suffix, cpu_before)
        self.note_memory(method, art.peak_rss)
        self.artifacts.append(art)
        try:
            method.after_dump(self.env, art, second)
        except OSError as err:
            self.rec.error([f"restore/{method.key}"], f"after the dump: {err}")
        return art

    def settle(self, method: Method, art: Artifact, suffix: str, cpu_before: float | None) -> None:
        """Untimed: wait for what the store does after the commit (compressing the new chunks), then
        record how long that took, the bytes stored once done, and the CPU including it."""
        ids = [f"settle/{method.key}{suffix}"] + ([] if suffix else [f"bytes/{method.key}:at-commit",
                                                                     f"cpu/{method.key}:with-compaction"])
        try:
            settled = method.settle(self.env)
        except (StepError, OSError) as err:
            self.rec.error(ids, str(err))
            return
        if settled is None:
            for fid in ids:
                if fid in self.rec.specs:
                    self.rec.unavailable.setdefault(fid, "this store compresses chunks before storing them")
            return
        waited, nbytes = settled
        self.rec.sample(f"settle/{method.key}{suffix}", waited)
        if not suffix:
            self.rec.sample(f"bytes/{method.key}:at-commit", art.nbytes)
            cpu_after = method.server_cpu()
            if cpu_before is not None and cpu_after is not None and art.image_bytes:
                self.rec.sample(f"cpu/{method.key}:with-compaction",
                                (cpu_after - cpu_before) / (art.image_bytes / (1 << 30)))
        self.rec.sample(f"bytes/{method.key}{suffix}", nbytes, replace=True)

    def restores(self, method: Method, art: Artifact | None, rep: int) -> None:
        for mode in method.restore_modes():
            ids = [s.id for s in method.restore_specs(mode)]
            if any(fid in self.rec.unavailable for fid in ids):
                continue
            if art is None:
                self.rec.error(ids, "no checkpoint to restore: its dump failed")
                continue
            try:
                method.before_restore(self.env, rep, mode)
            except (StepError, OSError) as err:
                self.rec.error(ids, f"before the restore: {err}")
                continue
            self.restore(method, art, mode, ids)

    def restore(self, method: Method, art: Artifact, mode: str, ids: list[str]) -> None:
        self.log(f"  restore {method.key} ({mode})")
        scratch = self.env.workdir / "scratch"
        token = self.env.cleanup.add(f"kill restored {art.pid}", lambda: kill_restored(art.pid))
        beat = HeartbeatWatch(self.workload.heartbeat_path)
        start = time.perf_counter()
        try:
            result = method.restore(self.env, art, mode, scratch)
            returned = time.perf_counter()
            method.wait_memory_back(self.env, art, mode)
            memory_back = time.perf_counter()
            first_beat = beat.wait(self.timeout)
            state, verify_s = self.workload.checksum_now(art.pid, self.timeout)
        except (StepError, OSError) as err:
            self.rec.error(ids, str(err))
            self.log(f"    failed: {err}")
            return
        finally:
            beat.stop()
            self.env.cleanup.run(token)
            shutil.rmtree(scratch, ignore_errors=True)
        if first_beat is None:
            self.rec.error(ids, "the restored process never ran (no heartbeat)")
            return
        times = Timings(command=returned - start, running=first_beat - start, memory_back=memory_back - start,
                        checksum_pass=verify_s)
        self.record_restore(method, ids, art, result, state, times)

    def record_restore(self, method: Method, ids: list[str], art: Artifact, result, state: dict,
                       times: "Timings") -> None:
        ok = state["checksum"] == art.checksum
        if len(ids) > 1:
            # Lazy: the process runs again before its memory is back (the first heartbeat), and its
            # memory is back when the lazy-pages daemon has exited (or the command returned, if later).
            self.rec.sample(ids[0], times.running)
            self.rec.sample(ids[1], max(times.memory_back, times.command))
        else:
            # Eager: a restore is done when the command has returned with the process running.
            self.rec.sample(ids[0], times.command)
        for fid in ids:
            self.rec.check(fid, ok)
        for key, value in (("command_s", times.command), ("first_heartbeat_s", times.running),
                           ("checksum_pass_s", times.checksum_pass)):
            self.rec.note(ids[0], key, value)
        self.note_memory(method, result.peak_rss if result else {})
        if not ok:
            self.log(f"    CHECKSUM MISMATCH: {state['checksum']} != {art.checksum}")

    def note_memory(self, method: Method, peak_rss: dict[str, int]) -> None:
        if "cedanafs" in peak_rss:
            self.mem_peaks[method.key] = max(self.mem_peaks[method.key], peak_rss["cedanafs"])

    def end(self, methods: list[Method]) -> None:
        for method in methods:
            try:
                peak = method.end_rep(self.env)
            except (StepError, OSError) as err:
                self.rec.error([s.id for s in method.specs()], f"teardown: {err}")
                continue
            if isinstance(method, MountDump) and peak:
                self.rec.sample(f"memory/{method.key}-daemon", peak.get("cedanafs", max(peak.values())))

    def record_memory(self, methods: list[Method]) -> None:
        for method in methods:
            if method.memory_figure and self.mem_peaks.get(method.key):
                self.rec.sample(f"memory/{method.key}", self.mem_peaks[method.key])

    def remove_checkpoints(self) -> None:
        """Free the disk and tmpfs a repetition used (mount stores go with their method's end_rep)."""
        for art in self.artifacts:
            if not isinstance(art.path, Path):
                continue  # remote: the bucket goes away with its server
            if art.path.is_dir():
                shutil.rmtree(art.path, ignore_errors=True)
            elif art.path.exists() and not any(p.name.startswith("mnt-") for p in art.path.parents):
                art.path.unlink()
        self.artifacts = []
