"""A tiny prepared synthetic dataset and an untrained classifier, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_RECIPE = {
    "name": "tiny-eval",
    "model": {"family": "classifier", "weights": "none", "image_size": 64},
    "register": {"model_name": "tiny-eval"},
}


@pytest.fixture(scope="session")
def tiny_recipe():
    from eyeops.recipes import parse_recipe

    return parse_recipe(TINY_RECIPE)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    from eyeops.data import prepare
    from eyeops.recipes import DataSpec

    out = tmp_path_factory.mktemp("tiny-dataset")
    return prepare(
        DataSpec(source="synthetic", n=40, image_size=64, seed=3), str(out), name="tiny", workers=1
    )


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_recipe):
    from eyeops.evaluate.runner import checkpoint_ref
    from eyeops.families import get_family

    family = get_family("classifier")
    model_dir = Path(tmp_path_factory.mktemp("tiny-model")) / "model"
    family.save(family.build_model(tiny_recipe), tiny_recipe, model_dir)
    return checkpoint_ref(str(model_dir), tiny_recipe)
