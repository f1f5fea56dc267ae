"""cedanafs: checkpoint/restore of Linux processes with CRIU into a deduplicating, mountable store."""

__version__ = "0.1.0"
