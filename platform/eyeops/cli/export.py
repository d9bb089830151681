"""``eyeops export MODEL OUT``: a merged Hugging Face checkpoint of an eye-llm model."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console()


def export(
    model: str = typer.Argument(
        ..., help="Registered model (name, name@alias, name/N, models:/...) or a local llm model dir."
    ),
    out: Path = typer.Argument(..., help="Destination directory (must not exist or be empty)."),
) -> None:
    """Write MODEL as a plain Hugging Face checkpoint: LoRA merged in, tokenizer with the recipe's
    chat template and system prompt, safetensors. KServe's Hugging Face runtime, vLLM and
    transformers load it as they load any hub model."""
    from eyeops.models.llm.export import export_merged
    from eyeops.registry import resolve

    resolved = resolve(model)
    written = export_merged(resolved.model_dir, out)
    console.print(f"{resolved.model_uri}: Hugging Face checkpoint written to {written}")


def register(app: typer.Typer) -> None:
    app.command("export")(export)
