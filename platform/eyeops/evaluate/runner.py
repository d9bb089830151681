"""The evaluate stage: checkpoint + dataset → metrics, tables, plots and a model card.

``evaluate`` is family-agnostic. It loads the model through the family, selects the eval split,
and hands both to an *evaluator*: the family's own ``evaluate(ctx) -> EvalOutput`` when the
family object defines one (text metrics for LLM/VLM families), else
:func:`classification_evaluator`. The runner then writes ``metrics.json``, the tables (CSV + JSON)
and ``model_card.md`` and returns an :class:`eyeops.refs.EvalReport`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field

from eyeops import storage
from eyeops.config import get_settings
from eyeops.data.schema import Manifest
from eyeops.data.store import local_dataset_dir, read_manifest
from eyeops.errors import ConfigError, DataError, NotFoundError
from eyeops.evaluate import plots
from eyeops.evaluate.card import render_card
from eyeops.evaluate.metrics import ClassificationMetrics, breakdown, classification_metrics
from eyeops.families import get_family
from eyeops.inference import InferenceModel
from eyeops.recipes import Recipe
from eyeops.refs import CheckpointRef, DatasetRef, EvalReport

SAMPLES_FILE = "samples.parquet"
MANIFEST_FILE = "manifest.json"
Rows = list[dict[str, str | float | int]]


class EvalOutput(BaseModel):
    """What an evaluator returns: flat metrics, breakdown tables, notes and extra files it wrote."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    num_samples: int
    metrics: dict[str, float] = Field(description="Defined metrics only, e.g. macro_auc, eye/OD/kappa.")
    undefined: list[str] = Field(default_factory=list, description="Metric names that had no defined value.")
    tables: dict[str, Rows] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    artifacts: dict[str, str] = Field(default_factory=dict, description="name -> path under out_dir.")
    labels: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class EvalContext:
    """Everything an evaluator needs; ``samples`` holds the eval split's rows of samples.parquet."""

    recipe: Recipe
    model: InferenceModel
    data_dir: Path
    samples: pd.DataFrame
    out_dir: Path
    manifest: Manifest | None
    batch_size: int = 32


Evaluator = Callable[[EvalContext], EvalOutput]


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


# --- the default evaluator: multi-label classification ----------------------------------------------
_HEADLINE = ("macro_auc", "macro_f1", "kappa", "odir_score", "n")


def _label_columns(ctx: EvalContext) -> list[int]:
    """Column of each model label in the dataset's label vector (matched by name when declared)."""
    declared = ctx.manifest.label_names if ctx.manifest and ctx.manifest.label_names else None
    if declared is None:
        return list(range(len(ctx.model.labels)))
    missing = [lab for lab in ctx.model.labels if lab not in declared]
    if missing:
        raise DataError(
            f"model labels {missing} are not in the dataset's label set {declared}",
            file=str(ctx.data_dir / MANIFEST_FILE),
            field="label_names",
        )
    return [declared.index(lab) for lab in ctx.model.labels]


def _ground_truth(ctx: EvalContext, rows: pd.DataFrame, columns: list[int]) -> np.ndarray:
    width = (
        len(ctx.manifest.label_names) if ctx.manifest and ctx.manifest.label_names else len(ctx.model.labels)
    )
    truth = np.zeros((len(rows), len(columns)), dtype=int)
    for i, (labels, row, sid) in enumerate(zip(rows["labels"], rows["row"], rows["id"], strict=True)):
        values = [] if labels is None else list(labels)
        if len(values) != width or any(v not in (0, 1) for v in values):
            raise DataError(
                f"sample {sid!r}: labels must be {width} multi-hot 0/1 values, got {values}",
                file=str(ctx.data_dir / SAMPLES_FILE),
                row=int(row),
                field="labels",
            )
        truth[i] = [values[c] for c in columns]
    return truth


def _load_image(ctx: EvalContext, images, row: int, sid: str) -> Image.Image:
    where = {"file": str(ctx.data_dir / SAMPLES_FILE), "row": row, "field": "images"}
    if images is None or len(images) != 1:
        raise DataError(f"sample {sid!r}: a classify sample needs exactly one image", **where)
    try:
        with Image.open(ctx.data_dir / images[0]) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"sample {sid!r}: image {images[0]!r} not found", **where) from None
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(
            f"sample {sid!r}: cannot decode image {images[0]!r} ({type(exc).__name__})", **where
        ) from None


def predict_probabilities(ctx: EvalContext, rows: pd.DataFrame) -> np.ndarray:
    """(samples × model labels) probabilities, inferred in batches of ``ctx.batch_size``."""
    labels = list(ctx.model.labels)
    out = np.zeros((len(rows), len(labels)))
    for start in range(0, len(rows), ctx.batch_size):
        chunk = rows.iloc[start : start + ctx.batch_size]
        images = [
            _load_image(ctx, imgs, int(r), str(sid))
            for imgs, r, sid in zip(chunk["images"], chunk["row"], chunk["id"], strict=True)
        ]
        for k, result in enumerate(ctx.model.classify(images)):
            out[start + k] = [result.probabilities[lab] for lab in labels]
    return out


