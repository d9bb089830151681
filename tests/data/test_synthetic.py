"""The generator: reproducible, correctly labelled, and its signs are visible in the pixels."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from eyeops.data.schema import ODIR_LABELS, Eye
from eyeops.data.synthetic import COMORBID_PAIRS, generate, render_fundus


def test_reproducible_patients_both_eyes_and_multi_hot():
    first = list(generate(12, seed=3, size=96))
    again = list(generate(12, seed=3, size=96))
    other = list(generate(12, seed=4, size=96))
    assert all(
        np.array_equal(a.image, b.image) and a.labels == b.labels for a, b in zip(first, again, strict=True)
    )
    assert not all(np.array_equal(a.image, b.image) for a, b in zip(first, other, strict=True))
    for right, left in zip(first[::2], first[1::2], strict=True):
        assert (right.eye, left.eye) == (Eye.OD, Eye.OS) and right.patient == left.patient
    for item in first:
        assert len(item.labels) == len(ODIR_LABELS) and item.image.shape == (96, 96, 3)
        assert sum(item.labels) >= 1
        if item.labels[0]:  # N is exclusive
            assert sum(item.labels) == 1


def test_label_mix_has_every_class_and_only_comorbid_pairs():
    items = list(generate(300, seed=1, size=64))
    counts = np.sum([i.labels for i in items], axis=0)
    assert all(c >= 15 for c in counts), dict(zip(ODIR_LABELS, counts, strict=True))
    allowed = {frozenset(p) for p in COMORBID_PAIRS}
    pairs = [
        frozenset(c for c, v in zip(ODIR_LABELS, i.labels, strict=True) if v)
        for i in items
        if sum(i.labels) == 2
    ]
    assert pairs and all(p in allowed for p in pairs)
    assert all(sum(i.labels) <= 2 for i in items)


def _stats(img: np.ndarray) -> dict[str, float]:
    """Crude, model-free image statistics: enough to tell each sign from a normal fundus."""
    f = img.astype(np.float32) / 255
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    grey = f.mean(-1)
    inside = grey > 0.08
    h, w = grey.shape
    yy, xx = np.mgrid[0:h, 0:w]
    central = np.hypot(xx - w / 2, yy - h / 2) < 0.14 * w
    dark = (ndimage.grey_closing(g, size=(7, 7)) - g > 0.06) & inside  # small dark spots + thin vessels
    lab, n = ndimage.label(dark)
    blobs = sum(
        1
        for sl, area in zip(ndimage.find_objects(lab), ndimage.sum(dark, lab, range(1, n + 1)), strict=True)
        if 3 <= area <= 80 and max(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start) <= 12
    )
    return {
        "blobs": blobs,  # DR: microaneurysms and blot haemorrhages
        "yellow": float(((r > 0.85) & (g > 0.75) & (b < 0.75) & central).sum()),  # AMD: macular drusen
        "white": float(((r > 0.9) & (g > 0.85) & (b > 0.7)).sum()),  # glaucoma: a large pale cup
        "blur": -float(ndimage.laplace(ndimage.gaussian_filter(grey, 0.5))[inside].var()),  # cataract
    }


@pytest.mark.parametrize(("code", "stat"), [("D", "blobs"), ("A", "yellow"), ("G", "white"), ("C", "blur")])
def test_simple_statistic_separates_sign_from_normal(code, stat):
    def sample(codes, i):
        eye = Eye.OD if i % 2 else Eye.OS
        return _stats(
            render_fundus(codes, eye=eye, size=256, rng=np.random.default_rng([5, len(codes), i]))[0]
        )

    positives = [sample([code], i)[stat] for i in range(12)]
    normals = [sample([], i)[stat] for i in range(12)]
    auc = roc_auc_score([1] * 12 + [0] * 12, positives + normals)
    assert auc >= 0.95, (code, stat, positives, normals)


def test_findings_name_their_label_and_location():
    _, findings = render_fundus(["D", "G"], eye=Eye.OS, size=128, rng=np.random.default_rng(0))
    assert {f.label for f in findings} == {"D", "G"}
    assert any("microaneurysms" in f.description and "temporal" in f.location for f in findings)
    _, normal = render_fundus([], size=128, rng=np.random.default_rng(0))
    assert [f.label for f in normal] == ["N"]


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="unknown ODIR label"):
        render_fundus(["X"])
    with pytest.raises(ValueError, match="n must be"):
        next(generate(0))
