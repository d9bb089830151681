"""Calibration in the evaluation report: ECE per label, the reliability diagram, the OOD rate.

The classifier is calibrated by its family's post-training hook on the real prepared dataset
(temperature on 'val', neighbours from 'train'), then evaluated on 'test' by the real runner.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from eyeops.evaluate import evaluate
from eyeops.evaluate.calibration import calibration_report, expected_calibration_errors
from eyeops.evaluate.runner import checkpoint_ref
from eyeops.families import get_family
from eyeops.models.common.calibration import CALIBRATION_FILE, REFERENCE_FILE


def test_ece_matches_its_definition_and_the_report_draws_the_diagram(tmp_path):
    truth = np.array([[1, 0], [0, 0], [1, 1], [0, 1]])
    probs = np.array([[0.9, 0.2], [0.1, 0.3], [0.8, 0.6], [0.35, 0.7]])
    eces = expected_calibration_errors(truth, probs, ["A", "B"], n_bins=2)
    # label A, bins (0, .5] and (.5, 1]: |0.225 - 0| * 2/4 + |0.85 - 1| * 2/4
    assert eces["A"] == pytest.approx(0.5 * 0.225 + 0.5 * 0.15)
    metrics, rows, plots = calibration_report(truth, probs, ["A", "B"], tmp_path, [True, False, None, False])
    assert metrics["macro_ece"] == pytest.approx(np.mean([metrics["ece/A"], metrics["ece/B"]]))
    assert metrics["ood_rate"] == pytest.approx(1 / 3)  # of the screened samples
    assert [r["label"] for r in rows] == ["A", "B"] and rows[0]["positives"] == 2
    assert plots["reliability_diagram"].read_bytes()[:4] == b"\x89PNG"
    assert "ood_rate" not in calibration_report(truth, probs, ["A", "B"], tmp_path)[0]


def test_family_hook_calibrates_and_the_report_shows_it(tiny_recipe, tiny_dataset, tmp_path):
    family = get_family("classifier")
    model = family.build_model(tiny_recipe)
    model_dir = tmp_path / "model"
    family.save(model, tiny_recipe, model_dir)
    family.calibrate(model, tiny_recipe, Path(tiny_dataset.uri), model_dir)
    record = json.loads((model_dir / CALIBRATION_FILE).read_text())
    manifest = json.loads((Path(tiny_dataset.uri) / "manifest.json").read_text())
    for split in ("train", "val"):  # every classify image of the two splits was used
        expected = sum(
            n for k, n in manifest["counts"].items() if k.startswith("classify/") and k.endswith(split)
        )
        assert record["counts"][split] == expected > 0
    assert record["held_out"] == "val" and len(record["temperature"]) == 1
    assert (model_dir / REFERENCE_FILE).is_file()

    report = evaluate(
        tiny_recipe, checkpoint_ref(str(model_dir), tiny_recipe), tiny_dataset, out_dir=str(tmp_path / "r")
    )
    assert set(f"ece/{label}" for label in "NDGCAHMO") <= set(report.metrics)
    assert 0 <= report.metrics["macro_ece"] <= 1 and 0 <= report.metrics["ood_rate"] <= 1
    assert Path(report.artifacts["reliability_diagram"]).stat().st_size > 5_000
    assert [row["label"] for row in report.tables["calibration"]] == list("NDGCAHMO")
