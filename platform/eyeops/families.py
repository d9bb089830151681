"""How the shared machinery (train loop, evaluation, registry, serving) meets a model family.

A family is one package under ``eyeops/models/<family>/`` with two entry modules:

- ``spec.py`` exposes ``SPEC``, the pydantic class of the recipe's ``model:`` section (pure
  pydantic, so :mod:`eyeops.recipes` assembles the ``model`` union without importing torch);
- ``family.py`` exposes ``FAMILY``, an object satisfying :class:`Family`.

The train loop, evaluator, registry and servers call only :class:`Family` (and the
:class:`eyeops.inference.InferenceModel` its ``load`` returns), so adding a family is one folder
and one line in :data:`FAMILIES`. Families are looked up by the recipe's typed ``model.family``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from eyeops.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from torch.utils.data import Dataset

    from eyeops.data.schema import Manifest
    from eyeops.inference import Capability, InferenceModel
    from eyeops.recipes import Recipe, StageSpec

# The one registry: family name (the recipe's ``model.family``) -> its package.
FAMILIES: Mapping[str, str] = {
    "classifier": "eyeops.models.classifier",
    "llm": "eyeops.models.llm",
    "vlm": "eyeops.models.vlm",
    "ophglm": "eyeops.models.ophglm",
    "healthgpt": "eyeops.models.healthgpt",
}

Rows = list[dict[str, str | float | int]]
PyfuncTask = Literal["classify", "chat"]


class EvalOutput(BaseModel):
    """What a family's ``evaluate`` returns: flat metrics, breakdown tables, notes, extra files."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    num_samples: int
    metrics: dict[str, float] = Field(description="Defined metrics only, e.g. macro_auc, eye/OD/kappa.")
    undefined: list[str] = Field(default_factory=list, description="Metric names that had no defined value.")
    tables: dict[str, Rows] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    artifacts: dict[str, str] = Field(default_factory=dict, description="name -> path under out_dir.")
    labels: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class EvalContext:
    """Everything a family's ``evaluate`` needs; ``samples`` holds the eval split's rows."""

    recipe: Recipe
    model: InferenceModel
    data_dir: Path
    samples: pd.DataFrame
    out_dir: Path
    manifest: Manifest | None
    batch_size: int = 32


class Family(Protocol):
    """A model family: build, train (stages, data, loss), save/load, and judge its models."""

    name: str
    capabilities: frozenset[Capability]
    """What the loaded models answer (``classify``, ``chat``, ``generate_image``)."""
    pyfunc_task: PyfuncTask
    """The MLflow pyfunc interface the registry logs: images → label probabilities, or prompt → text."""

    def labels(self, recipe: Recipe) -> list[str]:
        """The labels a model of this recipe classifies into (empty when it cannot classify)."""
        ...

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

    def calibrate(self, model: torch.nn.Module, recipe: Recipe, data_dir: Path, out_dir: Path) -> None:
        """After training (rank 0): fit what the model needs to judge its own answers on held-out data
        (temperature, out-of-distribution threshold) and write it into the saved ``out_dir``, which
        ``load`` then applies. Families without image inputs write nothing."""
        ...

    def evaluate(self, ctx: EvalContext) -> EvalOutput:
        """Score the loaded model on the eval split: the family's metrics, tables and notes."""
        ...


class ChatFamily:
    """Defaults for a family whose models chat: the registry logs a prompt → text pyfunc."""

    pyfunc_task: PyfuncTask = "chat"

    def labels(self, recipe: Recipe) -> list[str]:
        return []

    def calibrate(self, model: torch.nn.Module, recipe: Recipe, data_dir: Path, out_dir: Path) -> None:
        return None  # no OOD screen for this family (yet): its answers carry no verdict


def _package(name: str) -> str:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ConfigError(f"unknown model family {name!r} (known: {', '.join(FAMILIES)})") from None


def get_family(name: str) -> Family:
    """The family object for a recipe's ``model.family`` (``<package>.family.FAMILY``)."""
    return importlib.import_module(f"{_package(name)}.family").FAMILY


def model_specs() -> list[type[BaseModel]]:
    """Every family's recipe ``model:`` class (``<package>.spec.SPEC``), in registry order."""
    return [importlib.import_module(f"{package}.spec").SPEC for package in FAMILIES.values()]
