"""Metrics against hand-computed cases and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, f1_score, roc_auc_score

from eyeops.errors import DataError
from eyeops.evaluate import breakdown, classification_metrics
from eyeops.evaluate.metrics import patient_level

LABELS = ["N", "D", "G"]


def test_hand_computable_case():
    # Class N: scores rank both positives above both negatives -> AUC 1; at 0.5 one positive is missed.
    # Class D: the positive scores below one negative -> AUC 2/3 (2 of 3 pairs ordered right).
    y = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 0, 1]])
    p = np.array([[0.9, 0.1, 0.2], [0.4, 0.6, 0.1], [0.2, 0.7, 0.8], [0.1, 0.2, 0.3]])
    m = classification_metrics(y, p, LABELS, threshold=0.5)
    n, d, g = m.per_class
    assert n.auc == pytest.approx(1.0) and n.precision == 1.0 and n.recall == 0.5
    assert n.f1 == pytest.approx(2 / 3)
    assert d.auc == pytest.approx(2 / 3) and d.precision == 0.5 and d.recall == 1.0
    assert g.auc == pytest.approx(1.0) and g.recall == 0.5
    assert m.macro_auc == pytest.approx((1 + 2 / 3 + 1) / 3)
    # Flattened: 12 cells, 3 wrong (N row2 missed, D row3 false alarm, G row4 missed) -> ODIR F1 = 9/12.
    assert m.odir_f1 == pytest.approx(9 / 12)
    assert m.odir_score == pytest.approx((m.kappa + m.odir_f1 + m.odir_auc) / 3)


def test_matches_sklearn_on_random_data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=(200, 3))
    p = np.clip(y * 0.3 + rng.random((200, 3)) * 0.7, 0, 1)
    m = classification_metrics(y, p, LABELS, threshold=0.4)
    pred = (p >= 0.4).astype(int)
    for j, lab in enumerate(m.per_class):
        assert lab.auc == pytest.approx(roc_auc_score(y[:, j], p[:, j]))
        assert lab.f1 == pytest.approx(f1_score(y[:, j], pred[:, j]))
    assert m.macro_f1 == pytest.approx(f1_score(y, pred, average="macro"))
    assert m.kappa == pytest.approx(cohen_kappa_score(y.ravel(), pred.ravel()))
    assert m.odir_auc == pytest.approx(roc_auc_score(y.ravel(), p.ravel()))
    assert m.macro_auc == pytest.approx(np.mean([roc_auc_score(y[:, j], p[:, j]) for j in range(3)]))


def test_single_valued_class_is_undefined_and_excluded():
    y = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1]])  # D never positive, G always positive
    p = np.array([[0.8, 0.3, 0.9], [0.3, 0.1, 0.6], [0.6, 0.2, 0.7], [0.1, 0.4, 0.8]])
    m = classification_metrics(y, p, LABELS)
    assert [c.auc for c in m.per_class][1:] == [None, None]
    assert m.macro_auc == pytest.approx(1.0)  # only N counts
    assert any("'D'" in note and "negative" in note for note in m.notes)
    assert any("'G'" in note and "positive" in note for note in m.notes)
    flat = m.flat()
    assert "auc/D" not in flat and "auc/N" in flat and flat["macro_auc"] == pytest.approx(1.0)
    assert m.class_rows()[1]["auc"] == "undefined"


def test_breakdown_per_group():
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0]])
    p = np.array([[0.9, 0.1, 0.2], [0.1, 0.9, 0.3], [0.2, 0.8, 0.1], [0.7, 0.3, 0.2]])
    groups = breakdown(y, p, ["OD", "OD", "OS", "OS"], LABELS)
    assert list(groups) == ["OD", "OS"]
    assert groups["OD"].n == 2 and groups["OD"].macro_auc == pytest.approx(1.0)
    assert groups["OS"].macro_auc == pytest.approx(0.0)  # both classes ranked backwards
    assert groups["OD"].per_class[2].auc is None  # G absent in the group


@pytest.mark.parametrize(
    ("y", "p", "match"),
    [
        ([[0, 2, 0]], [[0.1, 0.2, 0.3]], "row 0, field 'D'.*0/1"),
        ([[0, 1, 0]], [[0.1, 1.2, 0.3]], "row 0, field 'D'.*probability"),
        ([[0, 1]], [[0.1, 0.2]], "2 label columns"),
        ([[0, 1, 0]], [[0.1, 0.2]], "differs"),
    ],
)
def test_bad_input_names_row_and_field(y, p, match):
    with pytest.raises(DataError, match=match):
        classification_metrics(y, p, LABELS)


def test_patient_level_merges_eyes_as_odir_labels_patients():
    # p1: a normal right eye and a DR left eye → the patient has D and is not normal (N is an AND,
    # diseases an OR); p2: both eyes normal → normal; the unnamed sample is its own patient.
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [1, 0, 0], [0, 0, 1]])
    p = np.array([[0.9, 0.2, 0.1], [0.3, 0.7, 0.4], [0.8, 0.1, 0.2], [0.6, 0.3, 0.1], [0.2, 0.1, 0.9]])
    t, q, ids = patient_level(y, p, ["p1", "p1", "p2", "p2", None], LABELS)
    assert ids == ["p1", "p2", "sample-4"]
    assert t.tolist() == [[0, 1, 0], [1, 0, 0], [0, 0, 1]]
    assert q.tolist() == [[0.3, 0.7, 0.4], [0.6, 0.3, 0.2], [0.2, 0.1, 0.9]]
    # without a normal label every class is an OR
    t_or, _, _ = patient_level(y, p, ["p1", "p1", "p2", "p2", None], LABELS, normal_label=None)
    assert t_or[0].tolist() == [1, 1, 0]
    with pytest.raises(DataError, match="2 patient ids for 5 samples"):
        patient_level(y, p, ["p1", "p2"], LABELS)
