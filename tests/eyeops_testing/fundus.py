"""Fundus JPEGs written like a camera would (optionally with identifying EXIF), for data tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from eyeops.data.schema import Eye
from eyeops.data.synthetic import render_fundus

RAW_PATIENT = "PT-ALPHA-77"  # contains non-hex letters: cannot appear by chance inside a hash


def write_fundus(
    path: Path,
    codes=(),
    *,
    seed: int = 0,
    size: int = 96,
    exif_name: str | None = None,
    orientation: int | None = None,
) -> Path:
    """A synthetic fundus saved as JPEG, optionally carrying identifying EXIF like a camera would."""
    pixels, _ = render_fundus(list(codes), eye=Eye.OD, size=size, rng=np.random.default_rng(seed))
    image = Image.fromarray(pixels)
    exif = Image.Exif()
    if exif_name:
        exif[0x013B] = exif_name  # Artist
        exif[0x010E] = f"patient {exif_name}"  # ImageDescription
    if orientation:
        exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="JPEG", quality=92, exif=exif.tobytes())
    return path
