"""``eyeops evaluate CHECKPOINT --data DIR``: metrics, plots and a model card for one checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer

from eyeops.errors import NotFoundError


def evaluate_command(
    checkpoint: str = typer.Argument(
        ..., help="A model directory written by training, or a CheckpointRef JSON file."
    ),
    data: str = typer.Option(..., "--data", "-d", help="Prepared dataset directory (or s3:// URI)."),
    recipe: str = typer.Option(
        None, "--recipe", "-r", help="Recipe name or YAML path; default: the recipe saved with the model."
    ),
    out: str = typer.Option(None, "--out", "-o", help="Report directory; default under the storage root."),
    device: str = typer.Option(
        None, "--device", help="auto | cpu | cuda | cuda:N | mps; default: the recipe's evaluate.device."
    ),
) -> None:
    """Evaluate CHECKPOINT on the recipe's eval split of DATA and print the metrics."""
    from rich.console import Console
    from rich.table import Table

    from eyeops.evaluate.runner import checkpoint_ref, dataset_ref, evaluate
    from eyeops.recipes import load_recipe
    from eyeops.refs import CheckpointRef
    from eyeops.storage import local_copy

    if checkpoint.endswith(".json") and Path(checkpoint).is_file():
        ref = CheckpointRef.model_validate_json(Path(checkpoint).read_text(encoding="utf-8"))
        chosen = load_recipe(recipe or _saved_recipe(local_copy(ref.uri)))
    else:
        chosen = load_recipe(recipe or _saved_recipe(local_copy(checkpoint)))
        ref = checkpoint_ref(checkpoint, chosen)
    report = evaluate(chosen, ref, dataset_ref(data), out_dir=out, device=device)

    console = Console()
    table = Table(title=f"{chosen.name} · split {report.split} · {report.num_samples} samples")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in sorted(report.metrics.items()):
        if "/" not in name and name != "n":
            style = "bold" if name == report.primary_metric else ""
            table.add_row(name, f"{value:.4f}", style=style)
    console.print(table)
    per_class = report.tables.get("per_class")
    if per_class:
        classes = Table(title="per class")
        for column in per_class[0]:
            classes.add_column(column, justify="left" if column == "label" else "right")
        for row in per_class:
            classes.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()))
        console.print(classes)
    console.print(f"report: {report.uri}")


def _saved_recipe(model_dir: Path) -> str:
    path = model_dir / "recipe.yaml"
    if not path.is_file():
        raise NotFoundError(f"{model_dir} holds no recipe.yaml: pass --recipe NAME")
    return str(path)


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_command)
