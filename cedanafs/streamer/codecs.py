"""Per-chunk compression: zstd (default), lz4, none, with a 1-byte header naming the codec.

Every stored chunk starts with one byte saying how its body is encoded, so reading needs no
configuration and stores written with different codecs mix freely. A chunk is stored plain
when compression saves less than MIN_SAVING of its size (random data, already-compressed data).
"""

from __future__ import annotations

import ctypes
import threading

import lz4.block
import zstandard

from cedanafs.errors import UsageError

NONE, ZSTD, LZ4 = 0, 1, 2
CODECS = {"none": NONE, "zstd": ZSTD, "lz4": LZ4}
NAMES = {v: k for k, v in CODECS.items()}
MIN_SAVING = 0.03
# Level 1: on CRIU pages (docs/store.md) it was both faster (260 vs 179 MiB/s) and smaller than 3.
ZSTD_LEVEL = 1
# No chunk is this large; a corrupt header claiming more must not make us allocate it.
MAX_PLAIN = 64 << 20

# zstandard's (de)compressor objects are not safe to share between threads; one per thread.
_local = threading.local()


class DecodeError(ValueError):
    """The stored bytes are not a valid encoded chunk."""


def codec_id(name: str) -> int:
    try:
        return CODECS[name]
    except KeyError:
        raise UsageError(f"unknown codec {name!r} (use one of {', '.join(CODECS)})") from None


def _zstd_c() -> zstandard.ZstdCompressor:
    c = getattr(_local, "zc", None)
    if c is None:
        c = _local.zc = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
    return c


def _zstd_d() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "zd", None)
    if d is None:
        d = _local.zd = zstandard.ZstdDecompressor()
    return d


# Before compressing a chunk whole, three samples of it are compressed: if none of them saves
# MIN_SAVING, the chunk (random or already-compressed bytes) is stored plain at once. zstd level 1
# spends ~2 CPU-s per GiB of random data only to find it incompressible; the samples cost ~1/30.
SAMPLE = 16 << 10
SAMPLED_ABOVE = 256 << 10


def _incompressible(data: bytes, cid: int) -> bool:
    if len(data) < SAMPLED_ABOVE:
        return False
    view = memoryview(data)
    for start in (0, len(data) // 2 - SAMPLE // 2, len(data) - SAMPLE):
        sample = view[start:start + SAMPLE]
        body = _zstd_c().compress(sample) if cid == ZSTD else lz4.block.compress(sample, store_size=False)
        if len(body) <= SAMPLE * (1 - MIN_SAVING):
            return False
    return True


_HEADERS = {cid: bytes([cid]) for cid in NAMES}


def encode(data: bytes, codec: str = "zstd") -> bytes:
    """Header byte + body; the body is plain when compression does not pay."""
    return b"".join(encode_parts(data, codec))


def encode_parts(data: bytes, codec: str = "zstd") -> tuple[bytes, bytes]:
    """(header, body) of `data` encoded, not joined: a plain body is `data` itself, never copied
    (a writer hands both to one writev)."""
    cid = codec_id(codec)
    if cid != NONE and _incompressible(data, cid):
        return _HEADERS[NONE], data
    if cid == ZSTD:
        body = _zstd_c().compress(data)
    elif cid == LZ4:
        body = lz4.block.compress(data, store_size=True)
    else:
        return _HEADERS[NONE], data
    if len(body) > len(data) * (1 - MIN_SAVING):
        return _HEADERS[NONE], data
    return _HEADERS[cid], body


def plain_parts(data: bytes) -> tuple[bytes, bytes]:
    """(header, body) of `data` stored plain, whatever the store's codec."""
    return _HEADERS[NONE], data


def worth_compressing(data: bytes, codec: str) -> bool:
    """Whether compressing `data` with `codec` is likely to pay (three small samples decide)."""
    cid = codec_id(codec)
    return cid != NONE and not _incompressible(data, cid)


def decode(blob: bytes) -> bytes:
    """The plain bytes of an encoded chunk; DecodeError if it cannot be decoded."""
    if not blob:
        raise DecodeError("empty object")
    cid, body = blob[0], memoryview(blob)[1:]
    try:
        if cid == NONE:
            return bytes(body)
        if cid == ZSTD:
            _check_size(zstandard.frame_content_size(body))
            return _zstd_d().decompress(body)
        if cid == LZ4:
            _check_size(int.from_bytes(body[:4], "little"))
            return lz4.block.decompress(body)
    except (zstandard.ZstdError, lz4.block.LZ4BlockError, ValueError) as exc:
        raise DecodeError(f"{NAMES[cid]} body does not decode: {exc}") from None
    raise DecodeError(f"unknown codec byte {cid}")


def _check_size(size: int) -> None:
    if size < 0 or size > MAX_PLAIN:
        raise DecodeError(f"header claims an impossible plain size {size}")


def is_plain(blob: bytes) -> bool:
    """Whether an encoded chunk is stored plain (its header names no codec)."""
    return bool(blob) and blob[0] == NONE


def codec_of(blob: bytes) -> str:
    """The codec name recorded in an encoded chunk's header."""
    if not blob or blob[0] not in NAMES:
        raise DecodeError("unknown codec header")
    return NAMES[blob[0]]


def _lz4_decoder():
    """LZ4_decompress_safe of the lz4 library python-lz4 carries, or None: through ctypes it
    writes into a buffer of ours (no new buffer per chunk, and the GIL released meanwhile)."""
    try:
        fn = ctypes.CDLL(lz4.block._block.__file__).LZ4_decompress_safe
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_LZ4_SAFE = _lz4_decoder()


def decode_into(blob: bytes | memoryview, out: bytearray) -> memoryview:
    """The plain bytes of an encoded chunk, copied as little as can be: a view of `blob` itself
    when it is stored plain, lz4 decoded into `out` (which must outlive the view), anything else
    decoded into a new buffer. DecodeError as for decode()."""
    if not len(blob):
        raise DecodeError("empty object")
    cid = blob[0]
    if cid == NONE:
        return memoryview(blob)[1:]
    if cid == LZ4 and _LZ4_SAFE is not None and len(blob) >= 5:
        size = int.from_bytes(blob[1:5], "little")
        _check_size(size)
        if size <= len(out):
            if isinstance(blob, memoryview) and not blob.readonly:
                src_obj = (ctypes.c_char * (len(blob) - 5)).from_buffer(blob[5:])
                src = ctypes.addressof(src_obj)
            else:
                src_obj = ctypes.c_char_p(bytes(blob))
                src = ctypes.cast(src_obj, ctypes.c_void_p).value + 5  # type: ignore[operator]
            dst = (ctypes.c_char * len(out)).from_buffer(out)
            got = _LZ4_SAFE(src, ctypes.addressof(dst), len(blob) - 5, size)
            del dst, src_obj
            if got != size:
                raise DecodeError(f"lz4 body does not decode ({got} of {size} bytes)")
            return memoryview(out)[:size]
    return memoryview(decode(bytes(blob)))