def _group_flat(
    prefix: str, groups: Mapping[str, ClassificationMetrics]
) -> tuple[dict[str, float], list[str]]:
    flat, undefined = {}, []
    for key, m in groups.items():
        for name in _HEADLINE:
            value = float(m.n) if name == "n" else getattr(m, name)
            if value is None:
                undefined.append(f"{prefix}/{key}/{name}")
            else:
                flat[f"{prefix}/{key}/{name}"] = float(value)
    return flat, undefined


def _group_keys(rows: pd.DataFrame, column: str) -> list[str]:
    if column not in rows.columns:
        return ["unknown"] * len(rows)
    return [
        "unknown" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in rows[column]
    ]


def classification_evaluator(ctx: EvalContext) -> EvalOutput:
    """Multi-label metrics overall, per modality and per eye, plus ROC / confusion / bar plots."""
    if "classify" not in ctx.model.capabilities:
        raise ConfigError(f"family {ctx.recipe.family!r} cannot classify and defines no evaluate() hook")
    rows = (
        ctx.samples[ctx.samples["task"] == "classify"].reset_index(drop=True)
        if "task" in ctx.samples.columns
        else ctx.samples
    )
    if rows.empty:
        raise DataError(
            f"no classify samples in split {ctx.recipe.evaluate.split!r}",
            file=str(ctx.data_dir / SAMPLES_FILE),
            field="task",
        )
    labels, threshold = list(ctx.model.labels), ctx.recipe.evaluate.threshold
    truth = _ground_truth(ctx, rows, _label_columns(ctx))
    probs = predict_probabilities(ctx, rows)

    overall = classification_metrics(truth, probs, labels, threshold)
    by_modality = breakdown(truth, probs, _group_keys(rows, "modality"), labels, threshold)
    by_eye = breakdown(truth, probs, _group_keys(rows, "eye"), labels, threshold)
    metrics = overall.flat()
    undefined = [n for n in ("macro_auc", "kappa", "odir_auc", "odir_score") if getattr(overall, n) is None]
    undefined += [f"auc/{m.label}" for m in overall.per_class if m.auc is None]
    for prefix, groups in (("modality", by_modality), ("eye", by_eye)):
        flat, missing = _group_flat(prefix, groups)
        metrics |= flat
        undefined += missing

    plot_dir = ctx.out_dir / "plots"
    artifacts = {
        "roc_curves": plots.roc_curves(truth, probs, labels, plot_dir / "roc_curves.png"),
        "confusion_matrices": plots.confusion_matrices(
            truth, probs, labels, threshold, plot_dir / "confusion_matrices.png"
        ),
        "class_metrics": plots.class_bars(overall, plot_dir / "class_metrics.png"),
    }
    predictions = pd.DataFrame(probs, columns=[f"p_{lab}" for lab in labels])
    predictions.insert(0, "id", rows["id"].astype(str).to_numpy())
    for j, lab in enumerate(labels):
        predictions[f"y_{lab}"] = truth[:, j]
    artifacts["predictions"] = ctx.out_dir / "predictions.csv"
    predictions.to_csv(artifacts["predictions"], index=False)

    tables = {
        "per_class": overall.class_rows(),
        "per_modality": [m.summary_row(modality=k) for k, m in by_modality.items()],
        "per_eye": [m.summary_row(eye=k) for k, m in by_eye.items()],
    }
    return EvalOutput(
        num_samples=len(rows),
        metrics=metrics,
        undefined=undefined,
        tables=tables,
        notes=list(overall.notes),
        labels=labels,
        artifacts={k: str(v) for k, v in artifacts.items()},
    )


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
) -> EvalReport:
    """Evaluate ``checkpoint`` on ``recipe.evaluate.split`` of ``dataset``; write the report files."""
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
    evaluator: Evaluator = getattr(family, "evaluate", None) or classification_evaluator
    split_rows = read_split(data_dir, split)
    ctx = EvalContext(
        recipe=recipe,
        model=family.load(model_dir),
        data_dir=data_dir,
        samples=limit_per_task(split_rows, recipe.evaluate.max_per_task),
        out_dir=out,
        manifest=read_manifest(data_dir),
        batch_size=batch_size,
    )
    result = evaluator(ctx)

    primary = recipe.evaluate.primary_metric
    notes = list(result.notes)
    if recipe.evaluate.max_per_task is not None:
        notes.append(
            f"scored {len(ctx.samples)} of {len(split_rows)} {split} samples "
            f"(evaluate.max_per_task={recipe.evaluate.max_per_task})"
        )
    if primary not in result.metrics:
        if primary not in result.undefined:
            known = ", ".join(sorted(k for k in result.metrics if "/" not in k))
            raise ConfigError(
                f"evaluate.primary_metric {primary!r} is not a metric of this evaluator (known: {known})"
            )
        notes.append(f"primary metric {primary!r} is undefined on this split")

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
