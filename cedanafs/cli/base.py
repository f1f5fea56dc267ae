"""The `cedana` command's common ground: the root group, the per-call context, error handling,
output formatting, the option sets shared by several command families, and the call to the daemon.

User errors (CedanaError) become one line on stderr and the error's exit code; nothing else is
caught here except to report it as a bug in one line (the traceback only in debug logs).
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from typing import Any, Callable

import click

from .. import __version__
from ..config import Settings, load_settings
from ..errors import CedanaError
from ..log import setup_logging

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
        return self._settings


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


def emit(data: Any, output: str, table: Callable[[Any], str] | None = None) -> None:
    """Print data as JSON when asked (--output json), else as the given table text."""
    if output == "json" or table is None:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        click.echo(table(data))


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


output_option = click.option(
    "--output", "-O", type=click.Choice(["table", "json"]), default="table", show_default=True,
    help="Output format.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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



@cli.group()
def dump() -> None:
    """Checkpoint a process (or job)."""


@cli.group()
def restore() -> None:
    """Restore a process (or job) from a checkpoint."""


@cli.group("run")
def run_group() -> None:
    """Start a managed job."""


@cli.group("manage")
def manage_group() -> None:
    """Adopt a running process as a managed job."""




def _daemon(ctx: Context, method: str, params: dict | None = None, fds: tuple[int, ...] = (),
            timeout: float | None = 3600.0) -> Any:
    """One call to the daemon at config `address`; its errors come back as the same CedanaError."""
    from ..daemon import client

    return client.call(ctx.settings.address, method, params, fds=fds, timeout=timeout)


def _daemon_listening(ctx: Context) -> bool:
    from ..daemon import client

    return client.is_listening(ctx.settings.address)


def _local_path(path: str | None) -> str | None:
    """Paths go to the daemon absolute (it does not share our cwd); URLs as they are."""
    import os

    return path if not path or "://" in path else os.path.abspath(path)


