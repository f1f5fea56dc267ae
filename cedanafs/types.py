"""Records shared by the layers: what a stored file is made of.

The streamer produces and consumes these; the catalog stores them in manifests. Both import
them from here (layer 0) because neither may import the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
