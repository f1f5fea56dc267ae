"""The `cedana` command: a thin click face over cedanafs.app, one module per command family.

base.py holds the root group and what the families share; process.py, store.py, mount.py,
jobs.py and the others add their commands to it when imported, which base.LazyGroup does only
for the command asked for. Only this package imports click.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from .base import cli, fail

__all__ = ["cli", "load_commands", "main"]

# Every module that adds commands, in the order they were once all imported at start: the order
# in which each group's commands are added, and click-man lists them in that order.
COMMAND_MODULES = ("containers", "jobs", "k8s", "mount", "process", "store", "attach", "misc", "query")


def load_commands() -> None:
    """Add every command now, not when asked for: for what reads the groups' commands directly
    (the man pages), or a process that cannot import later (one that drops its privileges)."""
    for module in COMMAND_MODULES:
        __import__(f"{__name__}.{module}")


def main() -> None:
    """Entry point: click's own usage errors are also reported on one line."""
    try:
        code = cli.main(prog_name="cedana", standalone_mode=False)
    except click.UsageError as err:
        if type(err).__name__ == "NoArgsIsHelpError":  # a bare group: show its help, as click would
            click.echo(err.format_message())
            sys.exit(0)
        where = f" (see '{err.ctx.command_path} --help')" if err.ctx else ""
        fail(f"{err.format_message()}{where}", 2)
    except click.ClickException as err:
        fail(err.format_message(), err.exit_code)
    except click.Abort:
        fail("aborted", 1)
    _exit(code if isinstance(code, int) else 0)


def _exit(code: int) -> None:
    """Leave as soon as the command is done: its output flushed and its log closed, but without
    the interpreter tearing down every module and object one by one (~25 ms after each command,
    which a dump or restore would count as the caller's time)."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe: as the interpreter's own exit would
        code = code or 1
    logging.shutdown()
    os._exit(code)

