"""The recipe's ``model.ood`` section: pure pydantic (no torch), so spec modules may import it."""

from __future__ import annotations

from pydantic import Field

from eyeops.models.common.specs import Strict


class OODSpec(Strict):
    """The out-of-distribution screen fitted after training (:mod:`eyeops.models.common.calibration`)."""

    enabled: bool = Field(True, description="Fit the screen after training and apply it when serving.")
    neighbours: int = Field(
        5, ge=1, le=1000, description="k: the score is the distance to the k-th nearest training image."
    )
    quantile: float = Field(
        0.95,
        gt=0.5,
        le=1.0,
        description="Threshold = this quantile of held-out in-distribution scores (0.95: about 5% of "
        "unseen in-distribution images are flagged).",
    )
    max_reference: int = Field(
        5000, ge=1, le=1_000_000, description="Most training images kept as neighbours (a random subset)."
    )
