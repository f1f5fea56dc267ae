"""The `cedana` command's common ground: the root group, the per-call context, error handling,
the option sets shared by several command families, and the call to the daemon. Output
formatting (emit, format_table, --output) lives in output.py and is re-exported here.

The command families (process.py, jobs.py, ...) add their commands to the groups here when they
are imported, and they are imported only for a command of theirs (LazyGroup): `cedana dump
process` starts without loading the containers, store or mount commands and what they import.

User errors (CedanaError) become one line on stderr and the error's exit code; nothing else is
caught here except to report it as a bug in one line (the traceback only in debug logs).
"""

from __future__ import annotations

import functools
import logging
import sys
from typing import Any, Callable

import click

from .. import __version__
from ..config import Settings, load_settings
from ..errors import CedanaError
from ..log import setup_logging
from .output import emit, format_table, output_option  # noqa: F401 - re-exported for the command families

log = logging.getLogger(__name__)


class Context:
    """What every command gets: the settings for this call."""

    def __init__(self, config_dir: str | None, config_json: str | None):
        self._config_dir = config_dir
        self._config_json = config_json
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self._config_dir, self._config_json)
            _warn_unknown_env()
        return self._settings

    def check_daemon_overrides(self) -> None:
        """--config keys a daemon-served command cannot honour are refused, never silently dropped."""
        from ..config import override_keys
        from ..errors import UsageError

        ignored = [k for k in override_keys(self._config_json) if k not in CLIENT_SIDE_KEYS]
        if ignored:
            raise UsageError(f"--config {', '.join(ignored)}: the daemon serves this command with its own"
                             " settings; set them in the daemon's config.json and restart it"
                             f" (here --config can set {', '.join(CLIENT_SIDE_KEYS)})")


# What this command itself uses when the daemon does the work: which daemon, and what it puts in the request.
CLIENT_SIDE_KEYS = ("address", "job.log_dir", "checkpoint.dir", "checkpoint.compression", "criu.leave_running",
                    "log.level")


def _warn_unknown_env() -> None:
    from ..config import unknown_env

    for name in unknown_env():
        click.echo(f"Warning: unknown environment variable {name} is ignored", err=True)


