"""How the shared machinery (train loop, evaluation, registry, serving) meets a model family.

Each family (classifier, llm, vlm, ophglm, healthgpt) provides one object satisfying
:class:`Family`. The train loop, evaluator and registry call only these methods, so adding a
family never touches them. Families are looked up by the recipe's typed ``model.family`` field.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from eyeops.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch.utils.data import Dataset

    from eyeops.inference import InferenceModel
    from eyeops.recipes import Recipe, StageSpec


class Family(Protocol):
    name: str

    def build_model(self, recipe: Recipe) -> torch.nn.Module:
        """A fresh model with pretrained backbones loaded as the recipe says."""
        ...

    def apply_stage(self, model: torch.nn.Module, stage: StageSpec) -> None:
        """Set ``requires_grad`` so exactly the stage's parameter groups train."""
        ...

    def datasets(self, recipe: Recipe, data_dir: Path, stage: StageSpec | None = None) -> dict[str, Dataset]:
        """Torch datasets keyed by split name ('train', 'val', 'test') from a prepared dataset."""
        ...

    def collate_fn(self, recipe: Recipe) -> Callable[[list[Any]], Mapping[str, Any]]: ...

    def loss(self, model: torch.nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        """Scalar training loss for one micro-batch (already on the model's device)."""
        ...

    def save(self, model: torch.nn.Module, recipe: Recipe, out_dir: Path) -> None:
        """Write everything needed to reload for inference (weights, recipe.yaml, tokenizer…)."""
        ...

    def load(self, model_dir: Path, device: str = "cpu") -> InferenceModel:
        """Reload a saved model for inference."""
        ...


_FAMILY_MODULES = {
    "classifier": "eyeops.models.classifier",
    "llm": "eyeops.models.llm",
    "vlm": "eyeops.models.vlm",
    "ophglm": "eyeops.models.ophglm",
    "healthgpt": "eyeops.models.healthgpt",
}


def get_family(name: str) -> Family:
    """The family object for a recipe's ``model.family`` (each module exposes ``FAMILY``)."""
    try:
        module_name = _FAMILY_MODULES[name]
    except KeyError:
        raise ConfigError(f"unknown model family {name!r} (known: {', '.join(_FAMILY_MODULES)})") from None
    return importlib.import_module(module_name).FAMILY
