"""How a command reports its result: a table or a sentence for people, or with `--output json`
the same result as one JSON document (the keys the table shows, so a script can rely on them).

Table commands take `output_option` and call `emit(data, output, table)`; commands that report
one result take `@reports` (the option without touching their signature) and call
`report(data, text)`.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Callable

import click

_KEY = "cedana.output"

output_option = click.option(
    "--output", "-O", type=click.Choice(["table", "json"]), default="table", show_default=True,
    help="Output format.",
)


def emit(data: Any, output: str, table: Callable[[Any], str] | None = None) -> None:
    """Print data as JSON when asked (--output json), else as the given table text."""
    if output == "json" or table is None:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        click.echo(table(data))


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    """Columns padded to their widest cell, two spaces apart; None shows as blank."""
    cells = [headers] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def reports(func: Callable) -> Callable:
    """Add --output to a command that reports a result; read it with report()."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        click.get_current_context().meta[_KEY] = kwargs.pop("report_output", "table")
        return func(*args, **kwargs)

    return click.option("--output", "-O", "report_output", type=click.Choice(["table", "json"]), default="table",
                        show_default=True, help="Output format.")(wrapper)


def wants_json() -> bool:
    ctx = click.get_current_context(silent=True)
    return ctx is not None and ctx.meta.get(_KEY) == "json"


def report(data: Any, text: str | Callable[[Any], str]) -> None:
    """Print `data` as JSON when --output json was given, else the sentence `text`."""
    if wants_json():
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        click.echo(text(data) if callable(text) else text)
