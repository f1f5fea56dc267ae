"""The BLAKE3 of CRIU's pages images, taken while CRIU writes them, for an archive's B3SUMS.

A dump archive carries the BLAKE3 of each of its files (archive.py). Most of its bytes are in
`pages-<n>.img`, and CRIU, which holds the process frozen while it writes them, uses one core:
`PagesHasher` reads each pages image as it grows, on a thread of its own at SCHED_IDLE (it runs
only on a core nobody else wants, so CRIU never waits for it), and hashes it. A pages image is
final once a later one exists (CRIU dumps one process after the other) or CRIU has returned
(`criu_done()`: the thread then goes on at nice 10 while it is ahead of the archive, on what the
compression leaves idle, and at normal priority as soon as the archive catches up with it, so
on a busy machine it is never left to finish alone at the end). The archive writer takes these
digests (`digest()`) instead of hashing those files a second time.

The bytes hashed are the file's as read here; `digest()` is asked with the size the archive
wrote, and a file whose size differs (it changed after CRIU returned) fails the dump.
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
import time

from ..errors import CheckpointError
from ..priority import set_background, set_priority_of
from ..spool import PAGES, pages_images
from .sums import new_hasher

log = logging.getLogger(__name__)

_WINDOW = 8 << 20  # how much of a file is mapped at a time
_MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)  # its pages at once: cheaper than a fault each
_POLL = 0.002  # at the end of a growing file: how long to wait for more
_NICE_AHEAD = 10  # after CRIU, while the thread is ahead of the archive


class PagesHasher:
    """Hashes every pages image of `images_dir` in a background thread, while CRIU writes them.

    Use as a context manager around CRIU and the archive: leaving it stops the thread.
    """

    def __init__(self, images_dir: str):
        self._dir = images_dir
        self._criu_done = threading.Event()
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._done: dict[str, tuple[int, str]] = {}  # name -> (bytes hashed, hex digest)
        self._error: BaseException | None = None
        self._finished = False
        self._nice = 0
        self._progress = ("", 0)  # the file being hashed, and how far: one tuple, replaced whole
        self._thread = threading.Thread(target=self._run, name="pages-hash", daemon=True)

    def __enter__(self) -> "PagesHasher":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def criu_done(self) -> None:
        """CRIU returned: every file is final. The thread leaves SCHED_IDLE (set from here: beside
        the archive's busy threads it might not get to run to do it) for nice 10: while it is
        ahead of the archive, what is left is hashed on what the compression leaves idle (the
        archive's stored pages waiting for the disk, say); once the archive catches up with it
        (`reading()`) or asks for a digest, it runs at normal priority."""
        self._criu_done.set()
        self._set_nice(_NICE_AHEAD)

    def reading(self, name: str, upto: int) -> None:
        """The archive is about to read `name` up to `upto`: the thread goes to normal priority if
        that is past what it hashed, so it never lags far behind the archive (on a busy machine it
        would be left to finish alone at the end)."""
        if self._nice and PAGES.match(name) and self.hashed_upto(name) < upto:
            self._set_nice(0)

    def _set_nice(self, nice: int) -> None:
        if self._thread.native_id is not None and self._thread.is_alive() and self._nice != nice:
            self._nice = nice
            set_priority_of(self._thread.native_id, nice)

    def close(self) -> None:
        self._stop.set()
        self._criu_done.set()
        if self._thread.is_alive():
            self._thread.join()

    def covers(self, name: str) -> bool:
        """Whether `digest(name)` will answer (a pages image, and the thread not stopped by an error)."""
        return PAGES.match(name) is not None and self._error is None and not self._stop.is_set()

    def digest(self, name: str, size: int) -> str:
        """The BLAKE3 (hex) of `name`, once its `size` bytes are hashed (waits for the thread)."""
        self._set_nice(0)
        with self._changed:
            while name not in self._done and not self._finished:
                self._changed.wait()
        if name not in self._done:
            cause = f" ({self._error})" if self._error is not None else ""
            raise CheckpointError(f"could not hash {name} of {self._dir}{cause}")
        hashed, digest = self._done[name]
        if hashed != size:
            raise CheckpointError(f"{self._dir}/{name} changed while it was being archived"
                                  f" ({hashed} bytes hashed, {size} archived)")
        return digest

    def hashed_upto(self, name: str) -> int:
        """How many bytes of `name` are hashed so far (its first bytes: it is hashed in order)."""
        done = self._done.get(name)
        if done is not None:
            return done[0]
        current, hashed = self._progress
        return hashed if current == name else 0

    def _run(self) -> None:
        set_background(True)
        try:
            while (name := self._next()) is not None:
                result = self._hash(name)
                if result is None:
                    break
                with self._changed:
                    self._done[name] = result
                    self._changed.notify_all()
        except BaseException as exc:  # noqa: BLE001 - reported by digest()
            log.debug("hashing the pages images of %s stopped: %s", self._dir, exc)
            self._error = exc
        finally:
            set_background(False)
            with self._changed:
                self._finished = True
                self._changed.notify_all()

    def _next(self) -> str | None:
        """The next pages image not hashed yet, once it exists; None when there is none left."""
        while not self._stop.is_set():
            final = self._criu_done.is_set()  # before listing: a file listed after it is complete
            waiting = [n for n in pages_images(self._dir) if n not in self._done]
            if waiting:
                return waiting[0]
            if final:
                return None
            self._criu_done.wait(_POLL)
        return None

    def _final(self, name: str) -> bool:
        if self._criu_done.is_set():
            return True
        pages = pages_images(self._dir)
        return name in pages and pages.index(name) < len(pages) - 1

    def _hash(self, name: str) -> tuple[int, str] | None:
        """(bytes hashed, hex digest) of a file read to its final end; None if stopped first.

        What the file holds so far is mapped a window at a time (cheaper here than copying it out
        with read()); never past its current end, so CRIU's appending never meets a mapping."""
        hasher = new_hasher()
        hashed = 0  # a multiple of the page size until the file is final: where the next window starts
        final = False
        with open(os.path.join(self._dir, name), "rb", buffering=0) as f:
            while not self._stop.is_set():
                if self._criu_done.is_set():
                    set_background(False)  # CRIU is gone (criu_done() lifts it too, unless it came first)
                size = os.fstat(f.fileno()).st_size
                end = size if final else size - size % mmap.PAGESIZE
                if end > hashed:
                    length = min(end - hashed, _WINDOW)
                    with mmap.mmap(f.fileno(), length, _MAP_FLAGS, mmap.PROT_READ, offset=hashed) as window:
                        hasher.update(window)
                    hashed += length
                    self._progress = (name, hashed)  # after the unmapping: archive.py may free them now
                elif final:
                    break
                elif self._final(name):
                    final = True  # look once more: what was written before it became final
                else:
                    time.sleep(_POLL)
        return None if self._stop.is_set() else (hashed, hasher.hexdigest())