def fail(message: str, code: int) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def handle_errors(func: Callable) -> Callable:
    """Turn CedanaError into one line and its exit code; any other exception into one line too."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CedanaError as err:
            fail(str(err), err.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except OSError as err:  # disk full, permissions, I/O errors: the system's own words
            log.debug("system error", exc_info=True)
            where = f"{err.filename}: " if err.filename else ""
            fail(f"{where}{err.strerror or err}", 74)  # EX_IOERR
        except Exception as err:  # noqa: BLE001 - the last line of defence for the user
            log.debug("unexpected error", exc_info=True)
            fail(f"internal error: {type(err).__name__}: {err} (run with CEDANA_LOG_LEVEL=debug for details)", 70)

    return wrapper


pass_ctx = click.make_pass_decorator(Context)


class LazyGroup(click.Group):
    """A group some of whose commands are added by modules of this package imported only when one
    of those commands is asked for (click's lazy loading pattern). `lazy` maps a command's name to
    the modules that add it or, for a group, its subcommands; listing the commands (--help,
    completion) loads them all."""

    def __init__(self, *args: Any, lazy: dict[str, tuple[str, ...]], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(self.lazy))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        for module in self.lazy.get(cmd_name, ()):
            __import__(f"{__package__}.{module}")  # not importlib's: -X importtime sees only this one
        return super().get_command(ctx, cmd_name)


# The modules that add each command, but those defined here (tests/test_cli_lazy.py checks them).
ROOT_COMMANDS = {
    "attach": ("attach",), "check": ("process",), "checkpoint": ("store", "mount"), "checkpoints": ("jobs",),
    "completion": ("misc",), "daemon": ("jobs", "misc"), "delete": ("misc",), "exec": ("misc",),
    "features": ("misc",), "freeze": ("query",), "gc": ("store",), "job": ("jobs", "attach"), "jobs": ("jobs",),
    "k8s": ("k8s",), "kill": ("misc",), "mount": ("mount",), "ps": ("jobs",), "query": ("query",),
    "store": ("store",), "umount": ("mount",), "unfreeze": ("query",),
}
DUMP_COMMANDS = {"process": ("process",), "runc": ("containers",), "containerd": ("containers",), "job": ("jobs",)}
RESTORE_COMMANDS = {"process": ("process",), "runc": ("containers",), "containerd": ("containers",), "job": ("jobs",)}
RUN_COMMANDS = {"process": ("jobs",), "runc": ("containers",)}
MANAGE_COMMANDS = {"process": ("jobs",), "runc": ("containers",), "containerd": ("containers",)}


@click.group(cls=LazyGroup, lazy=ROOT_COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config-dir", envvar="CEDANA_CONFIG_DIR", help="Directory holding config.json.")
@click.option("--config", "config_json", help="JSON config overrides for this call.")
@click.option("--log-level", envvar="CEDANA_LOG_LEVEL", help="debug, info, warning, error.")
@click.version_option(__version__, prog_name="cedana")
@click.pass_context
def cli(ctx: click.Context, config_dir: str | None, config_json: str | None, log_level: str | None) -> None:
    """cedana: checkpoint and restore Linux processes with CRIU."""
    setup_logging(log_level or "error")  # a command speaks through its one-line result or error
    ctx.obj = Context(config_dir, config_json)


@cli.command()
def version() -> None:
    """Print the version."""
    click.echo(f"cedana {__version__}")


# --- process commands: check, dump, restore (cedanafs.app.process) ---


def _criu_flags(func: Callable) -> Callable:
    """The CRIU flags shared by dump and restore (DESIGN.md section 2)."""
    options = [
        click.option("--tcp-established", is_flag=True, help="Checkpoint/restore established TCP connections."),
        click.option("--file-locks", is_flag=True, help="Checkpoint/restore file locks."),
        click.option("--external", multiple=True, help="External resource (repeatable), as CRIU's --external."),
        click.option("--shell-job/--no-shell-job", default=None,
                     help="Process is a shell job (default: auto, when it is not a session leader"
                          " or has a controlling terminal; restore: as the dump recorded)."),
        click.option("--link-remap", is_flag=True, help="Allow link remapping of deleted/unlinked files."),
        click.option("--criu-opts", help="Extra CRIU RPC options as a JSON object."),
    ]
    for option in reversed(options):
        func = option(func)
    return func



@cli.group(cls=LazyGroup, lazy=DUMP_COMMANDS)
def dump() -> None:
    """Checkpoint a process (or job)."""


@cli.group(cls=LazyGroup, lazy=RESTORE_COMMANDS)
def restore() -> None:
    """Restore a process (or job) from a checkpoint."""


@cli.group("run", cls=LazyGroup, lazy=RUN_COMMANDS)
def run_group() -> None:
    """Start a managed job."""


@cli.group("manage", cls=LazyGroup, lazy=MANAGE_COMMANDS)
def manage_group() -> None:
    """Adopt a running process as a managed job."""




def _daemon(ctx: Context, method: str, params: dict | None = None, fds: tuple[int, ...] = (),
            timeout: float | None = 3600.0) -> Any:
    """One call to the daemon at config `address`; its errors come back as the same CedanaError."""
    from ..daemon import client

    ctx.check_daemon_overrides()
    return client.call(ctx.settings.address, method, params, fds=fds, timeout=timeout)


def _daemon_listening(ctx: Context) -> bool:
    from ..daemon import client

    return client.is_listening(ctx.settings.address)


def _local_path(path: str | None) -> str | None:
    """Paths go to the daemon absolute (it does not share our cwd); URLs as they are."""
    import os

    return path if not path or "://" in path else os.path.abspath(path)




class IngestProgress:
    """On a terminal, one line that follows a dump into the mount: bytes captured, committed, rate.

    It reads the pending checkpoint's progress from the mount itself, so it works the same when
    the daemon does the dump. Nothing is shown when stderr is not a terminal.
    """

    def __init__(self, job_dir: str | None):
        import threading

        self._dir = job_dir if job_dir and sys.stderr.isatty() else None
        self._done = threading.Event()
        self._shown = False
        self._thread = threading.Thread(target=self._run, daemon=True) if self._dir else None

    def __enter__(self) -> "IngestProgress":
        if self._thread:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._done.set()
        if self._thread:
            self._thread.join()
        if self._shown:
            click.echo("", err=True)

    @staticmethod
    def timing(captured_after: float, committed_after: float) -> None:
        """On a terminal: how long the process was held, and when its checkpoint was safe."""
        if sys.stderr.isatty():
            click.echo(f"process released after {captured_after:.2f} s, checkpoint committed after"
                       f" {committed_after:.2f} s", err=True)

    def _run(self) -> None:
        import os
        import time

        from ..app.capture import read_progress
        from ..config import format_size

        started = time.monotonic()
        while not self._done.wait(0.5):
            try:
                names = os.listdir(self._dir)
            except OSError:
                continue
            for name in names:
                p = read_progress(os.path.join(self._dir, name))
                if p:
                    rate = p["done"] / max(time.monotonic() - started, 1e-3)
                    click.echo(f"\r{name}: captured {format_size(p['total'])}, committed {format_size(p['done'])}"
                               f" ({format_size(int(rate))}/s)   ", err=True, nl=False)
                    self._shown = True
