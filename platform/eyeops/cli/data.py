"""``eyeops data``: prepare a dataset from any source, inspect a prepared one."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from eyeops.errors import ConfigError, EyeopsError

console = Console()
err_console = Console(stderr=True)
app = typer.Typer(help="Prepare and inspect ophthalmic datasets.", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="data")


def _fail(exc: EyeopsError) -> None:
    err_console.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
    raise typer.Exit(2)


def _summary(manifest, title: str) -> None:
    table = Table(title=title, show_header=True)
    for col in ("task", "modality", "train", "val", "test"):
        table.add_column(col, justify="right" if col in ("train", "val", "test") else "left")
    rows: dict[tuple[str, str], Counter] = {}
    for key, n in manifest.counts.items():
        task, modality, split = key.split("/")
        rows.setdefault((task, modality), Counter())[split] += n
    for (task, modality), by_split in sorted(rows.items()):
        table.add_row(task, modality, *(str(by_split.get(s, 0)) for s in ("train", "val", "test")))
    console.print(table)
    total = sum(manifest.counts.values())
    console.print(f"samples: {total}   files: {len(manifest.files)}   sources: {', '.join(manifest.sources)}")
    split_state = "[green]ok[/green]" if manifest.patient_split_ok else "[red]VIOLATED[/red]"
    console.print(
        f"patients per split: {manifest.patients_per_split or '-'}   patient-level split: {split_state}"
    )
    console.print(f"de-identification: {manifest.deid or '-'}")
    console.print(
        f"duplicates dropped: {manifest.duplicates_dropped}   "
        f"near-duplicate pairs flagged: {len(manifest.near_duplicates)}"
    )
    if manifest.quarantine:
        q = Table(title=f"quarantined: {len(manifest.quarantine)}", show_header=True)
        q.add_column("where")
        q.add_column("reason")
        for entry in manifest.quarantine[:10]:
            q.add_row(entry.path, entry.reason)
        if len(manifest.quarantine) > 10:
            q.add_row("…", f"{len(manifest.quarantine) - 10} more in manifest.json")
        console.print(q)
    if manifest.import_counts:
        kept, filtered, rejected = (
            manifest.import_counts.get(k, 0) for k in ("kept", "filtered", "rejected")
        )
        console.print(
            f"imported: {kept} kept, {filtered} filtered out, {rejected} rejected"
            + (f"   filter: {', '.join(manifest.filter)}" if manifest.filter else "")
            + (f"   benchmark: {manifest.benchmark} (evaluation-only)" if manifest.benchmark else "")
        )
    if manifest.masked:
        console.print(f"masked in free text: {', '.join(f'{k} {v}' for k, v in manifest.masked.items())}")
    if manifest.generation:
        counts = manifest.generation.get("counts", {})
        calls = manifest.generation.get("calls", {})
        console.print(
            f"LLM engine ({manifest.generation.get('model')}): "
            + ", ".join(f"{k} {v}" for k, v in counts.items())
            + f"   calls {calls.get('calls', 0)}, cache hits {calls.get('cache_hits', 0)}"
        )
    for entry in manifest.mix:
        console.print(
            f"mix: {entry['source']} ({entry.get('path') or '-'}): took {entry['taken']} of "
            f"{entry['available']} record(s), weight {entry.get('weight') or '-'}, "
            f"samples {entry.get('samples')}"
        )
    console.print(f"fingerprint: {manifest.fingerprint}")


@app.command("prepare")
def prepare_cmd(
    path: str | None = typer.Argument(None, help="Input file for importers (csv/xlsx/json/jsonl/parquet)."),
    source: str = typer.Option(
        "synthetic",
        "--source",
        "-s",
        help="synthetic | odir | llava | mcq | essay | alpaca | raw_dialogue | corpus | knowledge, or a "
        "benchmark: medmcqa | pubmedqa | medquad | vqa_rad | slake | omnimedvqa | ophtimus_eval | "
        "flashcards | wikidoc (mixes and the LLM engine: --spec)",
    ),
    spec_file: Path | None = typer.Option(
        None,
        "--spec",
        help="A YAML data spec (or a recipe: its data: section): mixes, data.engine (llm), data.corpus. "
        "Replaces the source/data options above (giving them as well is an error).",
    ),
    out: str = typer.Option(..., "--out", "-o", help="Output directory or s3://bucket/prefix."),
    name: str | None = typer.Option(None, help="Dataset name (default: the output folder's name)."),
    n: int = typer.Option(600, help="Synthetic: number of images."),
    seed: int = typer.Option(0, help="Seed for generation and the split."),
    image_size: int = typer.Option(256, help="Longer side of stored images, px."),
    tasks: str = typer.Option(
        "classify", help="Comma-separated tasks to derive, e.g. classify,closed_qa,report."
    ),
    val_fraction: float | None = typer.Option(None, help="Default 0.15 (0 with --benchmark)."),
    test_fraction: float | None = typer.Option(None, help="Default 0.15 (1.0 with --benchmark)."),
    benchmark: bool = typer.Option(
        False, "--benchmark", help="Evaluation-only: the whole source becomes the test split (no re-split)."
    ),
    filter_: str | None = typer.Option(
        None,
        "--filter",
        help="Benchmarks: comma-separated subjects/keywords to keep (e.g. Ophthalmology); '' keeps all.",
    ),
    image_format: str = typer.Option("png", "--format", help="png (lossless) or jpeg (q95)."),
    workers: int | None = typer.Option(None, help="Decode threads (default: 2 × CPUs, at most 8)."),
    mlflow: bool = typer.Option(False, "--mlflow", help="Log the quality report with the dataset to MLflow."),
) -> None:
    """Import, check, de-identify, split and store a dataset; print what was kept and rejected."""
    from eyeops.data import prepare, read_manifest
    from eyeops.recipes import DataSpec, load_data_spec

    try:
        if spec_file:  # the spec has these settings itself: silently dropping a given one would mislead
            given = {
                "PATH": path is not None,
                "--source": source != "synthetic",
                "--tasks": tasks != "classify",
                "--n": n != 600,
                "--seed": seed != 0,
                "--image-size": image_size != 256,
                "--benchmark": benchmark,
                "--filter": filter_ is not None,
                "--val-fraction": val_fraction is not None,
                "--test-fraction": test_fraction is not None,
            }
            if clash := [option for option, on in given.items() if on]:
                raise ConfigError(f"--spec replaces {', '.join(clash)}: set them in {spec_file} instead")
        try:
            spec = (
                load_data_spec(spec_file, "--spec")
                if spec_file
                else DataSpec(
                    source=source,
                    path=path,
                    n=n,
                    seed=seed,
                    image_size=image_size,
                    tasks=[t.strip() for t in tasks.split(",") if t.strip()],
                    role="benchmark" if benchmark else "train",
                    **(
                        {"filter": [t.strip() for t in filter_.split(",") if t.strip()]}
                        if filter_ is not None
                        else {}
                    ),
                    **{
                        k: v
                        for k, v in (("val_fraction", val_fraction), ("test_fraction", test_fraction))
                        if v is not None
                    },
                )
            )
        except ValidationError as exc:
            detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'data'}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"invalid data options: {detail}") from None
        if image_format not in ("png", "jpeg"):
            raise ConfigError(f"--format must be png or jpeg, got {image_format!r}")
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as bar:

            def hook(description: str, total: int):
                task_id = bar.add_task(description, total=total)
                return lambda k=1: bar.advance(task_id, k)

            ref = prepare(
                spec,
                out,
                name=name or Path(out.rstrip("/")).name or "dataset",
                image_format=image_format,
                workers=workers,
                progress=hook,
            )
        _summary(read_manifest(ref.uri), f"dataset {ref.name} → {ref.uri}")
        if mlflow:
            _log(ref.uri)
    except EyeopsError as exc:
        _fail(exc)


def _log(uri: str) -> None:
    from eyeops.data.report import log_to_mlflow

    run_id = log_to_mlflow(uri)
    console.print(f"quality report logged to MLflow: run {run_id} (artifacts dataset/quality.html)")


@app.command("report")
def report_cmd(
    uri: str = typer.Argument(..., help="Dataset directory or s3:// URI."),
    mlflow: bool = typer.Option(False, "--mlflow", help="Also log it with the dataset to MLflow."),
) -> None:
    """Show where a dataset's quality report is (quality.html), and log it to MLflow."""
    from eyeops.data import local_dataset_dir, read_manifest
    from eyeops.data.report import REPORT_HTML

    try:
        manifest = read_manifest(uri)
        page = local_dataset_dir(uri) / REPORT_HTML
        console.print(
            f"quality report: {page if page.is_file() else '(none: prepared before reports existed)'}"
        )
        _summary(manifest, f"dataset {manifest.name} ({uri})")
        if mlflow:
            _log(uri)
    except EyeopsError as exc:
        _fail(exc)


@app.command("inspect")
def inspect_cmd(
    uri: str = typer.Argument(..., help="Dataset directory or s3:// URI."),
    verify: bool = typer.Option(False, "--verify", help="Re-hash every file against the manifest."),
) -> None:
    """Show a prepared dataset's counts, quarantine report, split check and fingerprint."""
    from eyeops.data import local_dataset_dir, read_manifest
    from eyeops.data.store import sha256_file

    try:
        manifest = read_manifest(uri)
        _summary(manifest, f"dataset {manifest.name} ({uri})")
        if verify:
            root = local_dataset_dir(uri)
            bad = [
                f.path
                for f in manifest.files
                if not (root / f.path).is_file() or sha256_file(root / f.path) != f.sha256
            ]
            if bad:
                err_console.print(
                    f"[bold red]{len(bad)} file(s) differ from the manifest:[/bold red] {', '.join(bad[:5])}",
                    highlight=False,
                )
                raise typer.Exit(1)
            console.print(f"[green]verified {len(manifest.files)} files[/green]")
    except EyeopsError as exc:
        _fail(exc)
