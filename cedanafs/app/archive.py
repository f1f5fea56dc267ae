"""The seed's checkpoint archive formats: a flat tar of the images dir, optionally compressed.

Archives are written and read as streams (tar's `w` mode over a compressor that is never asked
to seek, `r|` to read), so a compressed dump never needs an uncompressed copy beside it and a
remote archive is never staged whole. gzip and zlib are compressed on all cores (deflate.py)
while the writing thread maps and hashes the images. The format of an archive is taken from its
magic bytes, never from its name alone.

Integrity: every compressed format carries its own check (gzip's CRC, zlib's Adler-32, lz4 and
zstd frames written with content checksums), and every archive ends with B3SUMS, the BLAKE3 of
each file in it (`b3sum -c` format), announced by a pax global header at its start (sums.py;
archives of earlier versions end with SHA256SUMS, still verified). A restore reads the stream to
its very end, so each of these is checked before CRIU sees a byte.
"""

from __future__ import annotations

import io
import logging
import mmap
import os
import tarfile
import weakref
import zlib
from contextlib import contextmanager
from typing import BinaryIO, Callable, Iterator

from isal import igzip_threaded, isal_zlib

from ..errors import CheckpointError, UsageError
from ..fsio import punch_hole
from . import sums as sums_format
from .deflate import BLOCK, ParallelDeflateWriter

# gzip and zlib archives go through ISA-L (python-isal): the same formats, written and read
# many times faster than zlib's level 6 (level 1 of igzip: ~260 MB/s of text-like pages and
# ~690 MB/s of random ones per core here, against ~27 MB/s). Levels 0 and 2 cost the same here.
GZIP_LEVEL = 1

log = logging.getLogger(__name__)

SUMS_NAME = sums_format.WRITTEN.member
SUMS_NAMES = sums_format.MEMBERS  # the sums files of any version's archives
_PAX_INTEGRITY = "CEDANA.integrity"  # pax global header key: the algorithm of the sums the archive ends with
SUFFIXES = {"tar": ".tar", "gzip": ".tar.gz", "lz4": ".tar.lz4", "zlib": ".tar.zlib", "zstd": ".tar.zst"}
_SNIFF = 512 + 8
_STREAM_BLOCK = 1 << 20  # what a streaming read of an archive asks of its decompressor at a time
_MAP_FROM = 1 << 20  # files (or windows of them) this large are mapped, smaller ones read
_MAP_WINDOW = 8 * BLOCK  # how much of a file is mapped at a time
_MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)  # a window's pages at once, not a fault each


def archive_name(name: str, compression: str) -> str:
    """The file or directory name a dump with this compression produces."""
    return name if compression == "none" else name + SUFFIXES[compression]


def format_from_name(path: str) -> str | None:
    for fmt, suffix in sorted(SUFFIXES.items(), key=lambda kv: -len(kv[1])):
        if path.endswith(suffix):
            return fmt
    if path.endswith(".tgz"):
        return "gzip"
    return None


def sniff_format(head: bytes) -> str | None:
    """Compression of a stream from its first bytes; None if unknown."""
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:4] == b"\x04\x22\x4d\x18":
        return "lz4"
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    if len(head) >= 2 and head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0:
        return "zlib"
    if head[257:262] == b"ustar":
        return "tar"
    return None


class _ZlibReader(io.RawIOBase):
    def __init__(self, src: BinaryIO):
        self._src = src
        self._z = isal_zlib.decompressobj()
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        while not self._buf and not self._z.eof:
            raw = self._src.read(1 << 16)
            if not raw:
                raise EOFError("zlib stream ended before its end marker")
            self._buf = self._z.decompress(raw)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


class _Prefixed(io.RawIOBase):
    """Puts back the bytes read to sniff the format in front of a non-seekable stream."""

    def __init__(self, head: bytes, rest: BinaryIO):
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        readinto = getattr(self._rest, "readinto", None)
        if readinto is not None:
            return readinto(b)
        data = self._rest.read(len(b))
        b[: len(data)] = data
        return len(data)


def _compressor(out: BinaryIO, compression: str) -> BinaryIO:
    if compression == "tar":
        return out
    if compression in ("gzip", "zlib"):
        return ParallelDeflateWriter(out, compression, GZIP_LEVEL)
    if compression == "lz4":
        import lz4.frame

        return lz4.frame.LZ4FrameFile(out, mode="wb", block_checksum=True, content_checksum=True)
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=3, threads=-1, write_checksum=True).stream_writer(out, closefd=False)
    raise UsageError(f"unknown compression {compression!r}")


