#!/usr/bin/env python3
"""A process that holds a chosen amount of memory and can report a checksum of it.

The memory is one anonymous mapping filled with zeros, text-like bytes and random bytes in
chosen proportions, so compression and dedup see something like a real job. Used by the
benchmarks and by the tests (it has no dependency on cedanafs).

    workload.py --size 256M --mix 0.3,0.3,0.4 --state /tmp/w.json

When filled it writes {"pid", "size", "checksum", "generation"} to --state (atomically). Then it
sleeps, counting ticks. SIGUSR1 makes it recompute the checksum and rewrite --state (so a restored
copy can prove its memory is intact); SIGUSR2 changes a small part of the memory (--change bytes)
and rewrites --state, to model a job that moved on a little between two checkpoints.

With --heartbeat FILE it also touches FILE's mtime at every tick (50 ms), so a benchmark can see
the moment a restored copy runs again. A touch (utimensat) holds no file descriptor, so a dump
can never catch the workload with that file open.

With --gaps FILE it ticks every 10 ms and keeps the longest gap between two ticks, as its own
monotonic clock sees it: how long it was frozen. SIGWINCH writes {"max_gap", "time"} to FILE
and starts a new measurement, so a benchmark brackets a dump with two SIGWINCHs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import mmap
import os
import random
import signal
import time

WORDS = (
    "the of and to in is that for it as with was on be by this are from at or an have not which "
    "checkpoint restore process memory page image kernel tensor epoch loss gradient batch model "
    "layer weight value error state socket file thread signal buffer cache chunk store node job"
).split()
BLOCK = 1 << 20


def parse_size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = text[-1] if text and text[-1] in "KMG" else ""
    return int(float(text[: len(text) - len(unit)]) * units[unit])


def text_block(rng: random.Random) -> bytes:
    out = bytearray()
    while len(out) < BLOCK:
        out += (" ".join(rng.choices(WORDS, k=64)) + ".\n").encode()
    return bytes(out[:BLOCK])


def fill(mem: mmap.mmap, size: int, mix: tuple[float, float, float], seed: int) -> None:
    rng = random.Random(seed)
    zeros_end = int(size * mix[0]) // BLOCK * BLOCK
    text_end = zeros_end + int(size * mix[1]) // BLOCK * BLOCK
    base = text_block(rng)
    for off in range(zeros_end, text_end, BLOCK):
        cut = rng.randrange(BLOCK)
        block = base[cut:] + base[:cut]
        mem[off : off + BLOCK] = block[: min(BLOCK, text_end - off)]
    for off in range(text_end, size, BLOCK):
        n = min(BLOCK, size - off)
        mem[off : off + n] = rng.randbytes(n)


def checksum(mem: mmap.mmap) -> str:
    return hashlib.blake2b(mem, digest_size=16).hexdigest()


class Workload:
    def __init__(self, args: argparse.Namespace):
        self.size = parse_size(args.size)
        self.state_path = args.state
        self.change = parse_size(args.change)
        self.heartbeat = getattr(args, "heartbeat", None)
        self.gaps = getattr(args, "gaps", None)
        self.tick = 0.01 if self.gaps else 0.05
        self.max_gap = 0.0
        self.generation = 0
        self.pending: list[int] = []
        # A mapping rather than bytes: page-aligned, and CRIU dumps it as ordinary anonymous memory.
        # MAP_PRIVATE, like a heap: Python's default for mmap(-1) is MAP_SHARED, which CRIU dumps as
        # shared memory (pages-1.img of shmem) and always restores eagerly, even with --lazy-pages.
        self.mem = mmap.mmap(-1, max(self.size, mmap.PAGESIZE), flags=mmap.MAP_PRIVATE)
        fill(self.mem, self.size, tuple(float(x) for x in args.mix.split(",")), args.seed)
        self.rng = random.Random(args.seed + 1)

    def write_state(self) -> None:
        state = {"pid": os.getpid(), "size": self.size, "checksum": checksum(self.mem),
                 "generation": self.generation, "time": time.time()}
        tmp = f"{self.state_path}.tmp"
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, self.state_path)

    def change_some(self) -> None:
        n = min(self.change, self.size)
        off = self.rng.randrange(0, max(1, self.size - n)) // mmap.PAGESIZE * mmap.PAGESIZE
        self.mem[off : off + n] = self.rng.randbytes(n)
        self.generation += 1

    def beat(self) -> None:
        if self.heartbeat:
            try:
                os.utime(self.heartbeat)
            except OSError:
                pass  # the benchmark may have removed it: nobody is watching

    def write_gaps(self) -> None:
        tmp = f"{self.gaps}.tmp"
        with open(tmp, "w") as f:
            json.dump({"max_gap": self.max_gap, "time": time.time()}, f)
        os.replace(tmp, self.gaps)
        self.max_gap = 0.0

    def run(self) -> None:
        for signum in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH):
            signal.signal(signum, lambda n, _: self.pending.append(n))
        self.write_state()
        last = time.monotonic()
        while True:
            time.sleep(self.tick)
            now = time.monotonic()
            self.max_gap, last = max(self.max_gap, now - last), now
            self.beat()
            while self.pending:
                signum = self.pending.pop(0)
                if signum == signal.SIGWINCH:
                    if self.gaps:
                        self.write_gaps()
                    continue
                if signum == signal.SIGUSR2:
                    self.change_some()
                self.write_state()
                last = time.monotonic()  # a checksum is work of our own, not a freeze


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="64M")
    parser.add_argument("--mix", default="0.3,0.3,0.4", help="fractions of zeros,text,random")
    parser.add_argument("--state", required=True, help="JSON file the checksum is written to")
    parser.add_argument("--change", default="256K", help="bytes SIGUSR2 rewrites")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--heartbeat", help="file whose mtime is touched every tick while running")
    parser.add_argument("--gaps", help="file SIGWINCH writes the longest gap between ticks to")
    Workload(parser.parse_args()).run()


if __name__ == "__main__":
    main()
