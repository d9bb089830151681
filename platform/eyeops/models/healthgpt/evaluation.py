"""HealthGPT generation scoring: PSNR, SSIM and MSE per generation task on the evaluation split.

Every ``generate_image`` sample of the split is generated (batched, the task's prompt and input as
served) and its decoded PNG compared with the target image at the tokenizer's resolution; scores
are averaged per task (``generation/<task>/psnr_db|ssim|mse|n``) and over all tasks
(``generation/psnr_db`` …). ``generation/<task>/vq_psnr_db`` is the tokenizer's own round trip of
the targets: the ceiling a perfect answer reaches. A dataset without generate_image samples is
scored on reconstructing each distinct image. ``generation_grid.png`` shows input / target /
output rows for the first samples of each task (logged with the report as an MLflow artifact).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from statistics import fmean
from typing import Any

import torch
from PIL import Image

from eyeops.families import EvalContext
from eyeops.inference import GenerationRequest
from eyeops.models.common.processing import open_image
from eyeops.models.common.vq import to_images, to_pixels

GRID_ROWS = 2  # samples per task in the image grid


def _rows(ctx: EvalContext) -> list[dict[str, Any]]:
    """(task, prompt turns, input images, target) per scored sample of the split."""
    from eyeops.data.image_pairs import GENERATION_PROMPTS

    records = [
        {k: v.tolist() if hasattr(v, "tolist") else v for k, v in r.items()}
        for r in ctx.samples.to_dict("records")
    ]
    rows = []
    for r in records:
        if r.get("task") == "generate_image" and r.get("target_image"):
            meta = r.get("meta") or {}
            meta = json.loads(meta) if isinstance(meta, str) else meta  # a JSON column in samples.parquet
            task = meta.get("generation") or "generation"
            rows.append(
                {"task": task, "messages": r["messages"], "images": r["images"], "target": r["target_image"]}
            )
    if rows:
        return rows
    paths = dict.fromkeys(p for r in records for p in (r.get("images") or [])[:1])
    prompt = [{"role": "user", "content": GENERATION_PROMPTS["reconstruction"]}]
    return [{"task": "reconstruction", "messages": prompt, "images": [p], "target": p} for p in paths]


def _scores(reference: torch.Tensor, output: torch.Tensor) -> tuple[list[float], list[float], list[float]]:
    """Per-image PSNR (dB), SSIM and MSE of ``[N, 3, H, W]`` images in [-1, 1], on the [0, 1] scale."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    ref, out = (reference.clamp(-1, 1) + 1) / 2, (output.clamp(-1, 1) + 1) / 2
    psnr, ssim, mse = [], [], []
    for a, b in zip(ref, out, strict=True):
        psnr.append(float(peak_signal_noise_ratio(b[None], a[None], data_range=1.0)))
        ssim.append(float(structural_similarity_index_measure(b[None], a[None], data_range=1.0)))
        mse.append(float(torch.mean((a - b) ** 2)))
    return psnr, ssim, mse


def generation_metrics(ctx: EvalContext) -> tuple[dict[str, float], dict[str, list[dict]], dict[str, str]]:
    """Per-task and overall PSNR / SSIM / MSE, a per-task table, and the image-grid artifact."""
    from eyeops.data.schema import Message

    rows = _rows(ctx)
    if not rows:
        return {}, {}, {}
    model: Any = ctx.model
    size = model.model.vq.spec.image_size
    root = Path(ctx.data_dir)
    outputs, targets, inputs = [], [], []
    batch = max(1, min(ctx.batch_size, 8))
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        requests = []
        for r in chunk:
            images = [open_image(root / p, where=f"image {p}") for p in r["images"]]
            inputs.append(images[0] if images else None)
            targets.append(open_image(root / r["target"], where=f"image {r['target']}"))
            requests.append(
                GenerationRequest(
                    messages=[Message(**m) for m in r["messages"]], images=images, task=r["task"]
                )
            )
        for result in model.generate(requests):
            outputs.append(Image.open(io.BytesIO(result.images_png[0])).convert("RGB"))
    reference, generated = to_pixels(targets, size), to_pixels(outputs, size)
    with torch.no_grad():
        vq = model.model.vq.eval()
        roundtrip, _, _ = vq(reference.to(model.device))
    psnr, ssim, mse = _scores(reference, generated)
    vq_psnr, _, _ = _scores(reference, roundtrip.cpu())
    metrics: dict[str, float] = {}
    table = []
    for task in dict.fromkeys(r["task"] for r in rows):
        idx = [i for i, r in enumerate(rows) if r["task"] == task]
        scores = {
            "psnr_db": fmean([psnr[i] for i in idx]),
            "ssim": fmean([ssim[i] for i in idx]),
            "mse": fmean([mse[i] for i in idx]),
            "vq_psnr_db": fmean([vq_psnr[i] for i in idx]),
            "n": float(len(idx)),
        }
        metrics |= {f"generation/{task}/{k}": v for k, v in scores.items()}
        table.append({"task": task, **scores})
    metrics |= {
        "generation/psnr_db": fmean(psnr),
        "generation/ssim": fmean(ssim),
        "generation/mse": fmean(mse),
        "generation/vq_psnr_db": fmean(vq_psnr),
        "generation/n": float(len(rows)),
    }
    grid = _grid(rows, inputs, targets, outputs, size, Path(ctx.out_dir) / "generation_grid.png")
    return metrics, {"generation": table}, {"generation_grid": str(grid)}


def _grid(
    rows: Sequence[dict[str, Any]],
    inputs: Sequence[Image.Image | None],
    targets: Sequence[Image.Image],
    outputs: Sequence[Image.Image],
    size: int,
    path: Path,
) -> Path:
    """Input | target | output, ``GRID_ROWS`` samples per task (a blank input for text_to_image)."""
    picked: list[int] = []
    for task in dict.fromkeys(r["task"] for r in rows):
        picked += [i for i, r in enumerate(rows) if r["task"] == task][:GRID_ROWS]
    canvas = Image.new("RGB", (3 * size, len(picked) * size))
    blank = Image.new("RGB", (size, size), (32, 32, 32))
    for row, i in enumerate(picked):
        source = inputs[i] if inputs[i] is not None else blank
        cells = to_images(to_pixels([source, targets[i], outputs[i]], size))
        for col, cell in enumerate(cells):
            canvas.paste(cell, (col * size, row * size))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG")
    return path
