"""The eye-vlm (EyecareGPT) recipe's ``model:`` section."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from eyeops.models.common.specs import (
    ConnectorSpec,
    LanguageModelSpec,
    LoRASpec,
    ResolutionSpec,
    VisionTowerSpec,
)


class VLMModel(LanguageModelSpec):
    """LLaVA-style vision-language model (EyecareGPT): vision tower -> connector -> causal LM."""

    family: Literal["vlm"] = "vlm"
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
    max_seq_len: int = Field(1024, ge=32, le=131_072, description="Truncation length incl. image tokens.")
    eval_max_new_tokens: int = Field(96, ge=1, le=4096, description="Generation length in evaluation.")


SPEC = VLMModel
