"""load_predictor puts the model where --device, else the saved recipe's serve.device, says."""

from __future__ import annotations

import pytest
import torch
import yaml

from eyeops.errors import ConfigError
from eyeops.models.classifier.family import FAMILY
from eyeops.recipes import parse_recipe
from eyeops.serve.predictor import load_predictor


def _saved(path, serve):
    recipe = parse_recipe(
        {
            "name": "tiny-fc",
            "model": {
                "family": "classifier",
                "backbone": "efficientnet_lite0",
                "weights": "none",
                "image_size": 32,
                "labels": ["normal", "glaucoma"],
            },
            "register": {"model_name": "tiny-fc"},
            "serve": serve,
        }
    )
    FAMILY.save(FAMILY.build_model(recipe), recipe, path)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return _saved(tmp_path_factory.mktemp("fc") / "model", {})


def test_the_device_reaches_family_load(model_dir):
    assert load_predictor(model_dir).model.device == torch.device("cpu")  # auto, no accelerator
    meta = load_predictor(model_dir, device=torch.device("meta")).model
    assert {p.device for p in meta.model.parameters()} == {torch.device("meta")}
    with pytest.raises(ConfigError, match=r"--device 'cuda'"):
        load_predictor(model_dir, device="cuda")


def test_the_saved_recipe_asks_for_cuda(model_dir, tmp_path):
    saved = _saved(tmp_path / "gpu", {"device": "cuda"})
    assert yaml.safe_load((saved / "recipe.yaml").read_text())["serve"]["gpu"] == 1
    with pytest.raises(ConfigError, match=r"serve\.device of .*recipe\.yaml 'cuda'"):
        load_predictor(saved)  # never a silent CPU load
    assert load_predictor(saved, device="cpu").model.device == torch.device("cpu")
