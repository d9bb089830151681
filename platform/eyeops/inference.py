"""The contract between a trained model and the servers.

A registered model is loaded (from a checkpoint directory or an MLflow model) into an object that
satisfies :class:`InferenceModel`. The serving layer (Predictor, gateway, KServe, Ray Serve) only
talks to this protocol, so it never needs to know which family it is serving.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args, runtime_checkable

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from eyeops.data.schema import Message
from eyeops.errors import ConfigError

if TYPE_CHECKING:
    from eyeops.models.common.calibration import Screening

Capability = Literal["classify", "chat", "report", "generate_image"]


class OODFields(BaseModel):
    """The out-of-distribution verdict every classify and image-chat answer carries.

    ``None`` throughout: the model has no OOD screen (saved without a calibration) or, for chat,
    the request had no image. See :mod:`eyeops.models.common.calibration`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    out_of_distribution: bool | None = Field(
        None, description="True: the image is unlike the images the model was trained on."
    )
    ood_score: float | None = Field(None, description="k-NN feature distance to the training images.")
    ood_threshold: float | None = Field(None, description="Scores above this are out of distribution.")
    message: str | None = Field(
        None, description="'outside what this model was trained on' when out_of_distribution."
    )

    def ood_fields(self) -> dict[str, Any]:
        """Only the verdict's fields, for an answer that carries them beside its own."""
        return self.model_dump(include=set(OODFields.model_fields))


class ClassifyResult(OODFields):
    probabilities: dict[str, float] = Field(description="Per-label probability, label order kept.")
    findings: list[str] = Field(
        description="Labels at or above the decision threshold, most likely first; empty when the "
        "image is out of distribution."
    )


class GenerationRequest(BaseModel):
    """One chat request in model terms: messages with ``<image>`` placeholders + decoded images."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    messages: list[Message]
    images: list[Image.Image] = Field(default_factory=list)
    max_new_tokens: int = Field(128, ge=1, le=4096)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    task: str | None = Field(None, description="Adapter/task selector for multi-task models (H-LoRA).")


class GenerationResult(OODFields):
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: Literal["stop", "length"] = "stop"
    images_png: list[bytes] = Field(default_factory=list, description="Generated images (PNG bytes).")


@runtime_checkable
class InferenceModel(Protocol):
    """What every loaded model offers the servers. Unsupported capabilities raise InvalidRequest.

    ``tasks`` maps the tasks a multi-task model answers (:attr:`GenerationRequest.task`) to what each
    produces, e.g. HealthGPT's ``{"comprehension": "chat", "generation": "generate_image"}``, and
    ``default_task`` is the one a request without a task gets; single-task models declare ``{}`` and
    ``None``. :func:`check_tasks` validates the declaration when a model is served.
    """

    capabilities: frozenset[Capability]
    labels: list[str]
    tasks: Mapping[str, Capability]
    default_task: str | None

    def classify(self, images: Sequence[Image.Image]) -> list[ClassifyResult]:
        """Batched multi-label classification."""
        ...

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """One batched generation over ``requests`` (KV-cache, padded batch); no queueing."""
        ...

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        """Incremental text for one request (SSE streaming); closing it stops decoding."""
        ...


@runtime_checkable
class ScreensImages(Protocol):
    """An :class:`InferenceModel` with an out-of-distribution screen the gateway can ask before a
    streamed answer starts (a stream of text pieces cannot carry the verdict itself)."""

    def screen(self, images: Sequence[Image.Image]) -> Screening | None:
        """One verdict on a request's images; None without a screen or without images."""
        ...


def check_tasks(model: InferenceModel) -> None:
    """Raise :class:`ConfigError` when ``model.tasks``/``model.default_task`` do not fit together."""
    name, tasks, default = type(model).__name__, model.tasks, model.default_task
    known = get_args(Capability)
    for task, capability in tasks.items():
        if capability not in known:
            raise ConfigError(f"{name}.tasks[{task!r}]: capability {capability!r} is not one of {known}")
    if tasks and default not in tasks:
        raise ConfigError(f"{name}.default_task {default!r} is not one of {sorted(tasks)}")
    if not tasks and default is not None:
        raise ConfigError(f"{name}.default_task {default!r} names a task but the model declares none")
