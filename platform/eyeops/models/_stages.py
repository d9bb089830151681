"""Stage plumbing the multimodal families share: unwrap a DDP/DeepSpeed-wrapped model, freeze by group."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

from eyeops.errors import ConfigError
from eyeops.recipes import StageSpec

M = TypeVar("M", bound=nn.Module)


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
