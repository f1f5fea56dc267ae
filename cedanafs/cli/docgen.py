"""The generated documentation: docs/commands.md (every command's help), docs/config.md (every key,
from the settings object), docs/exit-codes.md (from the error classes), and man pages (click-man).

`python -m cedanafs.cli.docgen [--check] [--man DIR]` (or `make docs`, `make man`) writes them;
`--check` only says which differ. Tests compare the files with this output, so they cannot drift.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Iterator

import click

from .. import errors
from ..config import describe_keys
from . import cli, load_commands

# Every command now, in load_commands' order: click-man lists a group's commands in the order
# they were added.
load_commands()

DOCS = Path(__file__).resolve().parents[2] / "docs"
WIDTH = 100
# Exit codes the command itself uses besides the error classes' own.
OTHER_CODES = [
    (0, "Success."),
    (70, "Internal error: a bug, reported in one line (CEDANA_LOG_LEVEL=debug shows the traceback);"
         " also when the daemon and the command do not understand each other."),
    (74, "An I/O error of the system (disk full, permission, ...), in the system's words."),
    (130, "Interrupted (Ctrl-C)."),
    ("N", "`restore process --no-server`, `run process --attach`: the process's own exit code."),
]


def _walk(cmd: click.Command, ctx: click.Context) -> Iterator[tuple[click.Command, click.Context]]:
    """Every command, as `--help` lists them."""
    yield cmd, ctx
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            yield from _walk(sub, click.Context(sub, info_name=name, parent=ctx, terminal_width=WIDTH,
                                                max_content_width=WIDTH))


def commands_markdown() -> str:
    root = click.Context(cli, info_name="cedana", terminal_width=WIDTH, max_content_width=WIDTH)
    parts = ["# Command reference\n",
             "Generated from the commands' help by `make docs` (cedanafs/cli/docgen.py); do not edit.\n"]
    for cmd, ctx in _walk(cli, root):
        parts.append(f"## {ctx.command_path}\n\n```\n{cmd.get_help(ctx)}\n```\n")
    return "\n".join(parts)


def _cell(value: object) -> str:
    text = "`" + str(value) + "`" if value not in ("", None) else "(empty)"
    return text.replace("|", "\\|")


def config_markdown() -> str:
    rows = ["| Key | Type | Default | Environment | Meaning |", "|---|---|---|---|---|"]
    rows += [f"| `{k.key}` | {k.type} | {_cell(k.default)} | `{k.env}` | {k.help} |" for k in describe_keys()]
    return "\n".join([
        "# Configuration keys\n",
        "Generated from the settings object (cedanafs/config.py) by `make docs`; do not edit.\n",
        "Precedence, lowest first: defaults, `<config dir>/config.json` (`--config-dir`, `CEDANA_CONFIG_DIR`,"
        " else /etc/cedana), the environment, then `--config '<json>'` for one call. In the file, keys nest by"
        " section: `{\"checkpoint\": {\"dir\": \"/var/ckpt\"}}`. An unknown key is an error that suggests the"
        " nearest known one; an unknown `CEDANA_*` variable is warned about. Sizes accept `512M`, `2G`.",
        "Commands the daemon serves use the daemon's settings: there `--config` may only set keys the command"
        " itself uses (`address`, `job.log_dir`, `checkpoint.dir`, `checkpoint.compression`,"
        " `criu.leave_running`, `log.level`); others are refused with the reason.\n",
        *rows, ""])


def _error_classes() -> list[type]:
    found = [c for _, c in inspect.getmembers(errors, inspect.isclass)
             if issubclass(c, errors.CedanaError) and c is not errors.CedanaError]
    return [errors.CedanaError] + sorted(found, key=lambda c: (c.exit_code, c.__name__))


MEANINGS = {"CedanaError": "Any other error a user can act on; the message says what.",
            "UsageError": "Invalid usage: an unknown command or option, a bad argument, options that exclude"
                          " each other, --config keys the daemon cannot honour."}


def exit_codes_markdown() -> str:
    rows = ["| Code | Meaning | Error |", "|---|---|---|"]
    table = [(c.exit_code, MEANINGS.get(c.__name__) or (c.__doc__ or "").strip().splitlines()[0], c.__name__)
             for c in _error_classes()]
    table += [(code, text, "") for code, text in OTHER_CODES]
    table.sort(key=lambda r: (isinstance(r[0], str), r[0] if isinstance(r[0], int) else 0))
    rows += [f"| {code} | {text} | {name and '`' + name + '`'} |" for code, text, name in table]
    return "\n".join(["# Exit codes\n",
                      "Generated from cedanafs/errors.py and cedanafs/cli/docgen.py by `make docs`; do not edit.",
                      "Every command exits with the same code for the same condition; errors are one line on"
                      " stderr starting with `Error: `.\n", *rows, ""])


GENERATED = {"commands.md": commands_markdown, "config.md": config_markdown, "exit-codes.md": exit_codes_markdown}


def write_man_pages(target: Path) -> list[Path]:
    """One man page per command (click-man), e.g. cedana-dump-process.1."""
    from click_man.core import write_man_pages as click_man_write

    from .. import __version__

    import warnings

    target.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # click-man uses a click helper click deprecates
        warnings.simplefilter("ignore", DeprecationWarning)
        click_man_write("cedana", cli, version=__version__, target_dir=str(target), date="")
    return sorted(target.glob("*.1"))


def main(argv: list[str]) -> int:
    stale = []
    for name, make in GENERATED.items():
        path, text = DOCS / name, make()
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if "--man" in argv:
        pages = write_man_pages(Path(argv[argv.index("--man") + 1]))
        print(f"{len(pages)} man pages in {argv[argv.index('--man') + 1]}")
    if stale:
        print(f"out of date (run `make docs`): {', '.join(stale)}", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
