"""OphGLM inference: classification through the image encoder, chat conditioned on the fused prefix."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import torch
from PIL import Image

from eyeops.devices import place, resolve_device
from eyeops.inference import Capability, ClassifyResult, GenerationRequest
from eyeops.models.classifier.modeling import FundusTransform
from eyeops.models.common.generation import BatchedChat
from eyeops.models.ophglm.modeling import (
    OphGLM,
    _bert_tokenizer,
    _llm_tokenizer,
    _processor,
    _spec,
    question_text,
)
from eyeops.recipes import Recipe


class OphGLMPredictor(BatchedChat):
    """InferenceModel: chat about one fundus image (or none) and multi-label classification."""

    capabilities: frozenset[Capability] = frozenset({"chat", "report", "classify"})
    tasks: Mapping[str, Capability] = MappingProxyType({})
    default_task: str | None = None

    def __init__(self, recipe: Recipe, model: OphGLM, device: str | torch.device = "cpu") -> None:
        spec = _spec(recipe)
        if hasattr(model.lm, "merge_and_unload"):
            model.lm = model.lm.merge_and_unload()
        self.recipe, self.model = recipe, place(model, resolve_device(device)).eval()
        super().__init__(_llm_tokenizer(spec), device)
        self.bert_tok = _bert_tokenizer(spec)
        self.processor = _processor(spec, self.tokenizer)
        self.labels = list(spec.image_encoder.labels)
        self.transform = FundusTransform(
            spec.image_encoder.image_size, circular_crop=spec.image_encoder.circular_crop
        )
        self.threshold = recipe.evaluate.threshold

    @property
    def lm(self) -> Any:
        return self.model.lm

    def classify(self, images: Sequence[Image.Image]) -> list[ClassifyResult]:
        pixels = torch.stack([self.transform(i) for i in images]).to(self.device)
        with self._lock, torch.inference_mode():
            probs = torch.sigmoid(self.model.classifier(pixels))
        out = []
        for row in probs.tolist():
            pairs = dict(zip(self.labels, row, strict=True))
            found = sorted((k for k, v in pairs.items() if v >= self.threshold), key=lambda k: -pairs[k])
            out.append(ClassifyResult(probabilities=pairs, findings=found))
        return out

    def inputs(self, requests: Sequence[GenerationRequest]) -> dict[str, torch.Tensor]:
        """Left-padded prompt embeddings; ``<image>`` slots hold the fused image+question prefix."""
        prompts, pixels = [], []
        for request in requests:
            pv, plans = self.processor.pixels(request.images)
            prompts.append(self.processor.prompt_ids(request.messages, plans))
            pixels.append(pv)
        bert = self.bert_tok(
            [question_text(r.messages) for r in requests],
            truncation=True,
            max_length=128,
            padding=True,
            return_tensors="pt",
        ).to(self.device)
        pixel_values = torch.cat(pixels).to(self.device)
        return self.embedded(
            prompts,
            lambda ids: self.model.embed(ids, pixel_values, bert["input_ids"], bert["attention_mask"]),
        )
