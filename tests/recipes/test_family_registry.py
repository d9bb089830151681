"""The family registry is the only list of families, and every family honours the full contract."""

from __future__ import annotations

import typing
import zipfile

import pytest

from eyeops.families import FAMILIES, get_family, model_specs
from eyeops.inference import Capability
from eyeops.recipes import Recipe

CONTRACT = ("build_model", "apply_stage", "datasets", "collate_fn", "loss", "save", "load", "evaluate")


@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_family_package_declares_its_spec_and_family(name):
    family = get_family(name)
    assert family.name == name
    missing = [hook for hook in CONTRACT if not callable(getattr(family, hook, None))]
    assert not missing, f"family {name!r} lacks {missing}"
    assert family.pyfunc_task in ("classify", "chat")
    assert family.capabilities and family.capabilities <= set(typing.get_args(Capability))
    (spec,) = [s for s in model_specs() if s.model_fields["family"].default == name]
    assert spec.__module__ == f"{FAMILIES[name]}.spec"


def test_the_recipe_model_union_is_assembled_from_the_registry():
    union = Recipe.model_fields["model"].annotation
    assert set(typing.get_args(union)) == set(model_specs())


def test_an_unknown_family_names_the_known_ones():
    from eyeops.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown model family 'gan'.*classifier"):
        get_family("gan")


def test_the_built_package_carries_the_recipes(tmp_path):
    """An installed eyeops (a wheel, no checkout) finds its recipes as package data."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip_wheel, "-w", tmp_path, root], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("eyeops-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.name for p in (root / "recipes").glob("*.yaml")}
    assert shipped and {f"eyeops/builtin_recipes/{n}" for n in shipped} <= names
