"""OphGLM inference: classification through the image encoder, chat conditioned on the fused prefix."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import torch
from PIL import Image

from eyeops.inference import ClassifyResult, GenerationRequest, GenerationResult
from eyeops.models.classifier.modeling import FundusTransform
from eyeops.models.ophglm.modeling import (
    OphGLM,
    _bert_tokenizer,
    _llm_tokenizer,
    _processor,
    _spec,
    question_text,
)
from eyeops.recipes import Recipe


class OphGLMPredictor:
    """InferenceModel: chat about one fundus image (or none) and multi-label classification."""

    capabilities = frozenset({"chat", "report", "classify"})

    def __init__(self, recipe: Recipe, model: OphGLM, device: str = "cpu") -> None:
        spec = _spec(recipe)
        if hasattr(model.lm, "merge_and_unload"):
            model.lm = model.lm.merge_and_unload()
        self.recipe, self.model, self.device = recipe, model.to(device).eval(), device
        self.model.lm.config.use_cache = True
        self.tokenizer, self.bert_tok = _llm_tokenizer(spec), _bert_tokenizer(spec)
        self.processor = _processor(spec, self.tokenizer)
        self.labels = list(spec.image_encoder.labels)
        self.transform = FundusTransform(
            spec.image_encoder.image_size, circular_crop=spec.image_encoder.circular_crop
        )
        self.threshold = recipe.evaluate.threshold
        self._lock = threading.Lock()

    def classify(self, images: Sequence[Image.Image]) -> list[ClassifyResult]:
        with self._lock, torch.no_grad():
            probs = torch.sigmoid(self.model.classifier(torch.stack([self.transform(i) for i in images])))
        out = []
        for row in probs.tolist():
            pairs = dict(zip(self.labels, row, strict=True))
            found = sorted((k for k, v in pairs.items() if v >= self.threshold), key=lambda k: -pairs[k])
            out.append(ClassifyResult(probabilities=pairs, findings=found))
        return out

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        return [self._one(r) for r in requests]

    def _one(self, request: GenerationRequest) -> GenerationResult:
        pv, plans = self.processor.pixels(request.images)
        ids = torch.tensor([self.processor.prompt_ids(request.messages, plans)])
        bert = self.bert_tok(
            question_text(request.messages), truncation=True, max_length=128, return_tensors="pt"
        )
        with self._lock, torch.no_grad():
            embeds = self.model.embed(ids, pv, bert["input_ids"], bert["attention_mask"])
            greedy = request.temperature == 0
            out = self.model.lm.generate(
                inputs_embeds=embeds,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=request.max_new_tokens,
                do_sample=not greedy,
                temperature=None if greedy else request.temperature,
                top_p=None if greedy else request.top_p,
                top_k=None,
                pad_token_id=int(self.tokenizer.pad_token_id),
            )
        tokens = out[0].tolist()
        eos = self.tokenizer.eos_token_id
        finish = "stop" if eos in tokens else "length"
        tokens = tokens[: tokens.index(eos)] if eos in tokens else tokens
        return GenerationResult(
            text=self.tokenizer.decode(tokens, skip_special_tokens=True).strip(),
            prompt_tokens=ids.shape[1],
            completion_tokens=len(tokens),
            finish_reason=finish,
        )

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        yield self._one(request).text