def _decompressor(src: BinaryIO, fmt: str) -> BinaryIO:
    if fmt == "tar":
        return src
    if fmt == "gzip":  # inflated on a thread of its own, beside the tar reading, hashing and writing
        return igzip_threaded.open(src, "rb", threads=1, block_size=_STREAM_BLOCK)
    if fmt == "lz4":
        import lz4.frame

        return lz4.frame.LZ4FrameFile(src, mode="rb")
    if fmt == "zlib":
        return io.BufferedReader(_ZlibReader(src), buffer_size=1 << 20)
    if fmt == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(src, read_across_frames=True)
    raise CheckpointError(f"unknown archive format {fmt!r}")


class _Sink:
    """What tarfile writes to: the compressor, with the position tarfile's "w" mode asks for once."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self._pos = 0

    def write(self, data) -> int:
        self._stream.write(data)
        self._pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self._pos


class _Reclaim:
    """Frees the pages of the files being archived behind the archive, when they go once archived
    (a spool): each mapped window's range is punched out of its file once no view of it is left
    (its blocks are compressed and written). Freeing them as it goes costs what removing the files
    at the end would, but not at the end."""

    def __init__(self) -> None:
        self._pending: list[tuple[int, int, int, weakref.ref]] = []
        self._fds: list[int] = []
        self._broken = False

    def opened(self, path: str) -> int:
        """An fd to punch `path` through; -1 (nothing freed early) where it cannot be opened so."""
        try:
            fd = os.open(path, os.O_WRONLY)
        except OSError as exc:
            log.debug("%s is not freed as it is archived: %s", path, exc)
            return -1
        self._fds.append(fd)
        return fd

    def mapped(self, fd: int, start: int, mapping: mmap.mmap) -> None:
        if fd >= 0:
            self._pending.append((fd, start, start + len(mapping), weakref.ref(mapping)))
        self.run()

    def run(self) -> None:
        keep = []
        for fd, start, end, mapping in self._pending:
            if self._broken or mapping() is not None:
                keep.append((fd, start, end, mapping))
            elif not punch_hole(fd, start, end - start):
                self._broken = True  # not on this filesystem: the files go whole at the end
        self._pending = [] if self._broken else keep

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)


class _MappedImage:
    """A regular file tarfile reads through once, hashed on the way.

    A large file is mapped a window at a time and read as memoryviews of the mapping: its bytes
    go from the page cache to the hash and to the compressor without a copy (tarfile only takes
    len() of what read() returns and writes it on). A window is unmapped once nothing holds a
    view of it any more, so a large image never sits in this process's memory whole.
    """

    def __init__(self, path: str, size: int, reclaim: _Reclaim | None = None):
        self.hasher = sums_format.WRITTEN.new()
        self._file = open(path, "rb")
        self._reclaim = reclaim
        self._reclaim_fd = reclaim.opened(path) if reclaim is not None and size >= _MAP_FROM else -1
        self._size = size
        self._pos = 0
        self._base = 0
        self._window = memoryview(b"")
        if os.fstat(self._file.fileno()).st_size != size:
            self.close()
            raise CheckpointError(f"{path} changed while it was being archived")

    def read(self, n: int) -> memoryview | bytes:
        parts = []
        while n > 0 and self._pos < self._size:
            start = self._pos - self._base
            if start >= len(self._window):
                self._map(self._pos)
                start = 0
            chunk = self._window[start:start + n]
            self._pos += len(chunk)
            n -= len(chunk)
            self.hasher.update(chunk)
            parts.append(chunk)
        # One view, unless the read straddles two windows (tarfile reads aligned blocks: never).
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _map(self, pos: int) -> None:
        length = min(_MAP_WINDOW, self._size - pos)
        self._base = pos
        if length < _MAP_FROM:
            self._window = memoryview(os.pread(self._file.fileno(), length, pos))
            return
        mapping = mmap.mmap(self._file.fileno(), length, _MAP_FLAGS, mmap.PROT_READ, offset=pos)
        self._window = memoryview(mapping)
        if self._reclaim is not None:
            self._reclaim.mapped(self._reclaim_fd, pos, mapping)

    def close(self) -> None:
        self._window = memoryview(b"")  # the mapping goes with the last view of it
        self._file.close()


def _add_hashed(tar: tarfile.TarFile, path: str, arcname: str, reclaim: _Reclaim | None) -> str | None:
    """Add one entry; returns the digest of a regular file's bytes (None for anything else)."""
    info = tar.gettarinfo(path, arcname=arcname)
    if not info.isfile():
        tar.add(path, arcname=arcname, recursive=True)
        return None
    image = _MappedImage(path, info.size, reclaim=reclaim)
    try:
        tar.addfile(info, image)  # type: ignore[arg-type]
    finally:
        image.close()
    return image.hasher.hexdigest()


