"""Temperature scaling and the k-NN out-of-distribution screen on data whose answer is known."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from eyeops.errors import ConfigError
from eyeops.evaluate.calibration import expected_calibration_errors
from eyeops.models.common.calibration import (
    CALIBRATION_FILE,
    OOD_MESSAGE,
    Calibrator,
    fit_calibration,
    fit_temperature,
    knn_distance,
)
from eyeops.models.common.calibration_spec import OODSpec

LABELS = ["N", "D", "G"]
OVERCONFIDENCE = 3.0


def _overconfident(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn from sigmoid(z); the 'model' reports 3 z: right ranking, far too sure."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, len(LABELS), generator=g) * 1.5
    y = torch.bernoulli(torch.sigmoid(z), generator=g)
    return OVERCONFIDENCE * z, y


@pytest.mark.parametrize("mode", ["global", "per_label"])
def test_temperature_undoes_overconfidence_and_held_out_ece_falls(mode):
    val_logits, val_y = _overconfident(3000, seed=0)
    test_logits, test_y = _overconfident(3000, seed=1)
    calibrator = fit_calibration(
        ood=OODSpec(),
        temperature_mode=mode,
        train_features=torch.randn(50, 8),
        val_features=torch.randn(20, 8),
        val_logits=val_logits,
        val_targets=val_y,
    )
    temperature = np.array(calibrator.record.temperature)
    assert temperature.shape == ((1,) if mode == "global" else (len(LABELS),))
    assert temperature == pytest.approx(OVERCONFIDENCE, rel=0.15)
    assert calibrator.record.val_nll["after"] < calibrator.record.val_nll["before"]

    before = torch.sigmoid(test_logits).numpy()
    after = torch.sigmoid(calibrator.scale(test_logits)).numpy()
    ece_before = expected_calibration_errors(test_y.numpy(), before, LABELS)
    ece_after = expected_calibration_errors(test_y.numpy(), after, LABELS)
    for label in LABELS:  # held-out data: every label better calibrated, and clearly so
        assert ece_after[label] < ece_before[label] / 2, (label, ece_before, ece_after)
    # Probabilities move towards 0.5 (less sure) and keep their order within each label.
    assert (np.abs(after - 0.5) <= np.abs(before - 0.5) + 1e-6).all()
    for j in range(len(LABELS)):
        assert (np.diff(before[np.argsort(after[:, j]), j]) >= 0).all()


def test_a_calibrated_model_keeps_temperature_one_and_a_single_class_label_takes_the_global():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(4000, 2, generator=g)
    y = torch.bernoulli(torch.sigmoid(z), generator=g)
    assert fit_temperature(z, y, "global").item() == pytest.approx(1.0, abs=0.1)
    y[:, 1] = 0  # nothing to calibrate label 1 against
    per_label = fit_temperature(z, y, "per_label")
    assert per_label[1].item() == pytest.approx(fit_temperature(z, y, "global").item())
    assert fit_temperature(z, y, "none").tolist() == [1.0]


def test_knn_screen_flags_far_points_at_the_fitted_rate_and_survives_save_load(tmp_path):
    g = torch.Generator().manual_seed(0)
    centre = torch.randn(16, generator=g) * 3
    cloud = lambda n: centre + torch.randn(n, 16, generator=g)  # noqa: E731
    calibrator = fit_calibration(
        ood=OODSpec(neighbours=5, quantile=0.95),
        temperature_mode="none",
        train_features=cloud(400),
        val_features=cloud(400),
    )
    record = calibrator.record
    assert record.held_out == "val" and record.reference_count == 400 and record.temperature == []
    unseen = calibrator.screen(cloud(1000))
    rate = np.mean([s.out_of_distribution for s in unseen])
    assert 0.01 <= rate <= 0.12  # the 95th percentile: about 5% of unseen in-distribution points
    far = calibrator.screen(-centre + torch.randn(50, 16, generator=g))
    assert all(s.out_of_distribution for s in far)
    assert far[0].answer_fields()["message"] == OOD_MESSAGE
    assert unseen[0].ood_threshold == pytest.approx(record.ood_threshold, abs=1e-6)

    calibrator.save(tmp_path)
    loaded = Calibrator.load(tmp_path)
    assert loaded is not None and loaded.record == record
    probe = torch.cat([cloud(5), -centre[None]])
    assert loaded.screen(probe) == calibrator.screen(probe)
    assert Calibrator.load(tmp_path / "elsewhere") is None  # a model saved without calibration

    (tmp_path / CALIBRATION_FILE).write_text(json.dumps({"temperature": "hot"}))
    with pytest.raises(ConfigError, match="not a valid calibration record"):
        Calibrator.load(tmp_path)


def test_without_validation_data_the_threshold_comes_from_leave_one_out():
    g = torch.Generator().manual_seed(1)
    train = torch.randn(60, 8, generator=g)
    calibrator = fit_calibration(ood=OODSpec(neighbours=3), temperature_mode="global", train_features=train)
    record = calibrator.record
    assert record.held_out == "leave_one_out" and record.temperature == []
    assert any("no validation split" in note for note in record.notes)
    scores = knn_distance(train, train, 3, leave_one_out=True)
    assert record.ood_threshold == pytest.approx(float(np.quantile(scores.numpy(), 0.95)))
    with pytest.raises(ConfigError, match="at least two training images"):
        knn_distance(train[:1], train[:1], 3, leave_one_out=True)
