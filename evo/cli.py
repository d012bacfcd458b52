"""The `evo` command line (typer + rich)."""

from __future__ import annotations

import typer

from evo import __version__

app = typer.Typer(
    name="evo",
    help="Overnight evolutionary search over LLM training scripts.",
    no_args_is_help=True,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"evo {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    """Overnight evolutionary search over LLM training scripts."""
