"""``eyeops evaluate MODEL --data DIR…`` and ``eyeops report``: benchmark any model, print the table.

MODEL is a registered model (``NAME@alias``, ``NAME/3``), a model directory (or a CheckpointRef
JSON file), or ``base`` / ``base:<hub id | dir>`` — the recipe's model zero-shot, no fine-tuning.
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def evaluate_command(
    model: str = typer.Argument(
        ...,
        help="NAME@alias | NAME/N | a model directory | a CheckpointRef JSON | base | base:<hub id or dir>.",
    ),
    data: list[str] = typer.Option(
        ..., "--data", "-d", help="Prepared dataset or benchmark directory (or s3:// URI); repeatable."
    ),
    recipe: str = typer.Option(
        None,
        "--recipe",
        "-r",
        help="Recipe name or YAML path; default: the recipe saved with the model (required for base).",
    ),
    label: str = typer.Option(None, "--label", help="Row name in `eyeops report` (default: from MODEL)."),
    max_per_task: int = typer.Option(
        None, "--max-per-task", min=0, help="Score at most N items per task (0: all); default: the recipe's."
    ),
    out: str = typer.Option(None, "--out", "-o", help="Report directory; default under the storage root."),
    device: str = typer.Option(
        None, "--device", help="auto | cpu | cuda | cuda:N | mps; default: the recipe's evaluate.device."
    ),
    log: bool = typer.Option(True, "--log/--no-log", help="Log one MLflow run for MODEL x the datasets."),
) -> None:
    """Evaluate MODEL on each DATA and print the metrics; one MLflow run per model x benchmark set."""
    from eyeops.evaluate.benchmark import evaluate_benchmarks
    from eyeops.evaluate.runner import dataset_ref
    from eyeops.evaluate.targets import resolve_target

    target = resolve_target(model, recipe, label=label)
    limit = "recipe" if max_per_task is None else (max_per_task or None)
    run = evaluate_benchmarks(
        target, [dataset_ref(d) for d in data], max_per_task=limit, device=device, out_dir=out, log=log
    )
    for result in run.results:
        _print_report(result.report, f"{target.label} · {result.name}")
    if run.run_id:
        console.print(f"MLflow run {run.run_id} (experiment eyeops-benchmarks, model {target.label!r})")


def _print_report(report, title: str) -> None:
    table = Table(title=f"{title} · split {report.split} · {report.num_samples} samples")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in sorted(report.metrics.items()):
        if name.count("/") <= 1 and name.rsplit("/", 1)[-1] != "n":
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


def report_command(
    recipe: str = typer.Option(None, "--recipe", "-r", help="Only models evaluated under this recipe name."),
    benchmark: list[str] = typer.Option(None, "--benchmark", "-b", help="Only these benchmarks; repeatable."),
    metric: list[str] = typer.Option(
        None,
        "--metric",
        "-m",
        help="Column glob over <benchmark>/<metric>, e.g. '*/mcq/accuracy'; repeatable.",
    ),
    out: str = typer.Option(
        None, "--out", "-o", help="Export directory; default <storage>/reports/<recipe>."
    ),
    log: bool = typer.Option(True, "--log/--no-log", help="Log the exports as an MLflow run."),
) -> None:
    """The papers' table: rows = models (base first), columns = benchmark metrics; md + csv + chart."""
    from eyeops.evaluate.report import collect, default_out_dir, export

    table = collect(recipe=recipe, benchmarks=benchmark or None, metrics=metric or None)
    # One terminal table per benchmark (rows = models, columns = its metrics) stays readable; the
    # exported markdown / CSV hold them side by side.
    by_bench: dict[str, list[str]] = {}
    for column in table.columns:
        by_bench.setdefault(column.split("/", 1)[0], []).append(column)
    for bench, columns in by_bench.items():
        view = Table(title=f"{bench}" + (f" · {recipe}" if recipe else ""))
        view.add_column("model")
        for column in columns:
            view.add_column(column.split("/", 1)[1], justify="right")
        for row in table.rows:
            if not any(c in row.values for c in columns):
                continue
            name = f"{row.model} [dim](zero-shot)[/dim]" if row.kind == "base" else row.model
            view.add_row(name, *(_cell(row.values.get(c)) for c in columns))
        console.print(view)
    files = export(table, out or default_out_dir(recipe), log=log)
    console.print(f"wrote {files.markdown}, {files.csv}, {files.chart}")
    if files.run_id:
        console.print(f"MLflow run {files.run_id} (experiment eyeops-benchmarks)")


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_command)
    app.command("report")(report_command)
