"""eye-vlm's native backbone: an image-text-to-text model with its own vision tower (Qwen2.5-VL).

EyecareGPT-7B is Qwen2.5-VL-7B-Instruct: a ViT with window attention reads each image at its own
resolution (``image_grid_thw`` patches, no square views, no AnyRes tiles), a merger folds 2x2
patches into one LLM token, and the LLM decodes with multimodal RoPE. Nothing of that is rebuilt
here: the model loads through ``AutoModelForImageTextToText`` (``qwen2_5_vl`` is not a causal-LM
architecture), its image processor makes ``pixel_values`` + ``image_grid_thw``, and answers come
from the model's own ``generate``. This module adds what the platform needs around it: ``<image>``
placeholders expanded to the model's vision tokens with answer-only labels, LoRA on the language
model's Linear layers only (the vision blocks share names such as ``gate_proj``), parameter groups
(``connector`` = the merger, ``vision_last_blocks``, ``vision``, ``lora``, ``llm``, ``all``) and the
predictor.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from PIL import Image
from torch import nn

from eyeops.data.schema import IMAGE_TOKEN
from eyeops.errors import ConfigError, InvalidRequest, NotFoundError
from eyeops.inference import Capability, ClassifyResult, GenerationRequest
from eyeops.models.common.generation import BatchedChat, left_pad
from eyeops.models.common.processing import VLMProcessor, border_crop, pad_text
from eyeops.models.vlm.spec import NATIVE_MODEL_TYPES, VLMModel
from eyeops.recipes import Recipe, load_saved_recipe

_VISION_TOKENS = ("vision_start_token_id", "image_token_id", "vision_end_token_id")


def _source(name: str) -> str:
    path = Path(name).expanduser()
    return str(path) if path.is_dir() else name


def native_config(spec: VLMModel) -> Any:
    """The model's transformers config (``llm_config`` or the checkpoint's config.json; no weights)."""
    from transformers import AutoConfig

    try:
        if spec.llm_config is not None:
            cfg = dict(spec.llm_config)
            config = AutoConfig.for_model(cfg.pop("model_type", NATIVE_MODEL_TYPES[0]), **cfg)
        else:
            config = AutoConfig.from_pretrained(_source(spec.llm))
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"model.llm {spec.llm!r}: cannot read the native model's config: {exc}") from None
    if config.model_type not in NATIVE_MODEL_TYPES:
        raise ConfigError(
            f"model.backbone 'native' loads {', '.join(NATIVE_MODEL_TYPES)} models; model.llm "
            f"{spec.llm!r} is a {config.model_type!r} model"
        )
    return config


class NativeVLM(nn.Module):
    """The image-text-to-text model (optionally peft-wrapped) behind the family's batch contract."""

    def __init__(self, model: nn.Module, *, vision_last_blocks: int) -> None:
        super().__init__()
        self.model, self.vision_last_blocks = model, vision_last_blocks

    @property
    def base(self) -> nn.Module:
        """The transformers model under any peft wrapper."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    @property
    def visual(self) -> nn.Module:
        return self.base.model.visual

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        image_grid_thw: torch.Tensor,
        labels: torch.Tensor | None = None,
        answer_logits_only: bool = False,  # the family contract's flag; the model computes its loss
    ) -> Any:
        images = (
            {"pixel_values": pixel_values, "image_grid_thw": image_grid_thw} if len(image_grid_thw) else {}
        )
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, labels=labels, use_cache=False, **images
        )


def build_native(spec: VLMModel, *, lora: bool) -> NativeVLM:
    """The checkpoint (or a random model from ``llm_config``), LoRA on its language model if asked,
    with the recipe's memory features: attention kernel, QLoRA quantization (loaded weights only),
    gradient checkpointing (vision tower and LM alike), as every other family's language model."""
    from transformers import AutoModelForImageTextToText

    from eyeops.models.common.hub import (
        check_attn_implementation,
        check_quantization,
        from_pretrained_kwargs,
        torch_dtype,
    )
    from eyeops.models.common.language_model import with_memory_features

    config = native_config(spec)
    check_attn_implementation(spec.attn_implementation)
    if spec.llm_config is not None:
        if spec.quantization != "none":
            raise ConfigError(
                f"model.quantization={spec.quantization!r} applies to loaded weights, not to a "
                "model built from model.llm_config"
            )
        model = AutoModelForImageTextToText.from_config(
            config, dtype=torch_dtype(spec.dtype), attn_implementation=spec.attn_implementation
        )
    else:
        if spec.quantization != "none":
            check_quantization(spec.quantization)
        kwargs = from_pretrained_kwargs(
            dtype=spec.dtype,
            revision=None,
            quantization=spec.quantization,
            device=None,
            attn_implementation=spec.attn_implementation,
            trust_remote_code=spec.trust_remote_code,
        )
        try:
            model = AutoModelForImageTextToText.from_pretrained(_source(spec.llm), **kwargs)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"model.llm {spec.llm!r}: cannot load the native model: {exc}") from None
    model = with_memory_features(model, spec)
    if lora:
        model = add_language_lora(model, spec)
    return NativeVLM(model, vision_last_blocks=spec.vision_last_blocks)


