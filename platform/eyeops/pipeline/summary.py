"""The summary of one pipeline run: a row per stage plus the registered version and endpoint."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from rich.table import Table

from eyeops.pipeline.journal import StageRecord
from eyeops.refs import CheckpointRef, DatasetRef, Endpoint, EvalReport, ModelVersionRef

STAGES = ("prepare", "train", "evaluate", "register", "deploy")


class StageRow(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    stage: str
    status: str = Field(description="succeeded | failed | skipped")
    duration_s: float = 0.0
    attempts: int = 0
    metric: str | None = None
    value: float | None = None
    artifacts: dict[str, str] = Field(default_factory=dict)


class PipelineSummary(BaseModel):
    """What ``run_local`` hands back (and the CLI prints)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    recipe: str
    pipeline_run: str = Field(description="kfp.local run directory name (pipeline job name).")
    pipeline_root: str
    duration_s: float
    stages: list[StageRow]
    dataset: DatasetRef | None = None
    checkpoint: CheckpointRef | None = None
    report: EvalReport | None = None
    version: ModelVersionRef | None = None
    endpoint: Endpoint | None = None
    log: str | None = Field(None, description="kfp.local's task logs of the run.")

    def stage(self, name: str) -> StageRow:
        return next(row for row in self.stages if row.stage == name)


def summarise(
    recipe: str,
    pipeline_run: str,
    pipeline_root: str,
    duration_s: float,
    records: list[StageRecord],
    log: str | None = None,
) -> PipelineSummary:
    """Fold journal records (one per attempt) into one row per stage; the last attempt wins."""
    rows, refs = [], {}
    for name in STAGES:
        attempts = [r for r in records if r.stage == name]
        if not attempts:
            rows.append(StageRow(stage=name, status="skipped"))
            continue
        last = attempts[-1]
        rows.append(
            StageRow(
                stage=name,
                status=last.status,
                attempts=len(attempts),
                metric=last.metric,
                value=last.value,
                artifacts=last.artifacts,
                duration_s=round(sum(r.duration_s for r in attempts), 2),
            )
        )
        if last.status == "succeeded" and last.ref:
            refs[name] = last.ref
    return PipelineSummary(
        recipe=recipe,
        pipeline_run=pipeline_run,
        pipeline_root=pipeline_root,
        duration_s=round(duration_s, 1),
        stages=rows,
        dataset=DatasetRef.model_validate(refs["prepare"]) if "prepare" in refs else None,
        checkpoint=CheckpointRef.model_validate(refs["train"]) if "train" in refs else None,
        report=EvalReport.model_validate(refs["evaluate"]) if "evaluate" in refs else None,
        version=ModelVersionRef.model_validate(refs["register"]) if "register" in refs else None,
        endpoint=Endpoint.model_validate(refs["deploy"]) if "deploy" in refs else None,
        log=log,
    )


def summary_table(summary: PipelineSummary) -> Table:
    """A rich table: stage, status, duration, key metric, artefact URIs; version/endpoint in the caption."""
    title = f"pipeline {summary.pipeline_run} · recipe {summary.recipe} · {summary.duration_s:.0f}s"
    table = Table(title=title)
    for column in ("stage", "status", "duration", "key metric", "artefacts"):
        table.add_column(column, overflow="fold")
    colours = {"succeeded": "green", "failed": "red", "skipped": "dim"}
    for row in summary.stages:
        metric = f"{row.metric} = {row.value:.4g}" if row.metric and row.value is not None else ""
        retries = f" ({row.attempts} attempts)" if row.attempts > 1 else ""
        table.add_row(
            row.stage,
            f"[{colours.get(row.status, 'white')}]{row.status}[/]{retries}",
            f"{row.duration_s:.1f}s" if row.attempts else "",
            metric,
            "\n".join(f"{k}: {v}" for k, v in row.artifacts.items()),
        )
    notes = []
    if summary.version:
        v = summary.version
        notes.append(f"registered {v.name} v{v.version} @{v.alias} ({v.gate_reason})")
    if summary.endpoint:
        notes.append(f"endpoint {summary.endpoint.url}")
    table.caption = " · ".join(notes) or None
    return table
