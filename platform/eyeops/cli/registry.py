"""``eyeops registry show|promote|rollback NAME``: the MLflow model registry and its aliases."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

registry_app = typer.Typer(help="MLflow registry: show versions, promote, roll back.", no_args_is_help=True)
console = Console()


@registry_app.command()
def show(name: str = typer.Argument(..., help="Registered model name.")) -> None:
    """List the versions of NAME with their aliases and gate decisions."""
    from eyeops.registry import show as show_model

    view = show_model(name)
    table = Table(title=f"{view.name}  " + "  ".join(f"@{a}=v{v}" for a, v in sorted(view.aliases.items())))
    for column in ("version", "aliases", "gate", "failed", "metric", "value", "reason"):
        table.add_column(column, justify="right" if column in ("version", "value") else "left")
    for v in view.versions:
        table.add_row(
            str(v.version),
            ", ".join(f"@{a}" for a in v.aliases),
            v.gate,
            ", ".join(v.gate_failed),
            v.metric,
            "" if v.value is None else f"{v.value:.4f}",
            v.gate_reason,
        )
    console.print(table)


@registry_app.command()
def promote(
    name: str = typer.Argument(..., help="Registered model name."),
    version: int = typer.Argument(..., help="Version to make @champion."),
) -> None:
    """Make VERSION the @champion of NAME by hand (the old champion becomes @previous)."""
    from eyeops.registry import promote as promote_version

    ref = promote_version(name, version)
    console.print(f"{ref.name}: v{ref.version} is now @champion")


@registry_app.command()
def rollback(name: str = typer.Argument(..., help="Registered model name.")) -> None:
    """Restore the @previous version of NAME as @champion."""
    from eyeops.registry import rollback as rollback_model

    ref = rollback_model(name)
    console.print(f"{ref.name}: v{ref.version} is @champion again ({ref.gate_reason})")


def register(app: typer.Typer) -> None:
    app.add_typer(registry_app, name="registry")
