"""Wire formats of the gateway: /v1/classify and the OpenAI chat-completions subset we serve.

Separate from the transport (``gateway.py``) as KServe separates ``v2_datamodels`` from its
endpoints. Requests are strict (unknown fields → 422) except where OpenAI clients routinely send
optional knobs, which are accepted and named here.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from eyeops.inference import Capability, OODFields
from eyeops.serve.predictor import ModelStamp


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- /v1/classify ---------------------------------------------------------------------------------
class ClassifyRequest(_Strict):
    """One image (``image_b64``) or several (``images_b64``), base64 of JPEG/PNG/TIFF/DICOM bytes."""

    # Exactly one of the two, in the published schema too: each branch requires its field with a
    # non-null value (an explicit null stands for "not given", as the validator below reads it).
    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {"required": ["image_b64"], "properties": {"image_b64": {"type": "string"}}},
                {"required": ["images_b64"], "properties": {"images_b64": {"type": "array"}}},
            ]
        }
    )

    model: str | None = Field(None, max_length=200, description="Served model name; default: the first.")
    image_b64: str | None = Field(None, min_length=1, description="Base64 of one image file.")
    images_b64: list[Annotated[str, Field(min_length=1)]] | None = Field(
        None, min_length=1, description="Base64 of several image files."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ClassifyRequest:
        if (self.image_b64 is None) == (self.images_b64 is None):
            raise ValueError("give exactly one of 'image_b64' or 'images_b64'")
        return self

    @property
    def encoded(self) -> list[str]:
        return [self.image_b64] if self.image_b64 is not None else list(self.images_b64 or [])


class LabelScore(_Strict):
    label: str
    probability: float


class OODVerdict(OODFields):
    """Whether the input is unlike the model's training images: when ``out_of_distribution`` is true
    no findings are given and ``message`` says "outside what this model was trained on"; all null
    when the model has no out-of-distribution screen (docs/architecture.md, "Calibration")."""


class ClassifyItem(OODVerdict):
    probabilities: dict[str, float] = Field(
        description="Per-label probability in the model's label order (temperature-calibrated)."
    )
    findings: list[str] = Field(
        description="Labels at or above the decision threshold, most likely first; empty when "
        "out_of_distribution is true."
    )
    top: list[LabelScore] = Field(description="The three most likely labels.")


class ClassifyResponse(_Strict):
    model: ModelStamp
    results: list[ClassifyItem]


# --- /v1/models -----------------------------------------------------------------------------------
class ModelCard(_Strict):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "eyeops"
    name: str
    version: int | None
    alias: str | None
    recipe: str
    family: str
    capabilities: list[Capability]
    labels: list[str]
    tasks: dict[str, Capability] = Field(
        default_factory=dict,
        description="Selectable tasks (model suffix 'name:task' or 'eyeops_task') and what each returns.",
    )
    default_task: str | None = Field(None, description="The task a request without one gets.")


class ModelList(_Strict):
    object: Literal["list"] = "list"
    data: list[ModelCard]
    models: list[str] = Field(description="Names only, the shape KServe's v1 GET /v1/models returns.")


# --- /v1/chat/completions (OpenAI schema subset) --------------------------------------------------
class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImageURL(_Strict):
    url: str = Field(description="A data: URL (data:image/png;base64,…); remote URLs are refused.")
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]
    name: str | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatCompletionRequest(_Strict):
    model: str = Field(min_length=1, max_length=200)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: Literal[1] = 1
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    eyeops_task: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="Task of a multi-task model (see /v1/models); same as the model suffix 'name:task'.",
    )


class AssistantMessage(_Strict):
    """Plain text stays a string (OpenAI compatible); an answer with images is a list of parts."""

    role: Literal["assistant"] = "assistant"
    content: str | list[ContentPart]


class Choice(_Strict):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]


class Usage(_Strict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(_Strict):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str = Field(description="name/version/recipe-fingerprint of the model that answered.")
    eyeops_model: ModelStamp
    eyeops_task: str | None = Field(None, description="The task that answered (multi-task models).")
    eyeops_ood: OODVerdict | None = Field(
        None,
        description="The out-of-distribution verdict on the request's images (null: no image, or the "
        "model has no screen); when flagged the answer is the message, not a generated text.",
    )


class Delta(_Strict):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(_Strict):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(_Strict):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str
    eyeops_ood: OODVerdict | None = Field(
        None, description="On the first chunk: the out-of-distribution verdict on the request's images."
    )


class ErrorDetail(_Strict):
    code: str
    message: str
    request_id: str


class ErrorResponse(_Strict):
    error: ErrorDetail
