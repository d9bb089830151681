"""The evaluate stage: checkpoint + dataset → metrics, tables, plots and a model card.

``evaluate`` is family-agnostic. It loads the model through the family, selects the eval split,
and hands both to the family's ``evaluate(ctx) -> EvalOutput`` (the :class:`eyeops.families.Family`
contract: multi-label metrics for the classifier, text metrics for the LLM and VLM families). The
runner then writes ``metrics.json``, the tables (CSV + JSON) and ``model_card.md`` and returns an
:class:`eyeops.refs.EvalReport`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from eyeops import storage
from eyeops.config import get_settings
from eyeops.data.store import local_dataset_dir, read_manifest
from eyeops.devices import resolve_device
from eyeops.errors import ConfigError, DataError, NotFoundError
from eyeops.evaluate.card import render_card
from eyeops.families import EvalContext, get_family
from eyeops.recipes import Recipe
from eyeops.refs import CheckpointRef, DatasetRef, EvalReport

SAMPLES_FILE = "samples.parquet"
MANIFEST_FILE = "manifest.json"


# --- inputs -----------------------------------------------------------------------------------------
def dataset_ref(uri: str) -> DatasetRef:
    """A :class:`DatasetRef` for a prepared dataset directory (local or s3://), from its manifest."""
    manifest = read_manifest(uri)
    return DatasetRef(
        uri=uri,
        fingerprint=manifest.fingerprint,
        name=manifest.name,
        num_samples=sum(manifest.counts.values()),
    )


def checkpoint_ref(model_dir: str, recipe: Recipe) -> CheckpointRef:
    """A :class:`CheckpointRef` for a bare model directory (e.g. one copied out of a training run).

    The step and run name come from the Ray checkpoint around it (``../meta.json``) when present.
    """
    path = storage.local_copy(model_dir)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    if not files:
        raise NotFoundError(f"model directory {model_dir!r} is empty")
    outer = hashlib.sha256()
    for file in files:
        outer.update(
            f"{file.relative_to(path).as_posix()}\0{hashlib.sha256(file.read_bytes()).hexdigest()}\n".encode()
        )
    step, run_name = 0, path.name
    meta = path.parent / "meta.json"
    if meta.is_file():
        try:
            step = int(json.loads(meta.read_text(encoding="utf-8")).get("step", 0))
        except (ValueError, TypeError, AttributeError) as exc:
            raise DataError(f"unreadable checkpoint meta: {exc}", file=str(meta), field="step") from None
        run_name = path.parent.parent.name
    return CheckpointRef(
        uri=str(path),
        fingerprint=outer.hexdigest(),
        recipe_name=recipe.name,
        family=recipe.family,
        run_name=run_name,
        step=step,
    )


def read_split(data_dir: Path, split: str) -> pd.DataFrame:
    """The rows of ``samples.parquet`` in ``split`` (index reset; ``row`` keeps the file row)."""
    path = data_dir / SAMPLES_FILE
    if not path.is_file():
        raise NotFoundError(f"{data_dir}: no {SAMPLES_FILE} (is this a prepared dataset directory?)")
    try:
        frame = pq.read_table(path).to_pandas()
    except (OSError, ValueError) as exc:
        raise DataError(f"unreadable Parquet table: {exc}", file=str(path)) from None
    if "split" not in frame.columns:
        raise DataError("missing column", file=str(path), field="split")
    frame["row"] = np.arange(len(frame))
    rows = frame[frame["split"] == split].reset_index(drop=True)
    if rows.empty:
        found = sorted(str(s) for s in frame["split"].dropna().unique())
        raise DataError(
            f"no samples in split {split!r} (splits present: {found})", file=str(path), field="split"
        )
    return rows


def limit_per_task(rows: pd.DataFrame, limit: int | None) -> pd.DataFrame:
    """At most ``limit`` rows of each task, the first by sample id (deterministic across runs)."""
    if limit is None or "task" not in rows.columns:
        return rows
    ordered = rows.sort_values(["task", "id"], kind="stable")
    return ordered.groupby("task", sort=False).head(limit).sort_values("row").reset_index(drop=True)


# --- the stage ----------------------------------------------------------------------------------------
def _write_table(rows: Sequence[Mapping[str, object]], path: Path) -> None:
    path.write_text(json.dumps(list(rows), indent=2), encoding="utf-8")
    with path.with_suffix(".csv").open("w", newline="", encoding="utf-8") as fh:
        if rows:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def _default_out_dir(checkpoint: CheckpointRef, split: str) -> Path:
    settings = get_settings()
    if settings.is_local_storage:
        return Path(settings.path("evaluations", checkpoint.run_name, split))
    return Path(tempfile.mkdtemp(prefix=f"eyeops-eval-{checkpoint.run_name}-"))


def evaluate(
    recipe: Recipe,
    checkpoint: CheckpointRef,
    dataset: DatasetRef,
    *,
    out_dir: str | None = None,
    batch_size: int = 32,
    device: str | None = None,
    require_primary: bool = True,
) -> EvalReport:
    """Evaluate ``checkpoint`` on ``recipe.evaluate.split`` of ``dataset``; write the report files.

    The model loads on ``device`` when given, else on ``recipe.evaluate.device`` (``auto``: the
    settings' device, whose ``auto`` is the accelerator when present). ``require_primary=False``
    (benchmarks: MedQuAD has essays but no MCQ) notes a missing primary metric instead of failing.
    """
    if checkpoint.family != recipe.family:
        raise ConfigError(
            f"checkpoint family {checkpoint.family!r} differs from recipe family {recipe.family!r}"
        )
    split = recipe.evaluate.split
    model_dir = storage.local_copy(checkpoint.uri)  # s3 checkpoints are downloaded once
    data_dir = local_dataset_dir(dataset.uri)  # s3 datasets are downloaded and verified once
    out = Path(out_dir) if out_dir else _default_out_dir(checkpoint, split)
    out.mkdir(parents=True, exist_ok=True)

    family = get_family(recipe.family)
    if device:
        where = resolve_device(device, field="--device")
    else:
        where = resolve_device(recipe.evaluate.device, field="evaluate.device")
    split_rows = read_split(data_dir, split)
    ctx = EvalContext(
        recipe=recipe,
        model=family.load(model_dir, device=where),
        data_dir=data_dir,
        samples=limit_per_task(split_rows, recipe.evaluate.max_per_task),
        out_dir=out,
        manifest=read_manifest(data_dir),
        batch_size=batch_size,
    )
    result = family.evaluate(ctx)

    primary = recipe.evaluate.primary_metric
    notes = list(result.notes)
    if recipe.evaluate.max_per_task is not None:
        notes.append(
            f"scored {len(ctx.samples)} of {len(split_rows)} {split} samples "
            f"(evaluate.max_per_task={recipe.evaluate.max_per_task})"
        )
    if primary not in result.metrics:
        if primary in result.undefined:
            notes.append(f"primary metric {primary!r} is undefined on this split")
        elif not require_primary:
            notes.append(f"primary metric {primary!r} is not scored on this dataset")
        else:
            known = ", ".join(sorted(k for k in result.metrics if "/" not in k))
            raise ConfigError(
                f"evaluate.primary_metric {primary!r} is not a metric of this evaluator (known: {known})"
            )

    artifacts = dict(result.artifacts)
    tables_dir = out / "tables"
    tables_dir.mkdir(exist_ok=True)
    for name, rows in result.tables.items():
        _write_table(rows, tables_dir / f"{name}.json")
        artifacts[f"table_{name}"] = str(tables_dir / f"{name}.csv")
    metrics_file = out / "metrics.json"
    metrics_file.write_text(
        json.dumps(
            {
                "split": split,
                "num_samples": result.num_samples,
                "primary_metric": primary,
                "metrics": result.metrics,
                "undefined": result.undefined,
                "notes": notes,
                "checkpoint": checkpoint.model_dump(mode="json"),
                "dataset": dataset.model_dump(mode="json"),
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    artifacts["metrics"] = str(metrics_file)
    card = out / "model_card.md"
    card.write_text(
        render_card(
            recipe,
            checkpoint,
            dataset,
            split=split,
            num_samples=result.num_samples,
            metrics=result.metrics,
            tables=result.tables,
            notes=notes,
            manifest=ctx.manifest,
            labels=result.labels,
        ),
        encoding="utf-8",
    )
    artifacts["model_card"] = str(card)
    return EvalReport(
        uri=str(out),
        split=split,
        num_samples=result.num_samples,
        metrics=result.metrics,
        primary_metric=primary,
        tables=result.tables,
        artifacts=artifacts,
    )
