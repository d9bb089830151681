"""HealthGPT inference: reload a saved model; comprehension chat and image generation, task per request."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from PIL import Image

from eyeops.data.image_pairs import GENERATION_PROMPTS, GENERATION_TASKS
from eyeops.data.schema import Message
from eyeops.devices import place, resolve_device
from eyeops.errors import ConfigError, InvalidRequest
from eyeops.inference import Capability, ClassifyResult, GenerationRequest, GenerationResult
from eyeops.models.common.generation import BatchedChat
from eyeops.models.common.hlora import route_tasks
from eyeops.models.common.stages import read_model_dir
from eyeops.models.common.vq import VQModel, to_images, to_pixels, tokens_to_png
from eyeops.models.healthgpt.modeling import (
    RECIPE_FILE,
    SERVED_TASKS,
    VQ_FILE,
    WEIGHTS_FILE,
    HealthGPT,
    _processor,
    _spec,
    adapter_of,
    build_healthgpt,
)
from eyeops.recipes import Recipe

# Image tasks that read exactly one input image, prompted as their training samples were.
_FROM_AN_IMAGE = frozenset(GENERATION_TASKS) - {"text_to_image"}


def load_model_dir(model_dir: Path) -> tuple[Recipe, HealthGPT, Any]:
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    model_dir, recipe = read_model_dir(model_dir, "healthgpt", (WEIGHTS_FILE, VQ_FILE, RECIPE_FILE))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir / "tokenizer"))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    vq = VQModel(_spec(recipe).vq)
    vq.load_state_dict(load_file(str(model_dir / VQ_FILE)))
    model = build_healthgpt(recipe, tokenizer, vq=vq)
    result = model.load_state_dict(load_file(str(model_dir / WEIGHTS_FILE)), strict=False)
    if result.unexpected_keys:
        raise ConfigError(
            f"{model_dir}: saved tensors do not fit the rebuilt model, e.g. {result.unexpected_keys[0]!r}"
        )
    return recipe, model, tokenizer


# --- inference -----------------------------------------------------------------------------------
class HealthGPTPredictor(BatchedChat):
    """InferenceModel: chat/report (comprehension) and image generation, task chosen per request."""

    capabilities: frozenset[Capability] = frozenset({"chat", "report", "generate_image"})
    # what each task answers; the gateway selects one per request (model suffix / eyeops_task).
    # Every image task runs the generation H-LoRA adapter and vision layer.
    tasks: Mapping[str, Capability] = MappingProxyType(
        {t: "chat" if t == "comprehension" else "generate_image" for t in SERVED_TASKS}
    )
    default_task: str | None = "comprehension"

    def __init__(
        self, recipe: Recipe, model: HealthGPT, tokenizer: Any, device: str | torch.device = "cpu"
    ) -> None:
        self.recipe, self.model = recipe, place(model, resolve_device(device)).eval()
        super().__init__(tokenizer, device)
        self.processor = _processor(_spec(recipe), tokenizer)

    @classmethod
    def from_dir(cls, model_dir: Path, device: str | torch.device = "cpu") -> HealthGPTPredictor:
        return cls(*load_model_dir(model_dir), device=device)

    @property
    def lm(self) -> Any:
        return self.model.lm

    def classify(self, images: Sequence[Image.Image]) -> list[ClassifyResult]:
        raise InvalidRequest("model family 'healthgpt' answers chat and image generation, not classify")

    @staticmethod
    def task_of(request: GenerationRequest) -> str:
        """The request's task, checked (default comprehension)."""
        task = request.task or "comprehension"
        adapter_of(task)  # raises InvalidRequest for an unknown task
        return task

    @classmethod
    def adapter(cls, request: GenerationRequest) -> str:
        return adapter_of(cls.task_of(request))

    def check(self, request: GenerationRequest) -> None:
        task, n = self.task_of(request), len(request.images)
        if task == "text_to_image" and n:
            raise InvalidRequest(f"the text_to_image task draws from the prompt alone, got {n} image(s)")
        if task in _FROM_AN_IMAGE and n != 1:
            raise InvalidRequest(f"the {task} task takes exactly one input image, got {n}")
        if task == "generation" and n > 1:
            raise InvalidRequest(f"the generation task takes at most one input image, got {n}")

    def messages_of(self, request: GenerationRequest) -> list[Message]:
        """The turns the model reads: an image task's training prompt, else the request's own."""
        task = self.task_of(request)
        if task in _FROM_AN_IMAGE:
            return [Message(role="user", content=GENERATION_PROMPTS[task])]
        return list(request.messages)

    def inputs(self, requests: Sequence[GenerationRequest]) -> dict[str, torch.Tensor]:
        """Left-padded prompt embeddings; each image read through its row's task connector."""
        prompts, pixels, image_tasks = [], [], []
        for request in requests:
            task = self.adapter(request)
            pv, plans = self.processor.pixels(request.images)
            prompts.append(self.processor.prompt_ids(self.messages_of(request), plans))
            pixels.append(pv)
            image_tasks += [task] * len(plans)
        pixel_values = torch.cat(pixels).to(self.device)
        return self.embedded(prompts, lambda ids: self.model.embed(ids, pixel_values, image_tasks))

    def token_limit(self, request: GenerationRequest) -> int:
        if self.adapter(request) == "generation":
            return self.model.vq.num_tokens + 2  # <start_index>, the codes, <end_index>
        return request.max_new_tokens

    def decoding(self, requests: Sequence[GenerationRequest]) -> AbstractContextManager:
        """Row i decodes through its own task's adapters: tasks mix freely inside a batch."""
        return route_tasks(self.model.lm, [self.adapter(r) for r in requests])

    def constraints(self, requests: Sequence[GenerationRequest]) -> dict[str, Any]:
        row_tasks = [self.adapter(r) for r in requests]
        if "generation" not in row_tasks:
            return {}
        return {"prefix_allowed_tokens_fn": self._image_grammar(row_tasks)}

    def _image_grammar(self, row_tasks: Sequence[str]) -> Callable[[int, torch.Tensor], list[int]]:
        """Generation rows: <start_index>, exactly grid² <idx_i>, <end_index>; other rows unconstrained."""
        start, *idx, end = self.model.image_token_ids
        n, everything = self.model.vq.num_tokens, list(range(len(self.tokenizer)))

        def allowed(row: int, generated: torch.Tensor) -> list[int]:
            if row_tasks[row] != "generation":
                return everything
            k = generated.shape[-1]
            return [start] if k == 0 else idx if k <= n else [end]

        return allowed

    def result(self, tokens: list[int], request: GenerationRequest, prompt_tokens: int) -> GenerationResult:
        task = self.task_of(request)
        if adapter_of(task) != "generation":
            return super().result(tokens, request, prompt_tokens)
        code_of = {tid: i for i, tid in enumerate(self.model.image_token_ids[1:-1])}
        codes = [code_of[t] for t in tokens if t in code_of][: self.model.vq.num_tokens]
        side = self.model.vq.spec.image_size
        return GenerationResult(
            text=f"Generated image ({task}, {side}x{side} px).",
            prompt_tokens=prompt_tokens,
            completion_tokens=len(codes) + 2,
            images_png=[tokens_to_png(self.model.vq, codes)],
        )

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        """Comprehension text token by token (an image answer cannot be streamed)."""
        if self.adapter(request) == "generation":
            raise InvalidRequest(
                f"the {self.task_of(request)} task returns an image: request it without streaming"
            )
        return super().stream(request)

    def reconstruct(self, image: Image.Image) -> Image.Image:
        """The VQ tokenizer's own round trip (what a perfect generation answer decodes to)."""
        with torch.no_grad():
            recon, _, _ = self.model.vq(to_pixels([image], self.model.vq.spec.image_size).to(self.device))
        return to_images(recon)[0]