def _add_sums(tar: tarfile.TarFile, sums: dict[str, str]) -> None:
    text = "".join(f"{digest}  {name}\n" for name, digest in sums.items()).encode()
    info = tarfile.TarInfo(SUMS_NAME)
    info.size, info.mode = len(text), 0o600
    tar.addfile(info, io.BytesIO(text))


def write_archive(src_dir: str, out: BinaryIO, compression: str, consume: bool = False) -> None:
    """Stream a flat tar of src_dir's files, compressed, into out; B3SUMS last.

    gzip and zlib are compressed on all cores (deflate.py) while this thread reads and hashes
    (BLAKE3: ~0.2 CPU-s per GiB; hashing beside CRIU instead lengthened the freeze, measured).
    With consume, the files' blocks are freed as they are archived (they read as zeros after):
    for a source that is removed once archived, whether or not that succeeds.
    """
    stream = _compressor(out, compression)
    sums: dict[str, str] = {}
    reclaim = _Reclaim() if consume else None
    try:
        with tarfile.open(fileobj=_Sink(stream), mode="w", format=tarfile.PAX_FORMAT,  # type: ignore[call-overload]
                          pax_headers={_PAX_INTEGRITY: sums_format.WRITTEN.algorithm}, copybufsize=BLOCK) as tar:
            for name in sorted(os.listdir(src_dir)):
                if name in SUMS_NAMES:
                    continue
                digest = _add_hashed(tar, os.path.join(src_dir, name), name, reclaim)
                if digest is not None:
                    sums[name] = digest
            _add_sums(tar, sums)
    except BaseException:
        if stream is not out:
            getattr(stream, "abort", stream.close)()  # a deflate writer's threads stop; nothing more is written
        raise
    else:
        if stream is not out:
            stream.close()
    finally:
        if reclaim is not None:
            reclaim.run()  # what the end of the stream let go of
            reclaim.close()


class CorruptArchive(CheckpointError):
    """A checkpoint archive failed an integrity check; nothing of it may be restored."""


def _drain(stream: BinaryIO) -> None:
    """Read a decompressor to its end: that is where gzip, zlib, lz4 and zstd check their sums."""
    while stream.read(1 << 20):
        pass


# Extraction filters came in Python 3.11.4; Debian 12's python3 is 3.11.2.
_FILTER_ERRORS: tuple = (tarfile.FilterError,) if hasattr(tarfile, "FilterError") else ()


def extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: str, label: str) -> None:
    """Extract a member the caller has checked (no absolute path, no `..`, no link out of dest, no
    device), under tarfile's "data" filter rules: owners are not restored, and a file loses its
    set-id, sticky and group/other write bits and stays readable and writable by its owner. Where
    Python has no filters, those rules are applied here. A member the filter refuses raises
    CheckpointError, naming the archive (`label`)."""
    if _FILTER_ERRORS:
        try:
            tar.extract(member, dest, filter="data")
        except _FILTER_ERRORS as exc:
            raise CheckpointError(f"{label}: unsafe archive member ({exc})") from None
        return
    tar.extract(member, dest, set_attrs=False)
    if member.isfile() or member.islnk():
        mode = member.mode & 0o755
        if not mode & 0o100:
            mode &= ~0o111
        path = os.path.join(dest, member.name)
        os.chmod(path, mode | 0o600)
        os.utime(path, (member.mtime, member.mtime))


@contextmanager
def open_tar_stream(src: BinaryIO, name: str = "", drain: bool = False) -> Iterator[tarfile.TarFile]:
    """A streaming TarFile over an archive of any supported format (sniffed, else by name).

    With drain, the stream is read to its end after the block, so the format's own checksums
    (and any garbage after the tar's end) are checked too.
    """
    label = name or "archive"
    head = src.read(_SNIFF)
    if not head:
        raise CheckpointError(f"{label}: empty file, not a checkpoint archive")
    # Every supported format has magic bytes; a name that disagrees with them is not trusted.
    fmt = sniff_format(head)
    if fmt is None:
        raise CheckpointError(f"{label}: not a checkpoint archive (unknown format)")
    stream = _decompressor(_Prefixed(head, src), fmt)  # type: ignore[arg-type]
    try:
        # Read in large blocks: at tarfile's default of 10 KiB the calls down through the
        # decompressor add a tenth to the unpacking of a GiB.
        with tarfile.open(fileobj=stream, mode="r|", bufsize=_STREAM_BLOCK) as tar:
            yield tar
        if drain:
            _drain(stream)
    except (tarfile.TarError, EOFError, OSError, RuntimeError, zlib.error, isal_zlib.error) as exc:
        raise CorruptArchive(f"corrupt archive: {label}: truncated or corrupt data ({exc})") from None
    except Exception as exc:
        if type(exc).__name__ in ("ZstdError", "LZ4FrameError"):
            raise CorruptArchive(f"corrupt archive: {label}: truncated or corrupt data ({exc})") from None
        raise
    finally:
        try:
            stream.close()  # a threaded inflater's thread stops (src itself stays open)
        except (OSError, ValueError, EOFError, RuntimeError, zlib.error, isal_zlib.error):
            pass


