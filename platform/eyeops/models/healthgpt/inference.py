"""HealthGPT inference: reload a saved model; comprehension chat and image generation, task per request."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from PIL import Image

from eyeops.errors import ConfigError, InvalidRequest, NotFoundError
from eyeops.inference import ClassifyResult, GenerationRequest, GenerationResult
from eyeops.models.common.hlora import route_tasks
from eyeops.models.common.vq import VQModel, to_images, to_pixels, tokens_to_png
from eyeops.models.healthgpt.modeling import (
    RECIPE_FILE,
    TASKS,
    VQ_FILE,
    WEIGHTS_FILE,
    HealthGPT,
    _processor,
    _spec,
    build_healthgpt,
)
from eyeops.recipes import Recipe, load_saved_recipe


def load_model_dir(model_dir: Path) -> tuple[Recipe, HealthGPT, Any]:
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    for name in (WEIGHTS_FILE, VQ_FILE, RECIPE_FILE):
        if not (model_dir / name).is_file():
            raise NotFoundError(f"{model_dir}: not a healthgpt model directory ({name} missing)")
    recipe = load_saved_recipe(model_dir / RECIPE_FILE)
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
class HealthGPTPredictor:
    """InferenceModel: chat/report (comprehension) and image generation, task chosen per request."""

    capabilities = frozenset({"chat", "report", "generate_image"})
    # what each H-LoRA task answers; the gateway selects one per request (model suffix / eyeops_task)
    tasks = MappingProxyType({"comprehension": "chat", "generation": "generate_image"})
    default_task = "comprehension"

    def __init__(self, recipe: Recipe, model: HealthGPT, tokenizer: Any, device: str = "cpu") -> None:
        self.recipe, self.model, self.tokenizer, self.device = (
            recipe,
            model.to(device).eval(),
            tokenizer,
            device,
        )
        self.model.lm.config.use_cache = True
        self.processor = _processor(_spec(recipe), tokenizer)
        self.labels: list[str] = []
        self._lock = threading.Lock()  # torch modules are not re-entrant; tasks need no switching
        ids = model.lm.generation_config.eos_token_id
        self._eos = [ids] if isinstance(ids, int) else list(ids or [])
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in self._eos:
            self._eos.append(tokenizer.eos_token_id)

    @classmethod
    def from_dir(cls, model_dir: Path, device: str = "cpu") -> HealthGPTPredictor:
        return cls(*load_model_dir(model_dir), device=device)

    def classify(self, images: Sequence[Image.Image]) -> list[ClassifyResult]:
        raise InvalidRequest("model family 'healthgpt' answers chat and image generation, not classify")

    @staticmethod
    def task_of(request: GenerationRequest) -> str:
        task = request.task or "comprehension"
        if task not in TASKS:
            raise InvalidRequest(f"unknown task {task!r} for healthgpt (known: {', '.join(TASKS)})")
        return task

    def _inputs(self, requests: Sequence[GenerationRequest], tasks: Sequence[str]) -> dict[str, Any]:
        prompts, pixels, image_tasks = [], [], []
        for request, task in zip(requests, tasks, strict=True):
            if task == "generation" and len(request.images) != 1:
                raise InvalidRequest(
                    f"the generation task takes exactly one input image, got {len(request.images)}"
                )
            pv, plans = self.processor.pixels(request.images)
            prompts.append(self.processor.prompt_ids(request.messages, plans))
            pixels.append(pv)
            image_tasks += [task] * len(plans)
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), int(self.tokenizer.pad_token_id), dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :], mask[i, width - len(p) :] = torch.tensor(p), 1
        with torch.no_grad():
            embeds = self.model.embed(ids.to(self.device), torch.cat(pixels).to(self.device), image_tasks)
        return {"inputs_embeds": embeds, "attention_mask": mask.to(self.device)}

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

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Requests are grouped by sampling settings; tasks mix freely inside a batch."""
        tasks = [self.task_of(r) for r in requests]
        groups: dict[tuple[float, float], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.temperature, r.top_p), []).append(i)
        results: dict[int, GenerationResult] = {}
        for indices in groups.values():
            batch, row_tasks = [requests[i] for i in indices], [tasks[i] for i in indices]
            limit = max(
                self.model.vq.num_tokens + 2 if t == "generation" else r.max_new_tokens
                for r, t in zip(batch, row_tasks, strict=True)
            )
            inputs = self._inputs(batch, row_tasks)
            with self._lock, torch.no_grad(), route_tasks(self.model.lm, row_tasks):
                out = self.model.lm.generate(
                    **inputs,
                    **self._sampling(batch[0], limit),
                    prefix_allowed_tokens_fn=self._image_grammar(row_tasks)
                    if "generation" in row_tasks
                    else None,
                )
            prompt_tokens = inputs["attention_mask"].sum(1).tolist()
            for row, i in enumerate(indices):
                results[i] = self._result(
                    out[row].tolist(), requests[i], row_tasks[row], int(prompt_tokens[row])
                )
        return [results[i] for i in range(len(requests))]

    def _sampling(self, request: GenerationRequest, limit: int) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": limit,
            "pad_token_id": int(self.tokenizer.pad_token_id),
            "eos_token_id": self._eos,
        }
        if request.temperature > 0:
            return {**kwargs, "do_sample": True, "temperature": request.temperature, "top_p": request.top_p}
        return {**kwargs, "do_sample": False, "temperature": None, "top_p": None, "top_k": None}

    def _result(
        self, tokens: list[int], request: GenerationRequest, task: str, prompt: int
    ) -> GenerationResult:
        if task == "generation":
            code_of = {tid: i for i, tid in enumerate(self.model.image_token_ids[1:-1])}
            codes = [code_of[t] for t in tokens if t in code_of][: self.model.vq.num_tokens]
            png = tokens_to_png(self.model.vq, codes)
            side = self.model.vq.spec.image_size
            return GenerationResult(
                text=f"Generated fundus image ({side}x{side} px).",
                prompt_tokens=prompt,
                completion_tokens=len(codes) + 2,
                images_png=[png],
            )
        new, finish = [], "length"
        for t in tokens[: request.max_new_tokens]:
            if t in self._eos:
                finish = "stop"
                break
            new.append(t)
        text = self.tokenizer.decode(new, skip_special_tokens=True).strip()
        return GenerationResult(
            text=text, prompt_tokens=prompt, completion_tokens=len(new), finish_reason=finish
        )

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        """Comprehension text as one piece per finished generation (images cannot be streamed)."""
        if self.task_of(request) == "generation":
            raise InvalidRequest("the generation task returns an image: request it without streaming")
        yield self.generate([request])[0].text

    def reconstruct(self, image: Image.Image) -> Image.Image:
        """The VQ tokenizer's own round trip (what a perfect generation answer decodes to)."""
        with torch.no_grad():
            recon, _, _ = self.model.vq(to_pixels([image], self.model.vq.spec.image_size).to(self.device))
        return to_images(recon)[0]
