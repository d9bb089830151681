"""Multi-label classification metrics (scikit-learn), ODIR-style.

Per class: AUC, F1, precision, recall at a threshold. Overall: macro AUC over the classes whose
AUC is defined, macro/micro F1, and the ODIR-5K challenge figures computed exactly as the
challenge's reference script does — on the *flattened* (sample × class) matrix: Cohen's kappa,
F1 with ``average="micro"`` and ROC AUC, and their mean as the final score. The challenge labels
and scores *patients*, not eyes: :func:`patient_level` merges a patient's eyes first (a disease is
present when either eye has it; normal only when both eyes are).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from sklearn.metrics import (
    cohen_kappa_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from eyeops.errors import DataError

UNDEFINED = "undefined"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabelMetrics(_Frozen):
    """One class of a multi-label problem."""

    label: str
    positives: int = Field(description="Samples whose ground truth has this label.")
    auc: float | None = Field(description="None when the ground truth holds a single value.")
    f1: float
    precision: float
    recall: float


class ClassificationMetrics(_Frozen):
    """Metrics of one group of samples (the whole split, one modality, one eye)."""

    n: int
    threshold: float
    per_class: list[LabelMetrics]
    macro_auc: float | None = Field(description="Mean AUC over classes with a defined AUC.")
    macro_f1: float
    micro_f1: float
    macro_precision: float
    macro_recall: float
    kappa: float | None = Field(description="Cohen's kappa on the flattened matrix (ODIR).")
    odir_f1: float = Field(description="ODIR's F1: micro average on the flattened matrix.")
    odir_auc: float | None = Field(description="ROC AUC on the flattened matrix (ODIR).")
    odir_score: float | None = Field(description="ODIR final score: mean(kappa, odir_f1, odir_auc).")
    notes: list[str] = Field(default_factory=list, description="Why a figure is undefined, etc.")

    def flat(self, prefix: str = "") -> dict[str, float]:
        """Defined figures as a flat ``{name: value}`` map (undefined ones are left out)."""
        out: dict[str, float | None] = {
            "macro_auc": self.macro_auc,
            "macro_f1": self.macro_f1,
            "micro_f1": self.micro_f1,
            "macro_precision": self.macro_precision,
            "macro_recall": self.macro_recall,
            "kappa": self.kappa,
            "odir_f1": self.odir_f1,
            "odir_auc": self.odir_auc,
            "odir_score": self.odir_score,
            "n": float(self.n),
        }
        for m in self.per_class:
            out |= {
                f"auc/{m.label}": m.auc,
                f"f1/{m.label}": m.f1,
                f"precision/{m.label}": m.precision,
                f"recall/{m.label}": m.recall,
            }
        return {f"{prefix}{k}": float(v) for k, v in out.items() if v is not None}

    def summary_row(self, **keys: str) -> dict[str, str | float | int]:
        """One table row with the headline figures (undefined → ``"undefined"``)."""
        row: dict[str, str | float | int] = dict(keys)
        row["n"] = self.n
        for name in ("macro_auc", "macro_f1", "kappa", "odir_score"):
            value = getattr(self, name)
            row[name] = UNDEFINED if value is None else round(value, 6)
        return row

    def class_rows(self) -> list[dict[str, str | float | int]]:
        return [
            {
                "label": m.label,
                "positives": m.positives,
                "auc": UNDEFINED if m.auc is None else round(m.auc, 6),
                "f1": round(m.f1, 6),
                "precision": round(m.precision, 6),
                "recall": round(m.recall, 6),
            }
            for m in self.per_class
        ]


def _as_arrays(y_true, y_prob, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true)
    p = np.asarray(y_prob, dtype=float)
    if t.ndim != 2 or p.ndim != 2:
        raise DataError(
            f"y_true and y_prob must be 2-D (samples × classes), got shapes {t.shape} and {p.shape}"
        )
    if t.shape != p.shape:
        raise DataError(f"y_true shape {t.shape} differs from y_prob shape {p.shape}")
    if t.shape[1] != len(labels):
        raise DataError(f"{t.shape[1]} label columns but {len(labels)} label names {list(labels)}")
    if t.shape[0] == 0:
        raise DataError("no samples to evaluate")
    bad = ~np.isin(t, (0, 1))
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise DataError(f"ground truth must be 0/1, got {t[row, col]!r}", row=row, field=labels[col])
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        row, col = map(int, np.argwhere(~np.isfinite(p) | (p < 0) | (p > 1))[0])
        raise DataError(f"probability must be in [0, 1], got {p[row, col]!r}", row=row, field=labels[col])
    return t.astype(int), p


def _kappa(t: np.ndarray, pred: np.ndarray) -> float | None:
    # Kappa is 0/0 when both raters are constant and agree; sklearn then warns and returns nan.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        value = float(cohen_kappa_score(t, pred))
    return None if math.isnan(value) else value


def classification_metrics(
    y_true, y_prob, labels: Sequence[str], threshold: float = 0.5
) -> ClassificationMetrics:
    """All metrics for a ``(samples × classes)`` 0/1 ground truth and probability matrix.

    A prediction is positive when ``prob >= threshold``. A class whose ground truth holds one value
    only has no AUC: it is reported as undefined and left out of the macro AUC, with a note.
    """
    if not 0.0 < threshold < 1.0:
        raise DataError(f"threshold must be in (0, 1), got {threshold!r}")
    t, p = _as_arrays(y_true, y_prob, labels)
    pred = (p >= threshold).astype(int)
    notes: list[str] = []
    per_class: list[LabelMetrics] = []
    for j, label in enumerate(labels):
        positives = int(t[:, j].sum())
        auc = None
        if 0 < positives < len(t):
            auc = float(roc_auc_score(t[:, j], p[:, j]))
        else:
            kind = "positive" if positives else "negative"
            notes.append(
                f"AUC for {label!r} is undefined: all {len(t)} samples are {kind}; excluded from macro_auc"
            )
        per_class.append(
            LabelMetrics(
                label=label,
                positives=positives,
                auc=auc,
                f1=float(f1_score(t[:, j], pred[:, j], zero_division=0)),
                precision=float(precision_score(t[:, j], pred[:, j], zero_division=0)),
                recall=float(recall_score(t[:, j], pred[:, j], zero_division=0)),
            )
        )
    aucs = [m.auc for m in per_class if m.auc is not None]
    if not aucs:
        notes.append("macro_auc is undefined: no class has both positive and negative samples")

    flat_t, flat_p, flat_pred = t.ravel(), p.ravel(), pred.ravel()
    kappa = _kappa(flat_t, flat_pred)
    if kappa is None:
        notes.append("kappa is undefined: ground truth and predictions are both constant")
    odir_auc = None
    if 0 < flat_t.sum() < flat_t.size:
        odir_auc = float(roc_auc_score(flat_t, flat_p))
    else:
        notes.append("odir_auc is undefined: the flattened ground truth holds one value")
    # The ODIR reference script calls f1_score(gt, pr > th, average="micro") on the flattened
    # vectors; on a binary vector that equals accuracy. Kept as is so scores compare with ODIR's.
    odir_f1 = float(f1_score(flat_t, flat_pred, average="micro"))
    parts = [kappa, odir_f1, odir_auc]
    odir_score = None if any(v is None for v in parts) else float(np.mean(parts))

    return ClassificationMetrics(
        n=len(t),
        threshold=threshold,
        per_class=per_class,
        macro_auc=float(np.mean(aucs)) if aucs else None,
        macro_f1=float(f1_score(t, pred, average="macro", zero_division=0)),
        micro_f1=float(f1_score(t, pred, average="micro", zero_division=0)),
        macro_precision=float(precision_score(t, pred, average="macro", zero_division=0)),
        macro_recall=float(recall_score(t, pred, average="macro", zero_division=0)),
        kappa=kappa,
        odir_f1=odir_f1,
        odir_auc=odir_auc,
        odir_score=odir_score,
        notes=notes,
    )


def breakdown(
    y_true, y_prob, groups: Sequence[str], labels: Sequence[str], threshold: float = 0.5
) -> dict[str, ClassificationMetrics]:
    """Metrics per group value (e.g. per modality or per eye), groups in sorted order."""
    t, p = _as_arrays(y_true, y_prob, labels)
    keys = np.asarray([str(g) for g in groups])
    if len(keys) != len(t):
        raise DataError(f"{len(keys)} group keys for {len(t)} samples")
    return {
        g: classification_metrics(t[keys == g], p[keys == g], labels, threshold)
        for g in sorted(set(keys.tolist()))
    }


NORMAL_LABEL = "N"  # ODIR's "normal" class: a patient is normal only when every eye is


def patient_level(
    y_true,
    y_prob,
    patients: Sequence[str | None],
    labels: Sequence[str],
    normal_label: str | None = NORMAL_LABEL,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Ground truth and probabilities per patient, as ODIR-5K labels patients (patients sorted).

    A disease label is the OR of the patient's eyes (probability: the highest); ``normal_label``,
    when it is one of ``labels``, is the AND (probability: the lowest). A sample without a patient
    id stands for its own patient (``sample-<row>``).
    """
    t, p = _as_arrays(y_true, y_prob, labels)
    if len(patients) != len(t):
        raise DataError(f"{len(patients)} patient ids for {len(t)} samples", field="patient_id")
    keys = [str(pid) if pid else f"sample-{i}" for i, pid in enumerate(patients)]
    order = sorted(set(keys))
    index = {k: i for i, k in enumerate(order)}
    rows = np.asarray([index[k] for k in keys])
    truth = np.zeros((len(order), len(labels)), dtype=int)
    prob = np.zeros((len(order), len(labels)))
    np.maximum.at(truth, rows, t)
    np.maximum.at(prob, rows, p)
    if normal_label in labels:
        j = list(labels).index(normal_label)
        truth[:, j], prob[:, j] = 1, 1.0
        np.minimum.at(truth[:, j], rows, t[:, j])
        np.minimum.at(prob[:, j], rows, p[:, j])
    return truth, prob, order