def _check_member(member: tarfile.TarInfo, dest: str, name: str) -> None:
    if member.name.startswith("/") or ".." in member.name.split("/"):
        raise CheckpointError(f"{name}: unsafe archive member {member.name!r} (outside the checkpoint)")
    if member.issym() or member.islnk():
        target = os.path.normpath(os.path.join(dest, os.path.dirname(member.name), member.linkname))
        if member.linkname.startswith("/") or not target.startswith(os.path.abspath(dest) + os.sep):
            raise CheckpointError(f"{name}: unsafe link {member.name!r} -> {member.linkname!r} in archive")
    elif not (member.isfile() or member.isdir()):
        raise CheckpointError(f"{name}: unsupported member type in archive: {member.name!r}")


def _extract_file(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: str, new_hasher: Callable) -> str:
    """Write one regular member into dest, hashing it; returns its digest (hex)."""
    src = tar.extractfile(member)
    assert src is not None
    hasher = new_hasher()
    path = os.path.join(dest, member.name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, member.mode & 0o755 or 0o600)
    with os.fdopen(fd, "wb") as out:
        while block := src.read(1 << 20):
            hasher.update(block)
            out.write(block)
    os.utime(path, (member.mtime, member.mtime))
    return hasher.hexdigest()


def _parse_sums(text: bytes, label: str, sums: sums_format.SumsFormat) -> dict[str, str]:
    recorded = {}
    for line in text.decode(errors="replace").splitlines():
        digest, sep, fname = line.partition("  ")
        if not sep or len(digest) != 64:
            raise CorruptArchive(f"corrupt archive: {sums.member} of {label} is damaged ({line[:60]!r})")
        recorded[fname] = digest
    return recorded


def _verify_sums(found: dict[str, str], recorded: dict[str, str] | None, label: str, required: bool,
                 sums: sums_format.SumsFormat) -> None:
    if recorded is None:
        if required:
            raise CorruptArchive(f"corrupt archive: {label} ends before its {sums.member} (truncated or damaged)")
        log.info("%s has no %s (made elsewhere): only its format's own checks apply", label, sums.member)
        return
    for fname, digest in recorded.items():
        if fname not in found:
            raise CorruptArchive(f"corrupt archive: {fname} is listed in {sums.member} but missing from {label}")
        if found[fname] != digest:
            raise CorruptArchive(f"corrupt archive: {fname} does not match its {sums.algorithm.upper()}"
                                 f" recorded in {label}")
    extra = sorted(set(found) - set(recorded))
    if extra:
        raise CorruptArchive(f"corrupt archive: {extra[0]} in {label} is not listed in its {sums.member}")


def _announced_sums(tar: tarfile.TarFile, label: str) -> tuple[sums_format.SumsFormat, bool]:
    """The sums the archive's pax header announces, and whether it announces any (then they must be there)."""
    algorithm = tar.pax_headers.get(_PAX_INTEGRITY)
    sums = sums_format.read_format(algorithm)
    if sums is None:
        raise CorruptArchive(f"{label}: its files are hashed with {algorithm!r}, which this version"
                             " cannot check (made by a newer cedana?)")
    return sums, algorithm is not None


def extract_archive(src: BinaryIO, dest: str, name: str = "") -> list[str]:
    """Unpack an archive stream into the (empty) dest dir, refusing anything that escapes it.

    Every integrity check (the format's, then the sums file) passes before this returns; on any
    failure the caller must discard dest.
    """
    label = name or "archive"
    names: list[str] = []
    found: dict[str, str] = {}
    recorded: dict[str, str] | None = None
    sums, required = sums_format.SHA256, False
    with open_tar_stream(src, name, drain=True) as tar:
        for index, member in enumerate(tar):
            if index == 0:  # the global header is read with the first member
                sums, required = _announced_sums(tar, label)
            _check_member(member, dest, label)
            if member.name == sums.member and member.isfile():
                recorded = _parse_sums(tar.extractfile(member).read(), label, sums)  # type: ignore[union-attr]
                continue
            names.append(member.name)
            if member.isfile():
                found[member.name] = _extract_file(tar, member, dest, sums.new)
                continue
            extract_member(tar, member, dest, label)
    _verify_sums(found, recorded, label, required, sums)
    if "inventory.img" not in names:
        raise CheckpointError(f"{label}: archive holds no CRIU images (no inventory.img)")
    return names
