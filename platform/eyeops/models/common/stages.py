"""Stage plumbing the families share: the recipe's stages, unwrap a DDP/DeepSpeed model, freeze by group."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

from eyeops.errors import ConfigError
from eyeops.recipes import Recipe, StageSpec

M = TypeVar("M", bound=nn.Module)


def stages_of(recipe: Recipe) -> list[StageSpec]:
    """The recipe's stages; a recipe with none trains one stage of every group."""
    return list(recipe.train.stages) or [StageSpec(name="train", trainable=["all"])]


def trains(recipe: Recipe, group: str) -> bool:
    """Whether any stage trains ``group`` (e.g. 'lora': then the model needs an adapter)."""
    return any(group in stage.trainable for stage in stages_of(recipe))


def unwrap(model: nn.Module, cls: type[M]) -> M:
    """The family's own module inside a DDP / DeepSpeed engine (or the model itself)."""
    inner = getattr(model, "module", model)
    if not isinstance(inner, cls):
        raise ConfigError(f"expected a {cls.__name__} model, got {type(inner).__name__}")
    return inner


def train_only(model: nn.Module, stage: StageSpec, names_of: Callable[[str], set[str]]) -> set[str]:
    """Make exactly the parameters of ``stage.trainable``'s groups trainable; returns their names."""
    trainable: set[str] = set().union(*(names_of(group) for group in stage.trainable))
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    model.train(model.training)  # re-apply the family's train() rules (frozen BatchNorms stay in eval)
    return trainable
