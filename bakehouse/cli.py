"""The `bakehouse` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from bakehouse.settings import apply_defaults

app = typer.Typer(help="bakehouse: stim -> rollout training data, Bread-compatible.", no_args_is_help=True)


@app.callback()
def root() -> None:
    """Storage comes from BAKEHOUSE_DATA (a folder, default ./bakehouse-data, or s3://bucket/prefix)."""


@app.command()
def demo(
    data: Optional[str] = typer.Option(None, envvar="BAKEHOUSE_DATA", help="Storage URL (folder or s3://bucket/prefix)."),
    spec: Optional[Path] = typer.Option(None, help="Resource file to run instead of the built-in example."),
) -> None:
    """Create the example target and run stim -> rollout on it, showing progress."""
    from bakehouse.demo import run_demo

    raise typer.Exit(run_demo(data, spec))


def main() -> None:
    apply_defaults()
    app()
