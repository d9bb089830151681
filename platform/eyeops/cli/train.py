"""``eyeops train RECIPE --data DIR``: train on Ray Train and print the checkpoint URI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from eyeops.errors import ConfigError


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    """``["train.max_steps=5", "model.labels=[N,D]"]`` -> overrides; values are read as YAML scalars."""
    import yaml

    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected key=value, e.g. train.max_steps=5")
        try:
            overrides[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {pair!r}: value is not valid YAML: {exc}") from None
    return overrides


def train_command(
    recipe: str = typer.Argument(..., help="Recipe name (recipes/<name>.yaml) or a YAML path."),
    data: str = typer.Option(..., "--data", "-d", help="Prepared dataset directory (or s3:// URI)."),
    run_name: str = typer.Option(None, "--run-name", help="Reuse a name to resume that run."),
    sets: list[str] = typer.Option([], "--set", help="Recipe override key=value (repeatable)."),
    storage: str = typer.Option(None, "--storage", help="Ray Train storage path; default <root>/runs."),
    ref_out: Path = typer.Option(None, "--ref-out", help="Also write the CheckpointRef JSON here."),
) -> None:
    """Train RECIPE on DATA with Ray Train; progress streams from the workers."""
    from rich.console import Console
    from rich.table import Table

    from eyeops.evaluate.runner import dataset_ref
    from eyeops.recipes import load_recipe
    from eyeops.train import train

    console = Console(stderr=True)
    chosen = load_recipe(recipe).with_overrides(parse_sets(sets)) if sets else load_recipe(recipe)
    dataset = dataset_ref(data)
    cfg = chosen.train
    console.print(
        f"[bold]training[/bold] {chosen.name} ({chosen.family}, {cfg.strategy}) on "
        f"{cfg.num_workers} worker(s), dataset {dataset.name} ({dataset.num_samples} samples)"
    )
    ref = train(chosen, dataset, run_name=run_name, storage_path=storage)

    table = Table(title=f"run {ref.run_name}", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("step", "resumed_from_step", "train_seconds", "train_samples_per_s"):
        if key in ref.metrics:
            table.add_row(key, f"{ref.metrics[key]:.4g}")
    console.print(table)
    if ref_out:
        ref_out.parent.mkdir(parents=True, exist_ok=True)
        ref_out.write_text(ref.model_dump_json(indent=2), encoding="utf-8")
    typer.echo(ref.uri)  # stdout carries only the URI, so scripts can capture it


def register(root: typer.Typer) -> None:
    root.command("train")(train_command)
