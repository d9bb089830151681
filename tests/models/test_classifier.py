"""The fundus classifier family: weights, transforms, stages, data, save/load, inference contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from eyeops.data import prepare
from eyeops.errors import ConfigError, DataError, InvalidRequest, NotFoundError
from eyeops.inference import GenerationRequest, InferenceModel
from eyeops.models.classifier.family import FAMILY
from eyeops.models.classifier.modeling import (
    FundusTransform,
    _packaged_lite0_state,
    build_classifier,
    crop_fundus_border,
    load_packaged_weights,
)
from eyeops.models.classifier.spec import ClassifierModel
from eyeops.recipes import DataSpec, StageSpec, load_recipe


@pytest.fixture(scope="module")
def recipe():
    return load_recipe("fundus-classifier").with_overrides({"model.image_size": 32})


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cls") / "ds"
    prepare(DataSpec(source="synthetic", n=12, image_size=64, seed=3), str(out), name="tiny")
    return out


def test_packaged_weights_load_by_position_into_timm():
    source = _packaged_lite0_state()
    model = build_classifier(ClassifierModel(labels=["N", "D", "G"]))
    assert torch.equal(model.net.conv_stem.weight, source["_conv_stem.weight"])
    assert torch.equal(model.net.bn2.running_var, source["_bn1.running_var"])
    assert model.net.get_classifier().weight.shape == (3, 1280)  # our head, not ImageNet's


def test_packaged_weights_refuse_a_shape_mismatch():
    model = build_classifier(ClassifierModel(weights="none"))
    source = dict(_packaged_lite0_state())
    source["_conv_stem.weight"] = torch.zeros(16, 3, 3, 3)
    with pytest.raises(ConfigError, match=r"_conv_stem.weight has shape \(16, 3, 3, 3\)"):
        load_packaged_weights(model, source)


def test_packaged_weights_only_exist_for_lite0():
    with pytest.raises(ConfigError, match="convnext_atto"):
        build_classifier(ClassifierModel(backbone="convnext_atto", weights="packaged"))
    with pytest.raises(ConfigError, match="no_such_net"):
        build_classifier(ClassifierModel(backbone="no_such_net", weights="none"))


def test_local_weights_file(tmp_path):
    # A production-style backbone (ConvNeXt) from a local file; its own head is ignored.
    spec = ClassifierModel(backbone="convnext_atto", weights="none", labels=["N", "D"])
    donor = build_classifier(spec.model_copy(update={"labels": ["x"] * 5}))
    path = tmp_path / "convnext.pth"
    torch.save(donor.net.state_dict(), path)
    model = build_classifier(spec.model_copy(update={"weights": str(path)}))
    assert torch.equal(model.net.stem[0].weight, donor.net.stem[0].weight)
    assert model.net.get_classifier().weight.shape[0] == 2


def test_a_weights_file_that_is_not_weights_is_named(tmp_path):
    """Every weights setting reads files through one reader: bad files are errors naming the setting."""
    spec = ClassifierModel(backbone="convnext_atto", weights="none", labels=["N", "D"])
    corrupt, listed, lightning = tmp_path / "corrupt.pth", tmp_path / "list.pt", tmp_path / "l.ckpt"
    corrupt.write_bytes(b"not a zip or a pickle")
    torch.save([torch.zeros(1)], listed)
    donor = build_classifier(spec)
    torch.save({"state_dict": donor.net.state_dict(), "epoch": 3}, lightning)  # a Lightning checkpoint
    with pytest.raises(ConfigError, match=r"model.weights '.*corrupt.pth': not a torch state dict"):
        build_classifier(spec.model_copy(update={"weights": str(corrupt)}))
    with pytest.raises(ConfigError, match=r"model.weights '.*list.pt': expected a dict of tensors, not list"):
        build_classifier(spec.model_copy(update={"weights": str(listed)}))
    with pytest.raises(NotFoundError, match=r"model.weights '.*missing.pt': file not found"):
        build_classifier(spec.model_copy(update={"weights": str(tmp_path / "missing.pt")}))
    model = build_classifier(spec.model_copy(update={"weights": str(lightning)}))
    assert torch.equal(model.net.stem[0].weight, donor.net.stem[0].weight)


def test_crop_removes_the_black_border():
    image = Image.new("RGB", (200, 120), (0, 0, 0))
    ImageDraw.Draw(image).ellipse((70, 10, 170, 110), fill=(200, 90, 40))
    cropped = crop_fundus_border(image)
    assert cropped.size == (101, 101)
    assert np.asarray(cropped)[50, 50].tolist() == [200, 90, 40]
    black = Image.new("RGB", (40, 30))
    assert crop_fundus_border(black).size == (40, 30)


def test_transform_shapes_and_normalisation():
    image = Image.new("RGB", (64, 64), (124, 116, 104))  # ~ the ImageNet mean colour
    tensor = FundusTransform(32, circular_crop=False)(image)
    assert tensor.shape == (3, 32, 32) and tensor.abs().max() < 0.05
    augmented = FundusTransform(32, train=True)(image)
    assert augmented.shape == (3, 32, 32)


def test_apply_stage_freezes_groups(recipe):
    model = FAMILY.build_model(recipe)
    FAMILY.apply_stage(model, StageSpec(name="warm", trainable=["head"]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"net.classifier.weight", "net.classifier.bias"}
    FAMILY.apply_stage(model, StageSpec(name="all", trainable=["backbone", "head"]))
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ConfigError, match="connector"):
        FAMILY.apply_stage(model, StageSpec(name="bad", trainable=["connector"]))


def test_datasets_read_the_prepared_dataset(recipe, dataset_dir):
    sets = FAMILY.datasets(recipe, dataset_dir)
    assert set(sets) <= {"train", "val", "test"} and len(sets["train"]) > 0
    assert sum(len(s) for s in sets.values()) == 12
    item = sets["train"][0]
    assert item["image"].shape == (3, 32, 32) and item["labels"].shape == (8,)
    batch = FAMILY.collate_fn(recipe)([sets["train"][0], sets["train"][1]])
    model = FAMILY.build_model(recipe)
    loss = FAMILY.loss(model, batch)
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_datasets_reject_a_label_order_mismatch(recipe, dataset_dir):
    other = recipe.with_overrides({"model.labels": ["D", "N", "G", "C", "A", "H", "M", "O"]})
    with pytest.raises(DataError, match=r"differ from model\.labels"):
        FAMILY.datasets(other, dataset_dir)


def test_save_load_classify(recipe, tmp_path):
    model = FAMILY.build_model(recipe).eval()
    FAMILY.save(model, recipe, tmp_path / "model")
    loaded = FAMILY.load(tmp_path / "model")
    assert isinstance(loaded, InferenceModel) and loaded.capabilities == {"classify"}
    images = [Image.new("RGB", (50, 50), (180, 80, 40)), Image.new("RGB", (50, 50), (20, 200, 90))]
    results = loaded.classify(images)
    with torch.no_grad():
        expected = torch.sigmoid(model(torch.stack([loaded.transform(im) for im in images]))).numpy()
    for result, row in zip(results, expected, strict=True):
        assert list(result.probabilities) == list(recipe.model.labels)
        assert np.allclose(list(result.probabilities.values()), row, atol=1e-5)
        probs = result.probabilities
        assert result.findings == sorted([k for k, v in probs.items() if v >= 0.5], key=lambda k: -probs[k])
    with pytest.raises(InvalidRequest):
        loaded.generate([GenerationRequest(messages=[])])
    with pytest.raises(InvalidRequest):
        loaded.stream(GenerationRequest(messages=[]))
