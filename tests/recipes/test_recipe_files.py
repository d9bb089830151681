"""Every shipped recipe (recipes/*.yaml) validates, round-trips, and names a family the code knows."""

from __future__ import annotations

import pytest

from eyeops.families import FAMILIES
from eyeops.recipes import RECIPES_DIR, list_recipes, load_recipe, parse_recipe

RECIPES = list_recipes()


def test_the_recipe_folder_is_not_empty():
    assert "fundus-classifier" in RECIPES
    assert sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")) == RECIPES


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_loads_and_round_trips(name):
    recipe = load_recipe(name)
    assert recipe.name == name, f"recipes/{name}.yaml declares name {recipe.name!r}"
    assert recipe.family in FAMILIES
    assert parse_recipe(recipe.model_dump(mode="json")) == recipe
    assert recipe.register.model_name


def test_fundus_classifier_defaults_fit_this_machine():
    recipe = load_recipe("fundus-classifier")
    assert recipe.register.model_name == "eyeops-fundus-classifier"
    assert recipe.evaluate.primary_metric == "macro_auc"
    assert recipe.model.weights == "packaged" and not recipe.train.use_gpu  # works offline, on CPU
    assert recipe.model.labels == ["N", "D", "G", "C", "A", "H", "M", "O"]
