"""A structured finding: what the data engine turns into questions, answers and reports."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from eyeops.data.schema import ODIR_LABELS


class Finding(BaseModel):
    """One visible sign in an image, tied to the ODIR label it supports."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str = Field(description="ODIR label code the sign supports (N D G C A H M O).")
    description: str = Field(description="What is seen, in report language.")
    location: str = Field("", description="Where it is seen (quadrant, macula, disc, diffuse).")

    def model_post_init(self, __context: object) -> None:
        if self.label not in ODIR_LABELS:
            raise ValueError(f"finding label {self.label!r} is not one of {', '.join(ODIR_LABELS)}")
