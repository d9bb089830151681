"""The eye-vlm (EyecareGPT) recipe's ``model:`` section."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from eyeops.models.common.calibration_spec import OODSpec
from eyeops.models.common.specs import (
    ConnectorSpec,
    LanguageModelSpec,
    LoRASpec,
    ResolutionSpec,
    VisionTowerSpec,
)

# Image-text-to-text architectures the 'native' backbone loads (AutoModelForImageTextToText) and
# trains: their processors give pixel_values + image_grid_thw (native dynamic resolution).
NATIVE_MODEL_TYPES = ("qwen2_5_vl", "qwen2_vl")


def declared_model_type(llm: str, llm_config: dict[str, Any] | None) -> str | None:
    """The LM's ``model_type`` where it is known without a download: ``llm_config``, a local
    directory's ``config.json`` or the Hugging Face cache; None for a hub id not cached here."""
    if llm_config is not None:
        return str(llm_config.get("model_type", "llama"))
    path = Path(llm).expanduser()
    config = path / "config.json" if path.is_dir() else None
    if config is None and "/" in llm and not llm.startswith(("packaged:", "/", ".")):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(llm, "config.json")
        config = Path(cached) if isinstance(cached, str) else None
    if config is None or not config.is_file():
        return None
    try:
        return str(json.loads(config.read_text()).get("model_type") or "") or None
    except (OSError, ValueError):
        return None


class VLMModel(LanguageModelSpec):
    """A vision-language model (EyecareGPT): LLaVA-style (tower -> connector -> causal LM) or an
    image-text-to-text model with its own vision tower (Qwen2.5-VL, ``backbone: native``)."""

    family: Literal["vlm"] = "vlm"
    backbone: Literal["llava", "native"] = Field(
        "llava",
        description="llava: model.vision + model.connector + the causal LM 'llm' (EyecareGPT-3.8B). "
        f"native: 'llm' is an image-text-to-text model ({', '.join(NATIVE_MODEL_TYPES)}) with its own "
        "vision tower, merger and dynamic resolution (EyecareGPT-7B = Qwen2.5-VL-7B-Instruct).",
    )
    vision: VisionTowerSpec = Field(default_factory=VisionTowerSpec)
    connector: ConnectorSpec = Field(
        default_factory=lambda: ConnectorSpec(low_layers=[3, 4], high_layers=[5, 6])
    )
    resolution: ResolutionSpec = Field(default_factory=ResolutionSpec)
    lora: LoRASpec = Field(default_factory=LoRASpec)
    vision_last_blocks: int = Field(1, ge=1, description="Blocks the 'vision_last_blocks' group trains.")
    crop_fundus_border: bool = Field(
        True,
        description="Crop the black camera border of fundus photographs (sample modality 'fundus'; "
        "without a modality only a near-square bright disc); other modalities keep their shape.",
    )
    max_images: int = Field(8, ge=1, le=64, description="Most images per sample (series, slices).")
    ood: OODSpec = Field(
        default_factory=OODSpec,
        description="Out-of-distribution screen on the vision tower's pooled features (backbone llava).",
    )
    max_seq_len: int = Field(1024, ge=32, le=131_072, description="Truncation length incl. image tokens.")
    eval_max_new_tokens: int = Field(96, ge=1, le=4096, description="Generation length in evaluation.")

    @model_validator(mode="after")
    def _backbone(self) -> VLMModel:
        model_type = declared_model_type(self.llm, self.llm_config)
        if self.backbone == "llava":
            if model_type in NATIVE_MODEL_TYPES:
                raise ValueError(
                    f"model.llm {self.llm!r} is a {model_type!r} image-text-to-text model with its own "
                    "vision tower: set model.backbone: native"
                )
            if self.resolution.min_pixels is not None or self.resolution.max_pixels is not None:
                raise ValueError("resolution.min_pixels/max_pixels apply to model.backbone 'native' only")
            return self
        defaults = type(self).model_construct()  # a dumped and re-read recipe holds the defaults
        given = [k for k in ("vision", "connector") if getattr(self, k) != getattr(defaults, k)]
        if given:
            raise ValueError(
                f"model.{given[0]} does not apply to backbone 'native': the model brings its own vision "
                "tower and merger (tune resolution.min_pixels/max_pixels instead)"
            )
        if self.resolution.mode == "anyres":
            raise ValueError(
                "resolution.mode 'anyres' does not apply to backbone 'native' (native resolution)"
            )
        if model_type is not None and model_type not in NATIVE_MODEL_TYPES:
            raise ValueError(
                f"model.backbone 'native' loads {', '.join(NATIVE_MODEL_TYPES)} models; model.llm "
                f"{self.llm!r} is a {model_type!r} model (use backbone: llava with a vision tower)"
            )
        return self


SPEC = VLMModel
