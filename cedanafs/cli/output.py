"""How a command reports its result: a sentence for people, or with `--output json` the same
result as one JSON document (the keys a script can rely on).

`@reports` gives a command the `--output/-O table|json` option without touching its signature;
inside, `report(data, text)` prints one or the other. Commands that show tables use base.emit.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Callable

import click

_KEY = "cedana.output"


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
