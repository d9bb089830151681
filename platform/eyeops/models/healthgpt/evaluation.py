"""HealthGPT evaluation: comprehension as the VLM family scores it, plus generation PSNR."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from eyeops.families import EvalContext
from eyeops.inference import GenerationRequest
from eyeops.models.common.processing import open_image
from eyeops.models.common.vq import to_pixels
from eyeops.models.healthgpt.inference import HealthGPTPredictor
from eyeops.models.healthgpt.modeling import GENERATE_PROMPT


def generation_metrics(ctx: EvalContext, limit: int = 4) -> dict[str, float]:
    """Mean PSNR of generated images vs their inputs, and of the tokenizer's own round trip."""
    from eyeops.data.schema import Message
    from eyeops.models.common.vq import psnr

    paths = list(dict.fromkeys(p for images in ctx.samples["images"] for p in list(images)))[:limit]
    if not paths:
        return {}
    model: HealthGPTPredictor = ctx.model
    size = model.model.vq.spec.image_size
    generated, tokenizer_only = [], []
    for rel in paths:
        image = open_image(Path(ctx.data_dir) / rel, where=f"image {rel}")
        request = GenerationRequest(
            messages=[Message(role="user", content=GENERATE_PROMPT)], images=[image], task="generation"
        )
        png = model.generate([request])[0].images_png[0]
        reference = to_pixels([image], size)
        generated.append(psnr(reference, to_pixels([Image.open(io.BytesIO(png))], size)))
        tokenizer_only.append(psnr(reference, to_pixels([model.reconstruct(image)], size)))
    return {
        "generation/psnr_db": sum(generated) / len(generated),
        "generation/vq_psnr_db": sum(tokenizer_only) / len(tokenizer_only),
        "generation/n": float(len(paths)),
    }
