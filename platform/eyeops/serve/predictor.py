"""A family-agnostic Predictor: load a registered (or local) model and answer with its identity.

``load_predictor("models:/eyeops-fundus-classifier@champion")`` (or ``NAME@alias``, ``NAME/3``,
``models:/NAME/3``, or a local model directory written by ``Family.save``) returns a
:class:`Predictor`. It only talks to the :class:`eyeops.inference.InferenceModel` protocol, so every
family serves the same way; each answer carries the model name, version, alias and recipe.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from eyeops.devices import resolve_device
from eyeops.errors import InvalidRequest, NotFoundError
from eyeops.inference import (
    Capability,
    ClassifyResult,
    GenerationRequest,
    GenerationResult,
    InferenceModel,
    check_tasks,
)

if TYPE_CHECKING:
    import torch

_REGISTRY_REF = re.compile(
    r"^(?:models:/)?(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]{0,99})"
    r"(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>\d+))?$"
)


class ModelStamp(BaseModel):
    """Which model answered: attached to every response."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    version: int | None = Field(None, description="Registry version; None for a local directory.")
    alias: str | None = None
    recipe: str = Field(description="Recipe name the model was trained from.")
    recipe_fingerprint: str = ""


class ModelInfo(ModelStamp):
    """A served model's identity and what it can do (``GET /v1/models``)."""

    family: str
    capabilities: list[Capability]
    labels: list[str]
    source: str = Field(description="models:/ URI or local directory it was loaded from.")
    tasks: dict[str, Capability] = Field(
        default_factory=dict, description="Task name -> what it produces; empty for single-task models."
    )
    default_task: str | None = Field(None, description="The task a request without one gets.")


class ClassifyAnswer(ClassifyResult):
    model: ModelStamp


class Predictor:
    """One loaded model plus its identity; batched, thread-confined inference."""

    def __init__(self, model: InferenceModel, info: ModelInfo, *, max_batch_size: int = 16) -> None:
        if not isinstance(model, InferenceModel):
            raise TypeError(f"{type(model).__name__} does not implement eyeops.inference.InferenceModel")
        check_tasks(model)
        if model.tasks and not info.tasks:  # the model's own declaration, unless the caller gave one
            info = info.model_copy(update={"tasks": dict(model.tasks), "default_task": model.default_task})
        self.model = model
        self.info = info
        self.max_batch_size = max_batch_size

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def stamp(self) -> ModelStamp:
        return ModelStamp(**self.info.model_dump(include=set(ModelStamp.model_fields)))

    def supports(self, capability: Capability) -> bool:
        return capability in self.info.capabilities

    def require(self, capability: Capability) -> None:
        if not self.supports(capability):
            raise InvalidRequest(
                f"model {self.name!r} cannot {capability} "
                f"(capabilities: {', '.join(self.info.capabilities) or 'none'})"
            )

    def resolve_task(self, task: str | None) -> str | None:
        """The task a request runs (``None`` → the default); 400 for a task this model lacks."""
        tasks = self.info.tasks
        if task is None:
            return self.info.default_task
        if not tasks:
            raise InvalidRequest(f"task {task!r}: model {self.name!r} has no tasks to choose from")
        if task not in tasks:
            raise InvalidRequest(f"unknown task {task!r} for model {self.name!r} (known: {', '.join(tasks)})")
        return task

    def capability_of(self, task: str | None) -> Capability:
        """What a request for ``task`` produces (plain chat for models without tasks)."""
        return self.info.tasks.get(task, "chat") if task is not None else "chat"

    def classify(self, images: Sequence[Image.Image]) -> list[ClassifyAnswer]:
        """Classify any number of images in forward passes of at most ``max_batch_size``."""
        self.require("classify")
        answers: list[ClassifyAnswer] = []
        stamp = self.stamp
        for start in range(0, len(images), self.max_batch_size):
            chunk = images[start : start + self.max_batch_size]
            results = self.model.classify(chunk)
            if len(results) != len(chunk):
                raise RuntimeError(f"model returned {len(results)} results for {len(chunk)} images")
            answers += [ClassifyAnswer(**r.model_dump(), model=stamp) for r in results]
        return answers

    def check_request(self, task: str | None, *, stream: bool = False) -> str | None:
        """The task a generation request runs; 400 for what this model cannot answer that way."""
        task = self.resolve_task(task)
        capability = self.capability_of(task)
        self.require(capability)
        if stream and capability == "generate_image":
            raise InvalidRequest(
                f"task {task!r} of model {self.name!r} returns images, which cannot be streamed: "
                "send stream=false"
            )
        return task

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        for request in requests:
            self.check_request(request.task)
        return list(self.model.generate(requests))

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        self.require("chat")
        self.check_request(request.task, stream=True)
        return self.model.stream(request)


def load_predictor(
    ref: str | Path, *, device: str | torch.device | None = None, max_batch_size: int = 16
) -> Predictor:
    """Load a model directory or a registry reference (``models:/NAME@alias``, ``NAME/3``…).

    ``device`` (``--device``) wins; ``None`` takes the saved recipe's ``serve.device``, whose ``auto``
    is ``EYEOPS_DEVICE``, whose ``auto`` is the accelerator when present (:mod:`eyeops.devices`).
    """
    path = Path(str(ref).removeprefix("file://"))
    if path.is_dir():
        return _from_dir(path, device=device, max_batch_size=max_batch_size, source=str(path))
    match = _REGISTRY_REF.match(str(ref))
    if match is None:
        raise NotFoundError(
            f"model {str(ref)!r}: neither a model directory nor models:/NAME[@alias|/version]"
        )
    name, alias, version = match["name"], match["alias"], match["version"]
    if alias is None and version is None:
        alias = "champion"
    model_uri = f"models:/{name}@{alias}" if alias else f"models:/{name}/{version}"
    from eyeops.registry import resolve  # the registry room's loader: pins the version, downloads

    resolved = resolve(model_uri)
    return _from_dir(
        Path(resolved.model_dir),
        device=device,
        max_batch_size=max_batch_size,
        source=resolved.model_uri,
        name=name,
        version=resolved.version,
        alias=alias,
    )


def _from_dir(
    model_dir: Path,
    *,
    device: str | torch.device | None,
    max_batch_size: int,
    source: str,
    name: str | None = None,
    version: int | None = None,
    alias: str | None = None,
) -> Predictor:
    from eyeops.families import get_family
    from eyeops.recipes import load_recipe

    recipe_file = model_dir / "recipe.yaml"
    if not recipe_file.is_file():
        raise NotFoundError(f"{model_dir}: not a saved eyeops model (no recipe.yaml)")
    recipe = load_recipe(recipe_file)
    if device is None:
        where = resolve_device(recipe.serve.device, field=f"serve.device of {recipe_file}")
    else:
        where = resolve_device(device, field="--device")
    model = get_family(recipe.family).load(model_dir, device=where)
    info = ModelInfo(
        name=name or recipe.register.model_name,
        version=version,
        alias=alias,
        recipe=recipe.name,
        recipe_fingerprint=recipe.fingerprint(),
        family=recipe.family,
        capabilities=sorted(model.capabilities),
        labels=list(model.labels),
        source=source,
    )
    return Predictor(model, info, max_batch_size=max_batch_size)
