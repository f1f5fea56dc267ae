"""Records shared by the layers: what a stored file is made of, and the memory page size.

The streamer produces and consumes these; the catalog stores them in manifests. Both import
them from here (layer 0) because neither may import the other. `PAGE_SIZE` is the one
definition of the page CRIU's images and the chunker are aligned to.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PAGE_SIZE = 4096  # CRIU's page size on x86-64 and arm64 (4 KiB kernels)


@dataclass(frozen=True)
class ChunkRef:
    """One chunk of a file: the hex digest of its plain bytes and their length."""

    digest: str
    size: int


@dataclass(frozen=True)
class FileContent:
    """The bytes of one stored file: inline (small files, packed into the manifest) or a chunk list."""

    size: int
    chunks: tuple[ChunkRef, ...] = ()
    inline: bytes | None = None

    def __post_init__(self) -> None:
        if self.inline is not None and len(self.inline) != self.size:
            raise ValueError("inline content length does not match size")


@dataclass(frozen=True)
class TransferStats:
    """Counters a transfer reports: logical bytes seen, bytes actually uploaded, chunks new/reused."""

    logical_bytes: int = 0
    stored_bytes: int = 0
    new_chunks: int = 0
    reused_chunks: int = 0
    extra: dict = field(default_factory=dict)
