"""eye-vlm inference: reload a saved model; batched chat/report generation with images."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from eyeops.errors import ConfigError, InvalidRequest, NotFoundError
from eyeops.inference import ClassifyResult, GenerationRequest, GenerationResult
from eyeops.models.common.generation import stream_generation
from eyeops.models.vlm.modeling import RECIPE_FILE, WEIGHTS_FILE, EyeVLM, _processor, _spec, build_vlm
from eyeops.recipes import Recipe, load_saved_recipe


def load_model_dir(model_dir: Path) -> tuple[Recipe, EyeVLM, Any]:
    """Rebuild a saved VLM: the recipe's references, then the saved groups on top."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / WEIGHTS_FILE).is_file() or not (model_dir / RECIPE_FILE).is_file():
        raise NotFoundError(
            f"{model_dir}: not a VLM model directory (needs {WEIGHTS_FILE} and {RECIPE_FILE})"
        )
    recipe = load_saved_recipe(model_dir / RECIPE_FILE)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir / "tokenizer"))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = build_vlm(recipe, tokenizer)
    state = load_file(str(model_dir / WEIGHTS_FILE))
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ConfigError(
            f"{model_dir}: saved tensors do not fit the rebuilt model, e.g. {result.unexpected_keys[0]!r}"
        )
    return recipe, model, tokenizer


# --- inference -----------------------------------------------------------------------------------
class VLMPredictor:
    """:class:`eyeops.inference.InferenceModel` for chat and report generation with images."""

    capabilities = frozenset({"chat", "report"})

    def __init__(self, recipe: Recipe, model: EyeVLM, tokenizer: Any, device: str = "cpu") -> None:
        if hasattr(model.lm, "merge_and_unload"):  # fold LoRA into the weights: plain-speed decoding
            model.lm = model.lm.merge_and_unload()
        self.recipe, self.model, self.tokenizer = recipe, model.to(device).eval(), tokenizer
        self.device = device
        self.processor = _processor(
            _spec(recipe), tokenizer, model.tower.mean, model.tower.std, model.tokens_per_view
        )
        self.labels: list[str] = []
        self._lock = threading.Lock()  # one generate at a time; the batcher groups concurrent calls
        self._eos = self._stop_ids()

    @classmethod
    def from_dir(cls, model_dir: Path, device: str = "cpu") -> VLMPredictor:
        recipe, model, tokenizer = load_model_dir(model_dir)
        return cls(recipe, model, tokenizer, device)

    def _stop_ids(self) -> list[int]:
        ids = self.model.lm.generation_config.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    def classify(self, images: Sequence[Any]) -> list[ClassifyResult]:
        raise InvalidRequest("model family 'vlm' answers chat and report requests, not classify")

    def _inputs(self, requests: Sequence[GenerationRequest]) -> dict[str, torch.Tensor]:
        """Left-padded prompt embeddings for a batch of requests."""
        prompts, pixels, plans = [], [], []
        for request in requests:
            pv, pl = self.processor.pixels(request.images)
            prompts.append(self.processor.prompt_ids(request.messages, pl))
            pixels.append(pv)
            plans.extend(pl)
        width = max(len(p) for p in prompts)
        pad = int(self.tokenizer.pad_token_id)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :], mask[i, width - len(p) :] = torch.tensor(p), 1
        image_plans = torch.tensor([[p.rows, p.cols] for p in plans], dtype=torch.long).view(-1, 2)
        with torch.no_grad():
            embeds = self.model.embed(ids.to(self.device), torch.cat(pixels).to(self.device), image_plans)
        return {"inputs_embeds": embeds, "attention_mask": mask.to(self.device)}

    def _gen_kwargs(self, request: GenerationRequest, max_new_tokens: int) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "pad_token_id": int(self.tokenizer.pad_token_id),
            "eos_token_id": self._eos,
        }
        if request.temperature > 0:
            kwargs.update(do_sample=True, temperature=request.temperature, top_p=request.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Batched KV-cache decoding; requests with different sampling settings run as separate batches."""
        results: dict[int, GenerationResult] = {}
        groups: dict[tuple[float, float], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.temperature, r.top_p), []).append(i)
        for indices in groups.values():
            batch = [requests[i] for i in indices]
            limit = max(r.max_new_tokens for r in batch)
            inputs = self._inputs(batch)
            with self._lock, torch.no_grad():
                out = self.model.lm.generate(**inputs, **self._gen_kwargs(batch[0], limit))
            prompt_tokens = inputs["attention_mask"].sum(1).tolist()
            for row, i in enumerate(indices):
                results[i] = self._result(
                    out[row].tolist(), requests[i].max_new_tokens, int(prompt_tokens[row])
                )
        return [results[i] for i in range(len(requests))]

    def _result(self, tokens: list[int], max_new: int, prompt_tokens: int) -> GenerationResult:
        pad = self.tokenizer.pad_token_id
        new, finish = [], "length"
        for t in tokens[:max_new]:
            if t in self._eos:
                finish = "stop"
                break
            new.append(t)
        while new and new[-1] == pad and pad not in self._eos:
            new.pop()
        text = self.tokenizer.decode(new, skip_special_tokens=True).strip()
        return GenerationResult(
            text=text, prompt_tokens=prompt_tokens, completion_tokens=len(new), finish_reason=finish
        )

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        """Text pieces as they are decoded; joined, they equal ``generate``'s text."""
        inputs = self._inputs([request])

        def run(**streaming: Any) -> None:
            with self._lock, torch.no_grad():
                self.model.lm.generate(
                    **inputs, **self._gen_kwargs(request, request.max_new_tokens), **streaming
                )

        return stream_generation(self.tokenizer, run, thread_name="eyeops-vlm-stream")
