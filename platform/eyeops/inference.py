"""The contract between a trained model and the servers.

A registered model is loaded (from a checkpoint directory or an MLflow model) into an object that
satisfies :class:`InferenceModel`. The serving layer (Predictor, gateway, KServe, Ray Serve) only
talks to this protocol, so it never needs to know which family it is serving.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, Protocol, get_args, runtime_checkable

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from eyeops.data.schema import Message
from eyeops.errors import ConfigError

Capability = Literal["classify", "chat", "report", "generate_image"]


class ClassifyResult(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    probabilities: dict[str, float] = Field(description="Per-label probability, label order kept.")
    findings: list[str] = Field(description="Labels at or above the decision threshold, most likely first.")


class GenerationRequest(BaseModel):
    """One chat request in model terms: messages with ``<image>`` placeholders + decoded images."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    messages: list[Message]
    images: list[Image.Image] = Field(default_factory=list)
    max_new_tokens: int = Field(128, ge=1, le=4096)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    task: str | None = Field(None, description="Adapter/task selector for multi-task models (H-LoRA).")


class GenerationResult(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: Literal["stop", "length"] = "stop"
    images_png: list[bytes] = Field(default_factory=list, description="Generated images (PNG bytes).")


@runtime_checkable
class InferenceModel(Protocol):
    """What every loaded model offers the servers. Unsupported capabilities raise InvalidRequest.

    Optional (not part of the structural check, so single-task models need nothing):

    - ``tasks: Mapping[str, Capability]`` -- the tasks a multi-task model answers
      (:attr:`GenerationRequest.task`) and what each produces, e.g. HealthGPT's
      ``{"comprehension": "chat", "generation": "generate_image"}``;
    - ``default_task: str`` -- the task a request without one gets (default: the first of ``tasks``).

    Read both through :func:`declared_tasks`.
    """

    capabilities: frozenset[Capability]
    labels: list[str]

    def classify(self, images: Sequence[Image.Image]) -> list[ClassifyResult]:
        """Batched multi-label classification."""
        ...

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Batched generation (KV-cache, padded batch)."""
        ...

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        """Incremental text for one request (SSE streaming)."""
        ...


def declared_tasks(model: Any) -> tuple[dict[str, Capability], str | None]:
    """A model's optional ``tasks`` and ``default_task``, checked; ``({}, None)`` for single-task models."""
    raw = getattr(model, "tasks", None)
    if not raw:
        return {}, None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{type(model).__name__}.tasks must map task name -> capability, got {raw!r}")
    known = get_args(Capability)
    tasks: dict[str, Capability] = {}
    for name, capability in raw.items():
        if capability not in known:
            raise ConfigError(
                f"{type(model).__name__}.tasks[{name!r}]: capability {capability!r} is not one of {known}"
            )
        tasks[str(name)] = capability
    default = getattr(model, "default_task", None) or next(iter(tasks))
    if default not in tasks:
        raise ConfigError(f"{type(model).__name__}.default_task {default!r} is not one of {sorted(tasks)}")
    return tasks, default