def add_language_lora(model: nn.Module, spec: VLMModel) -> nn.Module:
    """peft LoRA on the language model's ``lora.target_modules`` only (the ViT has gate/up/down_proj too);
    a QLoRA-quantized model is k-bit prepared first (as ``language_model.add_lora`` does)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "hf_quantizer", None) is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)

    names = "|".join(re.escape(n) for n in spec.lora.target_modules)
    config = LoraConfig(
        r=spec.lora.r,
        lora_alpha=spec.lora.alpha,
        lora_dropout=spec.lora.dropout,
        target_modules=rf"(.*\.)?language_model\..*\.({names})",
        task_type="CAUSAL_LM",
    )
    try:
        with warnings.catch_warnings():  # peft 0.21 asks transformers 5 the deprecated question
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
            return get_peft_model(model, config)
    except ValueError as exc:
        linear = sorted(
            {
                n.rsplit(".", 1)[-1]
                for n, m in model.named_modules()
                if "language_model" in n and isinstance(m, nn.Linear)
            }
        )
        raise ConfigError(
            f"model.lora.target_modules {spec.lora.target_modules}: {exc} (its LM Linears: {linear})"
        ) from None


# --- parameter groups ----------------------------------------------------------------------------
def native_group_names(model: NativeVLM, group: str) -> set[str]:
    """Parameter names of a group: ``connector`` is the merger (vision patches -> LLM tokens)."""
    names = dict(model.named_parameters())
    if group == "lora":
        found = {n for n in names if "lora_" in n}
        if not found:
            raise ConfigError("stage trains 'lora' but the model has no LoRA adapter")
        return found
    if group == "all":
        return set(names)
    base = model.base
    modules = {
        "connector": [model.visual.merger],
        "vision_last_blocks": list(model.visual.blocks)[-model.vision_last_blocks :],
        "vision": [model.visual],
        "llm": [base.model.language_model, base.lm_head],
    }[group]
    ids = {id(p) for m in modules for p in m.parameters()}
    return {n for n, p in names.items() if id(p) in ids and "lora_" not in n}


# --- processing ----------------------------------------------------------------------------------
class NativeProcessor(VLMProcessor):
    """Chat turns as in :class:`VLMProcessor`; images through the model's own image processor.

    Each ``<image>`` becomes ``<|vision_start|>`` + one ``<|image_pad|>`` per merged patch group +
    ``<|vision_end|>``: the ids the model's config names, so the model finds its image slots.
    """

    def __init__(self, tokenizer: Any, image_processor: Any, config: Any, spec: VLMModel) -> None:
        super().__init__(
            tokenizer,
            image_size=0,
            mean=(),
            std=(),
            tokens_per_view=0,
            resolution=spec.resolution,
            crop_border=spec.crop_fundus_border,
            max_images=spec.max_images,
            max_seq_len=spec.max_seq_len,
            system_prompt=spec.system_prompt,
        )
        self.image_processor = image_processor
        self.start, self.pad, self.end = (int(getattr(config, k)) for k in _VISION_TOKENS)
        self.merge = int(image_processor.merge_size)
        self.patch_dim = 3 * int(image_processor.temporal_patch_size) * int(image_processor.patch_size) ** 2

    def pixels(
        self, images: Sequence[Image.Image], modality: Any = None
    ) -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
        if not images:
            return torch.zeros(0, self.patch_dim), []
        images = [border_crop(i, modality) if self.crop_border else i.convert("RGB") for i in images]
        out = self.image_processor(images=images, return_tensors="pt")
        return out["pixel_values"], [tuple(g) for g in out["image_grid_thw"].tolist()]

    def _ids(self, text: str, plans: Sequence[Any]) -> list[int]:
        ids: list[int] = []
        for k, piece in enumerate(text.split(IMAGE_TOKEN)):
            if piece:
                ids.extend(self.tokenizer(piece, add_special_tokens=False)["input_ids"])
            if k < len(plans):
                t, h, w = plans[k]
                ids.extend([self.start, *[self.pad] * (t * h * w // self.merge**2), self.end])
        return ids


def native_processor(spec: VLMModel, tokenizer: Any, image_processor: Any | None = None) -> NativeProcessor:
    """The processor of the recipe's model; the image processor from ``llm`` unless given."""
    if image_processor is None:
        image_processor = load_image_processor(spec.llm)
    # Qwen2-VL's processor reads its pixel budget from size {shortest_edge, longest_edge}.
    budget = {"shortest_edge": spec.resolution.min_pixels, "longest_edge": spec.resolution.max_pixels}
    if any(budget.values()):
        image_processor.size = {**dict(image_processor.size or {}), **{k: v for k, v in budget.items() if v}}
    return NativeProcessor(tokenizer, image_processor, native_config(spec), spec)


