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

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from eyeops.errors import InvalidRequest, NotFoundError
from eyeops.inference import Capability, ClassifyResult, GenerationRequest, GenerationResult, InferenceModel

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


class ClassifyAnswer(ClassifyResult):
    model: ModelStamp


class Predictor:
    """One loaded model plus its identity; batched, thread-confined inference."""

    def __init__(self, model: InferenceModel, info: ModelInfo, *, max_batch_size: int = 16) -> None:
        if not isinstance(model, InferenceModel):
            raise TypeError(f"{type(model).__name__} does not implement eyeops.inference.InferenceModel")
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

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        self.require("chat")
        return list(self.model.generate(requests))

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        self.require("chat")
        return self.model.stream(request)


def load_predictor(ref: str | Path, *, device: str = "cpu", max_batch_size: int = 16) -> Predictor:
    """Load a model directory or a registry reference (``models:/NAME@alias``, ``NAME/3``…)."""
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
    device: str,
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
    model = get_family(recipe.family).load(model_dir, device=device)
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
