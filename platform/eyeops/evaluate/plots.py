"""Evaluation plots as PNG files (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: workers and pods have no display

import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import confusion_matrix, roc_curve

from eyeops.evaluate.metrics import ClassificationMetrics


def _grid(n: int) -> tuple[int, int]:
    cols = min(4, n)
    return math.ceil(n / cols), cols


def roc_curves(y_true, y_prob, labels: Sequence[str], path: Path) -> Path:
    """One ROC curve per class on shared axes; classes without a defined AUC are skipped."""
    t, p = np.asarray(y_true), np.asarray(y_prob, dtype=float)
    fig, ax = plt.subplots(figsize=(6, 6))
    for j, label in enumerate(labels):
        if 0 < t[:, j].sum() < len(t):
            fpr, tpr, _ = roc_curve(t[:, j], p[:, j])
            ax.plot(fpr, tpr, label=f"{label}")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    ax.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        title="ROC per class",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def confusion_matrices(y_true, y_prob, labels: Sequence[str], threshold: float, path: Path) -> Path:
    """A 2×2 confusion matrix per class at the decision threshold, in one grid."""
    t, pred = np.asarray(y_true), (np.asarray(y_prob, dtype=float) >= threshold).astype(int)
    rows, cols = _grid(len(labels))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for j, label in enumerate(labels):
        ax = axes[j // cols][j % cols]
        cm = confusion_matrix(t[:, j], pred[:, j], labels=[0, 1])
        ax.imshow(cm, cmap="Blues")
        for (r, c), count in np.ndenumerate(cm):
            ax.text(
                c, r, str(count), ha="center", va="center", color="white" if count > cm.max() / 2 else "black"
            )
        ax.set(title=label, xticks=[0, 1], yticks=[0, 1], xlabel="predicted", ylabel="true")
    for k in range(len(labels), rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.suptitle(f"confusion per class (threshold {threshold:g})")
    return _save(fig, path)


def class_bars(metrics: ClassificationMetrics, path: Path) -> Path:
    """Per-class AUC / F1 / precision / recall as grouped bars (undefined AUC drawn as 0, hatched)."""
    names = ("auc", "f1", "precision", "recall")
    x = np.arange(len(metrics.per_class))
    width = 0.2
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(x)), 4))
    for k, name in enumerate(names):
        values = [getattr(m, name) for m in metrics.per_class]
        bars = ax.bar(x + (k - 1.5) * width, [v or 0.0 for v in values], width, label=name)
        for bar, value in zip(bars, values, strict=True):
            if value is None:
                bar.set_hatch("//")
    ax.set_xticks(x, [m.label for m in metrics.per_class])
    ax.set(ylim=(0, 1.05), ylabel="score", title="metrics per class")
    ax.legend(fontsize="small", ncols=4, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
