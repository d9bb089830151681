"""What ``eyeops evaluate`` can score: a registered model, a checkpoint directory, or a base model.

:func:`resolve_target` turns one argument into an :class:`EvalTarget` (recipe + checkpoint + the
row label the report uses):

- ``NAME``, ``NAME@alias``, ``NAME/3``, ``models:/…`` — a registered version (``eyeops.registry``);
- a directory a family saved (training output, an exported model) — a checkpoint; or a
  ``CheckpointRef`` JSON file naming one (local or remote);
- ``base`` or ``base:<hub id | local dir | packaged:name>`` — the recipe's model with its base
  language model and *no fine-tuning*: :func:`base_model_dir` builds it with the family's own
  ``build_model`` (pretrained weights as the recipe loads them, adapters and connectors freshly
  initialised from ``train.seed``) and saves it with ``save``, so it answers zero-shot through the
  same loading, prompt format (system prompt, chat template) and evaluator as a fine-tuned model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from eyeops import storage
from eyeops.errors import ConfigError, NotFoundError
from eyeops.recipes import Recipe, load_recipe, load_saved_recipe
from eyeops.refs import CheckpointRef

BASE = "base"
TargetKind = Literal["base", "registered", "checkpoint"]


class EvalTarget(BaseModel):
    """One model to evaluate, with the recipe that loads and scores it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    label: str
    kind: TargetKind
    recipe: Recipe
    checkpoint: CheckpointRef
    base_model: str
    model_uri: str | None = None


def base_field(recipe: Recipe) -> str:
    """The recipe key naming the pretrained language model a family starts from."""
    from eyeops.models.common.specs import LanguageModelSpec
    from eyeops.models.llm.spec import LLMModel

    if isinstance(recipe.model, LLMModel):
        return "base"
    if isinstance(recipe.model, LanguageModelSpec):
        return "llm"
    raise ConfigError(
        f"model.family {recipe.family!r} has no base language model to swap; evaluate its base "
        "with a recipe whose model section names the backbone you want"
    )


def base_model_id(recipe: Recipe) -> str:
    """The recipe's base model as written (hub id, local dir, ``packaged:…``)."""
    try:
        return str(getattr(recipe.model, base_field(recipe)))
    except ConfigError:
        model = recipe.model
        return f"{getattr(model, 'backbone', recipe.family)}:{getattr(model, 'weights', '')}"


def with_base(recipe: Recipe, base: str | None) -> Recipe:
    """``recipe`` with its base language model replaced by ``base`` (``None``: unchanged)."""
    if not base:
        return recipe
    field = base_field(recipe)
    if getattr(recipe.model, "llm_config", None) is not None:
        raise ConfigError(
            "model.llm_config builds a randomly initialised LM, so a base model "
            f"{base!r} would be ignored; drop llm_config to evaluate it"
        )
    return recipe.with_overrides({f"model.{field}": base})


def base_key(recipe: Recipe) -> str:
    """What determines a base model's zero-shot answers: its model section (base, prompt format,
    adapter shapes), the stages' trainable groups (what a save carries) and the seed of fresh layers;
    not step counts or learning rates, so retraining longer reuses the measured baseline."""
    data = {
        "model": recipe.model.model_dump(mode="json"),
        "stages": [sorted(s.trainable) for s in recipe.train.stages],
        "seed": recipe.train.seed,
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def base_model_dir(recipe: Recipe) -> Path:
    """The recipe's untrained model saved once under ``<storage>/cache/base-models/<key>``."""
    import torch

    from eyeops.families import get_family

    family = get_family(recipe.family)
    target = storage.cache_dir("base-models") / base_key(recipe)[:24]
    target.parent.mkdir(parents=True, exist_ok=True)

    def fill(staging: Path) -> None:
        torch.manual_seed(recipe.train.seed)  # fresh connectors/adapters: the same every time
        family.save(family.build_model(recipe), recipe, staging)

    return storage.fill_once(target, fill)


def base_target(recipe: Recipe, base: str | None = None) -> EvalTarget:
    """The zero-shot target for ``recipe`` (its own base, or ``base`` swapped in)."""
    from eyeops.evaluate.runner import checkpoint_ref

    chosen = with_base(recipe, base)
    model_id = base_model_id(chosen)
    checkpoint = checkpoint_ref(str(base_model_dir(chosen)), chosen)
    checkpoint = checkpoint.model_copy(update={"run_name": f"base-{base_key(chosen)[:12]}", "step": 0})
    return EvalTarget(
        label=f"base:{model_id}", kind="base", recipe=chosen, checkpoint=checkpoint, base_model=model_id
    )


def resolve_target(spec: str, recipe: str | Recipe | None = None, *, label: str | None = None) -> EvalTarget:
    """An :class:`EvalTarget` for ``spec`` (see the module docstring); ``recipe`` (name, path or
    object) is required for base models and overrides the recipe saved with a model otherwise."""
    from eyeops.evaluate.runner import checkpoint_ref

    chosen = load_recipe(recipe) if isinstance(recipe, str | Path) else recipe
    if spec == BASE or spec.startswith(f"{BASE}:"):
        if chosen is None:
            raise ConfigError(
                f"{spec!r}: evaluating a base model needs --recipe (its prompt format and family)"
            )
        target = base_target(chosen, spec.partition(":")[2] or None)
        return target.model_copy(update={"label": label}) if label else target
    if spec.endswith(".json") and Path(spec).is_file():
        ref = CheckpointRef.model_validate_json(Path(spec).read_text(encoding="utf-8"))
        target = resolve_target(str(storage.local_copy(ref.uri)), chosen, label=label)
        return target.model_copy(update={"checkpoint": ref})
    path = Path(spec.removeprefix("file://"))
    if path.is_dir():
        model_dir, kind, uri, default_label = path, "checkpoint", None, path.name
        if path.name == "model" and path.parent.name:  # training output: <run>/…/model
            default_label = f"{path.parent.name}/model"
    else:
        from eyeops.registry import resolve

        resolved = resolve(spec)
        model_dir, kind, uri = resolved.model_dir, "registered", resolved.model_uri
        default_label = resolved.model_uri.removeprefix("models:/")
    if chosen is None:
        saved = Path(model_dir) / "recipe.yaml"
        if not saved.is_file():
            raise NotFoundError(f"{model_dir} holds no recipe.yaml: pass --recipe NAME")
        chosen = load_saved_recipe(saved)
    checkpoint = checkpoint_ref(str(model_dir), chosen)
    return EvalTarget(
        label=label or default_label,
        kind=kind,
        recipe=chosen,
        checkpoint=checkpoint,
        base_model=base_model_id(chosen),
        model_uri=uri,
    )
