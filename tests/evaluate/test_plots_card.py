"""Plots from arrays and the model card's content rules (no model needed)."""

from __future__ import annotations

import numpy as np

from eyeops.evaluate import classification_metrics, plots
from eyeops.evaluate.card import render_card
from eyeops.recipes import parse_recipe
from eyeops.refs import CheckpointRef, DatasetRef

LABELS = ["N", "D", "G"]


def test_plots_are_written(tmp_path):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, size=(30, 3))
    y[:, 2] = 0  # a class without positives: ROC skipped, bar hatched, no crash
    p = rng.random((30, 3))
    metrics = classification_metrics(y, p, LABELS)
    for path in (
        plots.roc_curves(y, p, LABELS, tmp_path / "roc.png"),
        plots.confusion_matrices(y, p, LABELS, 0.5, tmp_path / "cm.png"),
        plots.class_bars(metrics, tmp_path / "bars.png"),
    ):
        assert path.stat().st_size > 5_000 and path.read_bytes()[:4] == b"\x89PNG"


def test_card_for_real_data_has_no_synthetic_warning():
    recipe = parse_recipe(
        {
            "name": "odir",
            "data": {"source": "odir", "path": "/data/odir.xlsx"},
            "model": {"family": "classifier"},
            "register": {"model_name": "odir"},
        }
    )
    ck = CheckpointRef(
        uri="/m",
        fingerprint="f" * 64,
        recipe_name="odir",
        family="classifier",
        run_name="r1",
        step=120,
        dataset_fingerprint="d" * 64,
    )
    card = render_card(
        recipe,
        ck,
        DatasetRef(uri="/d", fingerprint="d" * 64, name="odir"),
        split="test",
        num_samples=500,
        metrics={"macro_auc": 0.91, "auc/N": 0.9},
        tables={"per_class": [{"label": "N", "auc": 0.9}]},
        notes=["AUC for 'C' is undefined"],
        labels=LABELS,
    )
    assert "synthetic" not in card.lower()
    assert "| macro_auc | 0.9100 |" in card and "auc/N" not in card.split("### per class")[0]
    assert "D (diabetic retinopathy)" in card and "AUC for 'C' is undefined" in card
    assert "120 optimizer steps" in card and "Small evaluation set" not in card
