"""User-facing errors: each is a sentence the CLI prints on one line, with an exit code.

Every layer raises these (or subclasses of them) for conditions a user can act on;
anything else reaching the CLI is a bug and is reported as such. `FsError` is the one exception
that is not for users: the mount's tree refuses a request with an errno, which only the FUSE
boundary sees.
"""

import os


class CedanaError(Exception):
    """Base of every error meant for the user; str(err) is the one-line message."""

    exit_code = 1

    def __init__(self, message: str | None = None):
        super().__init__(message or (self.__doc__ or self.__class__.__name__).strip())


class UsageError(CedanaError):
    """Invalid argument or option."""

    exit_code = 2


class ConfigError(CedanaError):
    """Invalid configuration."""

    exit_code = 78  # EX_CONFIG


class PermissionDenied(CedanaError):
    """Permission denied."""

    exit_code = 77  # EX_NOPERM


class NotFound(CedanaError):
    """Not found."""

    exit_code = 3


class AlreadyExists(CedanaError):
    """Already exists."""

    exit_code = 4


class CheckpointError(CedanaError):
    """The checkpoint is unusable (missing, truncated, corrupt or unsafe)."""

    exit_code = 5


class CriuError(CedanaError):
    """CRIU failed."""

    exit_code = 6


class StoreError(CedanaError):
    """The checkpoint store failed."""

    exit_code = 7


class NotReady(CedanaError):
    """This machine is not ready for checkpoint/restore."""

    exit_code = 8


class DaemonUnavailable(CedanaError):
    """No cedana daemon is listening (start it with `cedana daemon start`)."""

    exit_code = 10


class MountError(CedanaError):
    """The mount failed."""

    exit_code = 9


class MountBusy(MountError):
    """The mount is busy."""

    exit_code = 16  # EBUSY


class ProtocolError(CedanaError):
    """The daemon and this command do not understand each other."""

    exit_code = 70


class InvalidManifest(CheckpointError):
    """The manifest is not well formed."""


class BackendError(StoreError):
    """The object store failed."""


class NoSuchObject(BackendError):
    """The object does not exist."""


class ObjectExists(BackendError):
    """The object already exists (a conditional create lost)."""


class FsError(Exception):
    """A request the mount's tree refuses: an errno for the kernel and a sentence for the log.

    Not a CedanaError: it never reaches a user as a message, only the FUSE boundary as an errno.
    """

    def __init__(self, err: int, message: str = ""):
        self.errno = err
        super().__init__(message or os.strerror(err))
