"""Stage plumbing the families share: the recipe's stages, unwrap a DDP/DeepSpeed model, freeze by group,
the saved model directory and weight files."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import yaml
from torch import Tensor, nn

from eyeops.errors import ConfigError, NotFoundError
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


def check_group(family: str, group: str, known: Sequence[str]) -> None:
    """Refuse a trainable group the family does not define, naming the ones it does."""
    if group not in known:
        raise ConfigError(
            f"train.stages[].trainable: unknown group {group!r} for family {family} "
            f"(known: {', '.join(known)})"
        )


def write_model_dir(
    out_dir: Path, recipe: Recipe, weights: dict[str, Tensor], files: tuple[str, str, str], meta: dict
) -> Path:
    """Write a saved model's core files: ``files`` = (weights, recipe, meta) names in ``out_dir``."""
    from safetensors.torch import save_file

    weights_file, recipe_file, meta_file = files
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / weights_file))
    (out / recipe_file).write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    (out / meta_file).write_text(json.dumps(meta, indent=2))
    return out


def read_model_dir(model_dir: Path | str, family: str, files: Sequence[str]) -> tuple[Path, Recipe]:
    """A saved model directory's path and recipe, after checking it holds ``files`` (recipe last)."""
    from eyeops.recipes import load_saved_recipe

    model_dir = Path(model_dir)
    for name in files:
        if not (model_dir / name).is_file():
            article = "an" if family[0] in "aeiou" else "a"
            raise NotFoundError(f"{model_dir}: not {article} {family} model directory ({name} missing)")
    return model_dir, load_saved_recipe(model_dir / files[-1])


def read_weights(path: str | Path, what: str) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file or a torch pickle (``.bin``/``.pt``/``.ckpt``; a
    Lightning checkpoint's ``state_dict`` unwrapped), loaded on the CPU without running pickled code.

    ``what`` names the setting in errors: a missing file is a :class:`NotFoundError`, anything that is
    not a dict of tensors a :class:`ConfigError`.
    """
    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise NotFoundError(f"{what} {str(path)!r}: file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle / zip / safetensors header errors of many kinds: not weights
        raise ConfigError(f"{what} {str(path)!r}: not a torch state dict: {exc}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a Lightning checkpoint (taming-transformers saves these)
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigError(f"{what} {str(path)!r}: expected a dict of tensors, not {type(state).__name__}")
    return state