def load_image_processor(source: str) -> Any:
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(_source(source))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model.llm {source!r}: cannot load the model's image processor: {exc}") from None


def collate_native(batch: Sequence[Any], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded text, every image's patches stacked, ``image_grid_thw`` as ``[n_images, 3]``."""
    grids = [g for e in batch for g in e.plans]
    return {
        **pad_text(batch, pad_id),
        "pixel_values": torch.cat([e.pixel_values for e in batch]),
        "image_grid_thw": torch.tensor(grids, dtype=torch.long).view(-1, 3),
    }


# --- inference -----------------------------------------------------------------------------------
class NativeVLMPredictor(BatchedChat):
    """Chat and reports from a native backbone, decoded by the model's own ``generate``."""

    capabilities: frozenset[Capability] = frozenset({"chat", "report"})
    tasks: Mapping[str, Capability] = MappingProxyType({})
    default_task: str | None = None

    def __init__(
        self, recipe: Recipe, model: NativeVLM, tokenizer: Any, image_processor: Any, device: str = "cpu"
    ) -> None:
        if hasattr(model.model, "merge_and_unload"):  # fold LoRA into the weights: plain-speed decoding
            model.model = model.model.merge_and_unload()
        self.recipe, self.model = recipe, model.to(device).eval()
        super().__init__(tokenizer, device)
        self.processor = native_processor(recipe.model, tokenizer, image_processor)

    @classmethod
    def from_dir(cls, model_dir: Path, device: str = "cpu") -> NativeVLMPredictor:
        from safetensors.torch import load_file
        from transformers import AutoTokenizer

        from eyeops.models.vlm.modeling import RECIPE_FILE, WEIGHTS_FILE

        model_dir = Path(model_dir)
        if not (model_dir / WEIGHTS_FILE).is_file():
            raise NotFoundError(f"{model_dir}: not a VLM model directory (needs {WEIGHTS_FILE})")
        recipe = load_saved_recipe(model_dir / RECIPE_FILE)
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir / "tokenizer"))
        state = load_file(str(model_dir / WEIGHTS_FILE))
        model = build_native(recipe.model, lora=any("lora_" in k for k in state))
        result = model.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            raise ConfigError(
                f"{model_dir}: saved tensors do not fit the rebuilt model, e.g. {result.unexpected_keys[0]!r}"
            )
        return cls(recipe, model, tokenizer, load_image_processor(str(model_dir / "tokenizer")), device)

    @property
    def lm(self) -> Any:
        return self.model.model

    def classify(self, images: Sequence[Any]) -> list[ClassifyResult]:
        raise InvalidRequest("model family 'vlm' answers chat and report requests, not classify")

    def inputs(self, requests: Sequence[GenerationRequest]) -> dict[str, torch.Tensor]:
        prompts, pixels, grids = [], [], []
        for request in requests:
            pv, plans = self.processor.pixels(request.images)
            prompts.append(self.processor.prompt_ids(request.messages, plans))
            pixels.append(pv)
            grids.extend(plans)
        ids, mask = left_pad(prompts, int(self.tokenizer.pad_token_id))
        out = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
        if grids:
            dtype = next(self.model.visual.parameters()).dtype
            out["pixel_values"] = torch.cat(pixels).to(self.device, dtype)
            out["image_grid_thw"] = torch.tensor(grids, dtype=torch.long, device=self.device)
        return out
