"""The HealthGPT recipe's ``model:`` section."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from eyeops.models.common.specs import ConnectorSpec, HLoRASpec, LanguageModelSpec, VisionTowerSpec, VQSpec

TASK_NAMES = ("comprehension", "generation")


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
    hlora: dict[Literal["comprehension", "generation"], HLoRASpec] = Field(
        default_factory=lambda: {"comprehension": HLoRASpec(), "generation": HLoRASpec()},
        description="One H-LoRA spec per task (rank, alpha, experts, targets): the seed's HealthGPT-M3 "
        "uses comprehension r64/α128 and generation r256/α512, each with 4 experts.",
    )
    vq: VQSpec = Field(default_factory=VQSpec)
    crop_fundus_border: bool = Field(
        True,
        description="Crop the black camera border of fundus photographs (sample modality 'fundus'; "
        "without a modality only a near-square bright disc); other modalities keep their shape.",
    )

    @field_validator("hlora", mode="before")
    @classmethod
    def _per_task(cls, value: Any) -> Any:
        if isinstance(value, dict) and value and not set(value) & set(TASK_NAMES):
            raise ValueError(
                f"give one spec per task, {{comprehension: {{r: ..}}, generation: {{r: ..}}}}, not a single "
                f"spec ({sorted(value)}); saved models of the single form load through load_saved_recipe"
            )
        return value

    @model_validator(mode="after")
    def _tasks(self) -> HealthGPTModel:
        for name, value in (("feature_layers", self.feature_layers), ("hlora", self.hlora)):
            if set(value) != set(TASK_NAMES):
                raise ValueError(f"{name} needs exactly the tasks 'comprehension' and 'generation'")
        if self.connector.type != "mlp2x_gelu":
            raise ValueError("healthgpt uses connector type 'mlp2x_gelu' (one layer per task)")
        return self


SPEC = HealthGPTModel
