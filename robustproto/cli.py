"""The ``robustproto`` command line (typer).

Every command turns its options into plain values and calls the Python API; no
module below the CLI reads ``sys.argv``. Expected failures (bad input, a missing
plugin or file) end with one line on stderr that says what to do, and exit code 2.
"""

from __future__ import annotations

import json
import sys

import typer
from rich.console import Console
from rich.table import Table

from .registry import PluginError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Robust prototype heads and Lipschitz training for timm models.",
)


class UserError(Exception):
    """An error the user can fix; printed as one line, never as a traceback."""


@app.command()
def version() -> None:
    """Print the package version."""
    from . import __version__

    typer.echo(__version__)


@app.command()
def plugins(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List the installed heads, regularizers and backbone modules, with load errors."""
    from .registry import list_plugins

    found = list_plugins()
    if as_json:
        typer.echo(json.dumps(found, indent=2, sort_keys=True))
        return
    table = Table(title="robustproto plugins")
    for column in ("group", "name", "source", "status"):
        table.add_column(column)
    for group, entries in found.items():
        for name, info in entries.items():
            status = "[green]ok[/green]" if info["error"] is None else f"[red]{info['error']}[/red]"
            table.add_row(group, name, info["source"], status)
    Console().print(table)


# Commands of later modules register themselves here, one line each.


def main() -> None:
    """Entry point: run the app (click handles usage errors), turning expected errors into one line, exit 2."""
    try:
        app()
    except (UserError, PluginError, ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
