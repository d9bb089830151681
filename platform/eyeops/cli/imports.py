"""``eyeops import healthgpt``: released HealthGPT weights as a registered eyeops model."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

import_app = typer.Typer(help="Import released weights of a seed model.", no_args_is_help=True)
console = Console()


@import_app.command("healthgpt")
def healthgpt(
    com: Path | None = typer.Option(None, "--com", help="com_hlora_weights.bin (comprehension H-LoRA)."),
    gen: Path | None = typer.Option(None, "--gen", help="gen_hlora_weights.bin (generation H-LoRA)."),
    fusion: Path | None = typer.Option(None, "--fusion", help="fusion_layer_weights.bin (the projector)."),
    base: str | None = typer.Option(None, "--base", help="The base LLM (hub id or local dir): model.llm."),
    vqgan: Path | None = typer.Option(None, "--vqgan", help="taming VQGAN last.ckpt: model.vq.checkpoint."),
    recipe: str = typer.Option("healthgpt-m3", "--recipe", help="Recipe whose model the weights fit."),
    out: Path | None = typer.Option(
        None, "--out", help="Model directory (default <storage>/cache/imports/<recipe>)."
    ),
    dataset: str | None = typer.Option(None, "--dataset", help="Prepared dataset URI to evaluate on."),
    strict: bool = typer.Option(True, "--strict/--no-strict", help="Refuse missing/unexpected keys."),
    register: bool = typer.Option(True, "--register/--no-register", help="Register in MLflow."),
) -> None:
    """Map the released .bin key layouts onto the recipe's modules, report what was loaded,
    missing or unexpected, save a model directory and register it like a trained model."""
    from eyeops.models.healthgpt.release import import_healthgpt, register_import
    from eyeops.recipes import load_recipe
    from eyeops.storage import cache_dir

    chosen = load_recipe(recipe)
    overrides = {"model.llm": base} if base else {}
    if vqgan:
        overrides["model.vq.checkpoint"] = str(vqgan)
    chosen = chosen.with_overrides(overrides) if overrides else chosen
    target = out or cache_dir("imports") / chosen.name
    model_dir, report = import_healthgpt(chosen, target, com=com, gen=gen, fusion=fusion, strict=strict)
    table = Table(title=f"HealthGPT import -> {model_dir}")
    for column in ("file", "path", "tensors loaded"):
        table.add_column(column)
    for role, path in report.files.items():
        table.add_row(role, path, str(report.loaded.get(role, 0)))
    console.print(table)
    for label, keys in (("missing", report.missing), ("unexpected", report.unexpected)):
        if keys:
            console.print(f"[yellow]{len(keys)} {label}[/yellow]: {', '.join(keys[:5])}")
    if report.not_imported:
        console.print(f"not imported (initial adapters): {', '.join(report.not_imported)}")
    if register:
        from eyeops.evaluate.runner import dataset_ref

        ref = dataset_ref(dataset) if dataset else None
        _, version = register_import(chosen, model_dir, report, ref)
        console.print(f"registered {version.model_uri} (@{version.alias}: {version.gate_reason})")


def register(app: typer.Typer) -> None:
    app.add_typer(import_app, name="import")
