"""eye-vlm inference: reload a saved model; batched chat/report generation with images."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from PIL import Image

from eyeops import compute
from eyeops.devices import place, resolve_device
from eyeops.errors import ConfigError, InvalidRequest
from eyeops.inference import Capability, ClassifyResult, GenerationRequest, GenerationResult
from eyeops.models.common.calibration import OOD_ANSWER, Calibrator, Screening, chunked, worst
from eyeops.models.common.generation import BatchedChat
from eyeops.models.common.processing import VLMProcessor
from eyeops.models.common.stages import read_model_dir
from eyeops.models.vlm.modeling import RECIPE_FILE, WEIGHTS_FILE, EyeVLM, _processor, _spec, build_vlm
from eyeops.recipes import Recipe


def load_model_dir(model_dir: Path) -> tuple[Recipe, EyeVLM, Any]:
    """Rebuild a saved VLM: the recipe's references, then the saved groups on top."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    model_dir, recipe = read_model_dir(model_dir, "vlm", (WEIGHTS_FILE, RECIPE_FILE))
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


def global_views(processor: VLMProcessor, images: Sequence[Image.Image]) -> torch.Tensor:
    """``[N, 3, S, S]``: each image's global view (AnyRes tiles dropped), as the tower sees it."""
    return torch.cat([processor.pixels([image])[0][:1] for image in images])


@torch.inference_mode()
def pooled_features(
    model: EyeVLM, processor: VLMProcessor, images: Iterable[Image.Image], batch_size: int = 16
) -> torch.Tensor:
    """``[N, C]`` pooled tower features of the images' global views, computed in batches (CPU out)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for chunk in chunked(images, batch_size):
            out.append(model.pooled_features(global_views(processor, chunk).to(device)).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


# --- inference -----------------------------------------------------------------------------------
class VLMPredictor(BatchedChat):
    """:class:`eyeops.inference.InferenceModel` for chat and report generation with images."""

    capabilities: frozenset[Capability] = frozenset({"chat", "report"})
    tasks: Mapping[str, Capability] = MappingProxyType({})
    default_task: str | None = None

    def __init__(
        self,
        recipe: Recipe,
        model: EyeVLM,
        tokenizer: Any,
        device: str | torch.device = "cpu",
        calibrator: Calibrator | None = None,
    ) -> None:
        if hasattr(model.lm, "merge_and_unload"):  # fold LoRA into the weights: plain-speed decoding
            model.lm = model.lm.merge_and_unload()
        self.recipe, self.model = recipe, place(model, resolve_device(device)).eval()
        super().__init__(tokenizer, device)
        self.processor = _processor(
            _spec(recipe), tokenizer, model.tower.mean, model.tower.std, model.tokens_per_view
        )
        self.calibrator = calibrator

    @classmethod
    def from_dir(cls, model_dir: Path, device: str | torch.device = "cpu") -> VLMPredictor:
        recipe, model, tokenizer = load_model_dir(model_dir)
        return cls(recipe, model, tokenizer, device, Calibrator.load(model_dir))

    # --- out-of-distribution screen --------------------------------------------------------------
    def screen(self, images: Sequence[Image.Image]) -> Screening | None:
        """One verdict on a request's images (the strangest decides); None without a screen or image."""
        if self.calibrator is None or not self.calibrator.screens or not images:
            return None
        with self._lock, torch.inference_mode():
            views = global_views(self.processor, images).to(self.device)
            return worst(self.calibrator.screen(self.model.pooled_features(views)))

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Screened first: a request with an out-of-distribution image is answered with the verdict,
        not decoded; the others are decoded together and carry their verdict."""
        verdicts = [self.screen(r.images) for r in requests]
        decode = [i for i, v in enumerate(verdicts) if v is None or not v.out_of_distribution]
        answers = iter(super().generate([requests[i] for i in decode]) if decode else [])
        results = []
        for verdict in verdicts:
            if verdict is not None and verdict.out_of_distribution:
                results.append(GenerationResult(text=OOD_ANSWER, **verdict.answer_fields()))
            else:
                answer = next(answers)
                results.append(answer.model_copy(update=verdict.answer_fields()) if verdict else answer)
        return results

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        verdict = compute.call(self.screen, request.images)  # torch stays on the compute thread
        if verdict is not None and verdict.out_of_distribution:
            return iter([OOD_ANSWER])
        return super().stream(request)

    @property
    def lm(self) -> Any:
        return self.model.lm

    def classify(self, images: Sequence[Any]) -> list[ClassifyResult]:
        raise InvalidRequest("model family 'vlm' answers chat and report requests, not classify")

    def inputs(self, requests: Sequence[GenerationRequest]) -> dict[str, torch.Tensor]:
        """Left-padded prompt embeddings, each ``<image>`` run filled with its view features."""
        prompts, pixels, plans = [], [], []
        for request in requests:
            pv, pl = self.processor.pixels(request.images)
            prompts.append(self.processor.prompt_ids(request.messages, pl))
            pixels.append(pv)
            plans.extend(pl)
        # the plans stay on the CPU: the model reads them as Python ints (no device sync)
        image_plans = torch.tensor([[p.rows, p.cols] for p in plans], dtype=torch.long).view(-1, 2)
        pixel_values = torch.cat(pixels).to(self.device)
        return self.embedded(prompts, lambda ids: self.model.embed(ids, pixel_values, image_plans))
