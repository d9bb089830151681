"""The papers' table from MLflow: rows = models (base models first), columns = benchmark metrics.

:func:`collect` reads the evaluation runs :mod:`eyeops.evaluate.benchmark` logged
(``MlflowClient.search_runs`` over the tags) — ``eyeops evaluate`` runs and the base model /
candidate evaluations the gate made — keeping each model's newest value per benchmark metric;
:func:`export` writes ``report.md``, ``report.csv``, ``report.json`` and a grouped bar chart
``report.png`` (matplotlib) and logs them, with the table through ``mlflow.log_table``, as one
``eyeops.eval_kind=report`` run of the same experiment.
"""

from __future__ import annotations

import csv
import fnmatch
import json
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from eyeops.config import get_settings
from eyeops.errors import NotFoundError
from eyeops.evaluate.benchmark import EXPERIMENT, find_runs

# Counts and parse bookkeeping, not scores: never a column unless asked for by --metric.
_NOT_SCORES = ("n", "correct", "unparseable", "unparsed_rate", "missing")


class ReportRow(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    model: str
    kind: str
    recipe: str
    values: dict[str, float]
    run_ids: list[str]


class ReportTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    columns: list[str]
    rows: list[ReportRow]

    def value(self, model: str, column: str) -> float | None:
        row = next((r for r in self.rows if r.model == model), None)
        return None if row is None else row.values.get(column)


def _headline(metric: str) -> bool:
    """``<benchmark>/<task>/<metric>`` or ``<benchmark>/<metric>``: no breakdowns, no counts."""
    parts = metric.split("/")
    return 2 <= len(parts) <= 3 and parts[-1] not in _NOT_SCORES


def collect(
    *,
    recipe: str | None = None,
    benchmarks: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    kinds: Sequence[str] = ("benchmark", "gate-baseline", "gate-candidate"),
) -> ReportTable:
    """The table over the evaluation runs of ``kinds`` (optionally of one recipe / some benchmarks):
    ``eyeops evaluate`` runs and the base model / candidate pairs the gate measured.

    ``metrics`` are glob patterns over ``<benchmark>/<metric>`` (e.g. ``*/mcq/accuracy``); without
    them every headline score is a column (overall task metrics; no breakdowns, no counts).
    """
    filters = {"eyeops.recipe": recipe} if recipe else {}
    runs = [r for r in find_runs(filters) if r.data.tags.get("eyeops.eval_kind") in kinds]
    wanted = set(benchmarks or [])
    rows: dict[str, dict] = {}
    for run in runs:  # newest first: the first value seen for a cell wins
        tags = run.data.tags
        names = [b for b in tags.get("eyeops.benchmarks", "").split(",") if b]
        if wanted and not wanted & set(names):
            continue
        label = tags.get("eyeops.model", run.info.run_id)
        row = rows.setdefault(
            label,
            {
                "kind": tags.get("eyeops.model_kind", ""),
                "recipe": tags.get("eyeops.recipe", ""),
                "values": {},
            },
        )
        used = False
        for key, value in run.data.metrics.items():
            bench = key.split("/", 1)[0]
            if bench not in names or (wanted and bench not in wanted) or key in row["values"]:
                continue
            chosen = any(fnmatch.fnmatchcase(key, p) for p in metrics) if metrics else _headline(key)
            if chosen:
                row["values"][key] = float(value)
                used = True
        if used:
            row.setdefault("run_ids", []).append(run.info.run_id)
    rows = {k: v for k, v in rows.items() if v["values"]}
    if not rows:
        scope = f" of recipe {recipe!r}" if recipe else ""
        raise NotFoundError(
            f"no benchmark evaluations{scope} in MLflow experiment {EXPERIMENT!r} match; "
            "run `eyeops evaluate MODEL --data DIR` first"
        )
    columns = sorted({c for r in rows.values() for c in r["values"]})
    ordered = sorted(rows.items(), key=lambda kv: (kv[1]["kind"] != "base", kv[0]))
    return ReportTable(
        columns=columns,
        rows=[
            ReportRow(model=k, kind=v["kind"], recipe=v["recipe"], values=v["values"], run_ids=v["run_ids"])
            for k, v in ordered
        ],
    )


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def to_markdown(table: ReportTable) -> str:
    """A GitHub table: one row per model, one column per benchmark metric."""
    lines = [
        "| model | " + " | ".join(table.columns) + " |",
        "|---|" + "---:|" * len(table.columns),
    ]
    for row in table.rows:
        name = f"{row.model} (zero-shot)" if row.kind == "base" else row.model
        lines.append(f"| {name} | " + " | ".join(_cell(row.values.get(c)) for c in table.columns) + " |")
    return "\n".join(lines) + "\n"


def write_csv(table: ReportTable, path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["model", "kind", *table.columns])
        for row in table.rows:
            values = ["" if row.values.get(c) is None else f"{row.values[c]:.6g}" for c in table.columns]
            writer.writerow([row.model, row.kind, *values])


def bar_chart(table: ReportTable, path: Path):
    """Grouped bars: one group per benchmark metric, one bar per model. Returns the figure."""
    import numpy as np

    from eyeops.evaluate.plots import plt

    n_cols, n_rows = len(table.columns), len(table.rows)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * n_cols * max(1, n_rows) / 2 + 2), 4.5))
    width = 0.8 / max(1, n_rows)
    x = np.arange(n_cols)
    for i, row in enumerate(table.rows):
        heights = [row.values.get(c, np.nan) for c in table.columns]
        ax.bar(x + (i - (n_rows - 1) / 2) * width, heights, width, label=row.model)
    ax.set_xticks(x, table.columns, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("score")
    ax.set_title("benchmarks: base model (zero-shot) vs fine-tuned")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return fig


def default_out_dir(recipe: str | None = None) -> str:
    """Where the report goes without ``--out``: ``<storage>/reports/<recipe or all>`` on local
    storage, else ``./eyeops-report``."""
    settings = get_settings()
    if settings.is_local_storage:
        return settings.path("reports", recipe or "all")
    return str(Path.cwd() / "eyeops-report")


class ReportFiles(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    markdown: str
    csv: str
    json_file: str
    chart: str
    run_id: str | None


def export(table: ReportTable, out_dir: str | Path, *, log: bool = True) -> ReportFiles:
    """Write the table as Markdown, CSV, JSON and a bar chart; ``log``: also as an MLflow run."""
    from eyeops.evaluate.plots import plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, csv_path, js, png = (out / f"report.{ext}" for ext in ("md", "csv", "json", "png"))
    md.write_text(to_markdown(table), encoding="utf-8")
    write_csv(table, csv_path)
    js.write_text(json.dumps(table.model_dump(mode="json"), indent=2), encoding="utf-8")
    fig = bar_chart(table, png)
    run_id = _log_report(table, out, fig) if log else None
    plt.close(fig)
    return ReportFiles(markdown=str(md), csv=str(csv_path), json_file=str(js), chart=str(png), run_id=run_id)


def _log_report(table: ReportTable, out: Path, fig) -> str:
    import mlflow
    import pandas as pd

    from eyeops.registry.mlflow_registry import client, experiment_id, mlflow_errors

    c = client()
    recipes = sorted({r.recipe for r in table.rows if r.recipe})
    tags = {
        "eyeops.eval_kind": "report",
        "eyeops.recipe": ",".join(recipes),
        "eyeops.models": str(len(table.rows)),
    }
    frame = pd.DataFrame(
        [
            {"model": r.model, "kind": r.kind, **{c: r.values.get(c) for c in table.columns}}
            for r in table.rows
        ]
    )
    with (
        mlflow_errors("logging the benchmark report"),
        mlflow.start_run(experiment_id=experiment_id(c, EXPERIMENT), run_name="report", tags=tags) as run,
    ):
        for name in ("report.md", "report.csv", "report.json"):
            mlflow.log_artifact(str(out / name), artifact_path="report")
        mlflow.log_figure(fig, "report/report.png")
        mlflow.log_table(frame, artifact_file="report/table.json")
        return run.info.run_id
