"""fundus-classifier evaluation: multi-label metrics the way ODIR-5K scores them, with breakdowns.

Per-class and macro AUC, F1, precision/recall at the recipe's threshold, and the ODIR-5K figures
computed like the challenge script (kappa, F1, AUC, final score = their mean) per eye (one image)
and, as the challenge scores, per patient (``patient/…``: both eyes' labels merged); breakdowns per
modality and eye; ROC / confusion / per-class bar plots and a predictions CSV. Classes whose ground
truth holds one value have no AUC: reported as undefined and excluded from the macro, never zeroed.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from eyeops.errors import DataError
from eyeops.evaluate import plots
from eyeops.evaluate.calibration import calibration_report
from eyeops.evaluate.metrics import ClassificationMetrics, breakdown, classification_metrics, patient_level
from eyeops.families import EvalContext, EvalOutput

SAMPLES_FILE, MANIFEST_FILE = "samples.parquet", "manifest.json"
_HEADLINE = ("macro_auc", "macro_f1", "kappa", "odir_score", "n")
_PATIENT_FIGURES = ("macro_auc", "macro_f1", "kappa", "odir_f1", "odir_auc", "odir_score", "n")


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


def predict_probabilities(ctx: EvalContext, rows: pd.DataFrame) -> tuple[np.ndarray, list[bool | None]]:
    """(samples × model labels) probabilities, inferred in batches of ``ctx.batch_size``, and each
    sample's out-of-distribution verdict (``None`` for a model without an OOD screen)."""
    labels = list(ctx.model.labels)
    out = np.zeros((len(rows), len(labels)))
    ood_flags: list[bool | None] = []
    for start in range(0, len(rows), ctx.batch_size):
        chunk = rows.iloc[start : start + ctx.batch_size]
        images = [
            _load_image(ctx, imgs, int(r), str(sid))
            for imgs, r, sid in zip(chunk["images"], chunk["row"], chunk["id"], strict=True)
        ]
        for k, result in enumerate(ctx.model.classify(images)):
            out[start + k] = [result.probabilities[lab] for lab in labels]
            ood_flags.append(result.out_of_distribution)
    return out, ood_flags


def _figures(
    prefix: str, m: ClassificationMetrics, names: tuple[str, ...]
) -> tuple[dict[str, float], list[str]]:
    """``{prefix/name: value}`` for the defined figures, and the names of the undefined ones."""
    flat, undefined = {}, []
    for name in names:
        value = float(m.n) if name == "n" else getattr(m, name)
        if value is None:
            undefined.append(f"{prefix}/{name}")
        else:
            flat[f"{prefix}/{name}"] = float(value)
    return flat, undefined


def _group_flat(
    prefix: str, groups: Mapping[str, ClassificationMetrics]
) -> tuple[dict[str, float], list[str]]:
    flat, undefined = {}, []
    for key, m in groups.items():
        defined, missing = _figures(f"{prefix}/{key}", m, _HEADLINE)
        flat |= defined
        undefined += missing
    return flat, undefined


def _group_keys(rows: pd.DataFrame, column: str) -> list[str]:
    if column not in rows.columns:
        return ["unknown"] * len(rows)
    return [
        "unknown" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in rows[column]
    ]


def _per_patient(
    rows: pd.DataFrame, truth: np.ndarray, probs: np.ndarray, labels: list[str], threshold: float
) -> tuple[ClassificationMetrics, dict[str, float], list[str]]:
    """ODIR's patient-level scoring: both eyes merged (OR of diseases, AND of normal) → ``patient/…``."""
    ids = rows["patient_id"].tolist() if "patient_id" in rows.columns else [None] * len(rows)
    ids = [None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in ids]
    t, p, _ = patient_level(truth, probs, ids, labels)
    patient = classification_metrics(t, p, labels, threshold)
    return patient, *_figures("patient", patient, _PATIENT_FIGURES)


def evaluate_classifier(ctx: EvalContext) -> EvalOutput:
    """Multi-label metrics overall, per modality and per eye, plus ROC / confusion / bar plots."""
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
    probs, ood_flags = predict_probabilities(ctx, rows)

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
    per_patient, flat, missing = _per_patient(rows, truth, probs, labels, threshold)
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

    # --- calibration (issue 17.6): ECE per label, reliability diagram, share flagged OOD ---
    calibration, calibration_rows, calibration_plots = calibration_report(
        truth, probs, labels, plot_dir, ood_flags
    )
    metrics |= calibration
    artifacts |= calibration_plots

    tables = {
        "calibration": calibration_rows,
        "per_class": overall.class_rows(),
        "per_modality": [m.summary_row(modality=k) for k, m in by_modality.items()],
        "per_eye": [m.summary_row(eye=k) for k, m in by_eye.items()],
        "odir_units": [overall.summary_row(unit="eye"), per_patient.summary_row(unit="patient")],
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
