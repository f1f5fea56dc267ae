"""Measure chunking, dedup and compression on real checkpoint directories (used for docs/store.md).

    python -m bench.measure_chunking DIR1 DIR2 [DIR3 ...]

For each chunker it stores the directories one after the other into a simulated store (digests
only, nothing written) and prints the logical bytes, the bytes each checkpoint adds (compressed),
and the chunking speed. Small files (under the inline threshold) count as stored inline.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

from cedanafs.streamer import codecs
from cedanafs.streamer.chunker import ChunkerSpec
from cedanafs.streamer.chunkstore import digest_of
from cedanafs.streamer.files import INLINE_THRESHOLD


@dataclass
class Added:
    logical: int = 0
    plain_new: int = 0
    stored_new: int = 0
    chunks: int = 0
    new_chunks: int = 0
    seconds: float = 0.0


def _files(path: str) -> list[str]:
    return sorted(os.path.join(path, n) for n in os.listdir(path) if os.path.isfile(os.path.join(path, n)))


def store_dir(path: str, spec: ChunkerSpec, seen: set[str], codec: str) -> Added:
    out = Added()
    for name in _files(path):
        with open(name, "rb") as f:
            data = f.read()
        out.logical += len(data)
        if len(data) < INLINE_THRESHOLD:
            out.stored_new += len(data)
            continue
        t = time.perf_counter()
        chunker = spec.make()
        chunks = chunker.feed(data) + chunker.flush()
        out.seconds += time.perf_counter() - t
        for chunk in chunks:
            out.chunks += 1
            digest = digest_of(chunk)
            if digest in seen:
                continue
            seen.add(digest)
            out.new_chunks += 1
            out.plain_new += len(chunk)
            out.stored_new += len(codecs.encode(chunk, codec))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+")
    parser.add_argument("--codec", default="zstd")
    parser.add_argument("--sizes", default="262144,1048576")
    args = parser.parse_args(argv)
    print(f"{'chunker':<14}{'ckpt':>5}{'logical MiB':>13}{'added MiB':>11}{'added %':>9}"
          f"{'chunks':>8}{'new':>6}{'MiB/s':>8}")
    for size in (int(s) for s in args.sizes.split(",")):
        for kind in ("fixed", "cdc"):
            spec = ChunkerSpec.for_size(kind, size)
            seen: set[str] = set()
            for i, path in enumerate(args.dirs, 1):
                a = store_dir(path, spec, seen, args.codec)
                speed = (a.logical / (1 << 20)) / a.seconds if a.seconds else 0.0
                print(f"{kind + ' ' + str(size >> 10) + 'K':<14}{i:>5}{a.logical / (1 << 20):>13.1f}"
                      f"{a.stored_new / (1 << 20):>11.2f}{100 * a.stored_new / max(1, a.logical):>8.1f}%"
                      f"{a.chunks:>8}{a.new_chunks:>6}{speed:>8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
