"""The ``eyeops`` command line: thin typer shells over the library.

Each command group lives in its own module and is mounted here. Every :class:`EyeopsError`
is printed as one red line and exits with status 2 — never a traceback for a user mistake.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from eyeops import __version__
from eyeops.errors import EyeopsError

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    name="eyeops",
    help="eyeops — Kubernetes-native MLOps for ophthalmology models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """eyeops — Kubernetes-native MLOps for ophthalmology models."""


@app.command()
def version() -> None:
    """Print the eyeops version and the versions of the engines it drives."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    from rich.table import Table

    table = Table(title=f"eyeops {__version__}", show_header=True)
    table.add_column("component")
    table.add_column("version")
    for dist in ("torch", "ray", "mlflow", "kfp", "kserve", "transformers", "peft", "deepspeed", "timm"):
        try:
            table.add_row(dist, dist_version(dist))
        except PackageNotFoundError:
            table.add_row(dist, "[dim]not installed[/dim]")
    console.print(table)


def _mount_groups() -> None:
    """Mount every command group that is installed (each module defines ``app``)."""
    import importlib

    for name in ("data", "train", "evaluate", "registry", "export", "serve", "pipeline", "plan", "imports"):
        try:
            module = importlib.import_module(f"eyeops.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"eyeops.cli.{name}":
                continue
            raise
        module.register(app)


_mount_groups()


def main() -> None:
    """Console-script entry point: run the app and turn our errors into one clear line.

    Typer's standalone mode already renders usage errors; anything that is an EyeopsError
    (bad recipe, missing file, rejected data) propagates to here and is printed without a traceback.
    """
    try:
        app()
    except EyeopsError as exc:
        err_console.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
        sys.exit(2)
