"""Command-line interface: parses arguments and calls library functions, nothing more.

Every command here has a Python function twin documented in its stage module.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from .errors import SCCircuitsError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Causal circuit tracing in single-cell foundation models.")
console = Console(stderr=True)


@app.callback()
def _root() -> None:
    """Causal circuit tracing in single-cell foundation models."""


@app.command()
def version() -> None:
    """Print the sccircuits version."""
    from . import __version__

    print(__version__)


# --- commands are added below this line, one block per stage (keep blocks in pipeline order) ---


# --- end of commands ---


def main() -> None:
    """Entry point: user errors become one red line and exit code 2."""
    try:
        app()
    except SCCircuitsError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
