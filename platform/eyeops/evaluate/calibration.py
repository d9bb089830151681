"""Calibration in evaluation: expected calibration error per label and a reliability diagram.

ECE is torchmetrics' ``binary_calibration_error`` (equal-width confidence bins, L1), one per label
of a multi-label model, and their mean (``macro_ece``). The diagram draws, per label, the observed
frequency of the label against the predicted probability in each bin; a calibrated model follows
the diagonal. The share of evaluation images the model's OOD screen flagged is reported beside it
(``ood_rate``): on in-distribution test data it should sit near ``1 - ood.quantile``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from eyeops.evaluate.plots import _grid, _save, plt

N_BINS = 10


def expected_calibration_errors(
    y_true, y_prob, labels: Sequence[str], n_bins: int = N_BINS
) -> dict[str, float]:
    """ECE per label (torchmetrics ``binary_calibration_error``: ``n_bins`` equal-width bins, L1)."""
    from torchmetrics.functional.classification import binary_calibration_error

    truth = torch.as_tensor(np.asarray(y_true), dtype=torch.long)
    probs = torch.as_tensor(np.asarray(y_prob, dtype=np.float32))
    return {
        label: float(
            binary_calibration_error(probs[:, j].contiguous(), truth[:, j].contiguous(), n_bins=n_bins)
        )
        for j, label in enumerate(labels)
    }


def reliability_diagram(y_true, y_prob, labels: Sequence[str], path: Path, n_bins: int = N_BINS) -> Path:
    """Observed frequency vs mean predicted probability per bin, one panel per label, ECE in the title."""
    t, p = np.asarray(y_true, dtype=float), np.asarray(y_prob, dtype=float)
    eces = expected_calibration_errors(t, p, labels, n_bins)
    rows, cols = _grid(len(labels))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    for j, label in enumerate(labels):
        ax = axes[j // cols][j % cols]
        # torchmetrics' bins: (lower, upper], the first one closed at 0
        which = np.clip(np.searchsorted(edges, p[:, j], side="left") - 1, 0, n_bins - 1)
        counts = np.bincount(which, minlength=n_bins)
        seen = counts > 0
        mean_p = np.bincount(which, weights=p[:, j], minlength=n_bins)[seen] / counts[seen]
        freq = np.bincount(which, weights=t[:, j], minlength=n_bins)[seen] / counts[seen]
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
        ax.bar(edges[:-1][seen], freq, width=1 / n_bins, align="edge", alpha=0.6, edgecolor="black")
        ax.plot(mean_p, freq, marker="o", color="tab:red", linewidth=1)
        ax.set(title=f"{label}  ECE {eces[label]:.3f}", xlim=(0, 1), ylim=(0, 1))
        ax.set_xlabel("predicted probability", fontsize="small")
        ax.set_ylabel("observed frequency", fontsize="small")
    for k in range(len(labels), rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.suptitle("reliability per label")
    return _save(fig, path)


def calibration_report(
    y_true, y_prob, labels: Sequence[str], plot_dir: Path, ood_flags: Sequence[bool | None] = ()
) -> tuple[dict[str, float], list[dict[str, str | float | int]], dict[str, Path]]:
    """``(metrics, table rows, artifacts)``: ``ece/<label>``, ``macro_ece``, ``ood_rate`` and the diagram."""
    eces = expected_calibration_errors(y_true, y_prob, labels)
    metrics = {f"ece/{label}": value for label, value in eces.items()}
    metrics["macro_ece"] = float(np.mean(list(eces.values())))
    probs = np.asarray(y_prob, dtype=float)
    rows: list[dict[str, str | float | int]] = [
        {
            "label": label,
            "ece": round(eces[label], 4),
            "mean_probability": round(float(probs[:, j].mean()), 4),
            "positives": int(np.asarray(y_true)[:, j].sum()),
        }
        for j, label in enumerate(labels)
    ]
    screened = [f for f in ood_flags if f is not None]
    if screened:
        metrics["ood_rate"] = float(np.mean(screened))
    path = reliability_diagram(y_true, y_prob, labels, plot_dir / "reliability.png")
    return metrics, rows, {"reliability_diagram": path}
