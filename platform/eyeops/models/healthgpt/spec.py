"""The HealthGPT recipe's ``model:`` section."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from eyeops.models.common.specs import ConnectorSpec, HLoRASpec, LanguageModelSpec, VisionTowerSpec, VQSpec


class HealthGPTModel(LanguageModelSpec):
    """HealthGPT: an LVLM with H-LoRA task adapters and image generation through VQ tokens."""

    family: Literal["healthgpt"] = "healthgpt"
    vision: VisionTowerSpec = Field(default_factory=VisionTowerSpec)
    connector: ConnectorSpec = Field(
        default_factory=lambda: ConnectorSpec(type="mlp2x_gelu", grid=4),
        description="mlp2x_gelu; select_layer is replaced per task by feature_layers.",
    )
    feature_layers: dict[Literal["comprehension", "generation"], int] = Field(
        default_factory=lambda: {"comprehension": -2, "generation": 2},
        description="Vision layer per task: comprehension the penultimate, generation a shallow one.",
    )
    hlora: HLoRASpec = Field(default_factory=HLoRASpec)
    vq: VQSpec = Field(default_factory=VQSpec)
    crop_fundus_border: bool = True

    @model_validator(mode="after")
    def _tasks(self) -> HealthGPTModel:
        if set(self.feature_layers) != {"comprehension", "generation"}:
            raise ValueError("feature_layers needs exactly the tasks 'comprehension' and 'generation'")
        if self.connector.type != "mlp2x_gelu":
            raise ValueError("healthgpt uses connector type 'mlp2x_gelu' (one layer per task)")
        return self


SPEC = HealthGPTModel
