"""HealthGPT's image tokenizer in use: pixels <-> VQ codes, training, loading, the per-dataset cache.

An image becomes a ``grid x grid`` map of codebook indices (``grid = image_size / 2^(len(ch_mult)-1)``);
the LLM predicts those indices as ``<idx_i>`` tokens and :meth:`VQModel.decode_indices` turns them
back into pixels. The architecture is taming-transformers' VQGAN (:mod:`eyeops.models.common.vqgan`).

Where the weights come from (:class:`~eyeops.models.common.specs.VQSpec`):

- ``vq.checkpoint``: a state dict in taming's published layout (``encoder.*``, ``decoder.*``,
  ``quant_conv.*``, ``post_quant_conv.*``, ``quantize.embedding.weight`` or, for ``GumbelVQ``,
  ``quantize.proj.*`` + ``quantize.embed.weight``), loaded key for key (:func:`load_vq_checkpoint`);
- otherwise trained here for ``vq.train_steps`` on the training dataset's own images and targets
  (:func:`dataset_vq`), cached by (spec, seed) together with the fingerprint of the data it saw;
  built without a dataset (planning, a model saved untrained) it trains on synthetic fundus images.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from eyeops.errors import ConfigError, NotFoundError
from eyeops.models.common.stages import read_weights
from eyeops.models.common.vqgan import VectorQuantizer, VQModel

if TYPE_CHECKING:
    from eyeops.models.common.specs import VQSpec

__all__ = [
    "VQModel",
    "build_vq",
    "current_vq",
    "dataset_vq",
    "evaluate_vq",
    "image_tokens",
    "load_vq_checkpoint",
    "png_bytes",
    "psnr",
    "to_images",
    "to_pixels",
    "tokens_to_png",
    "train_vq",
]
log = logging.getLogger(__name__)


# --- pixels ----------------------------------------------------------------------------------------
def to_pixels(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """PIL images -> ``[B, 3, size, size]`` in [-1, 1] (resized, RGB)."""
    arrays = [
        np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), np.float32)
        for im in images
    ]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0


def to_images(pixels: torch.Tensor) -> list[Image.Image]:
    arrays = ((pixels.detach().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a, "RGB") for a in arrays]


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def psnr(reference: torch.Tensor, reconstruction: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [-1, 1] (on the [0, 1] scale)."""
    mse = F.mse_loss((reconstruction.clamp(-1, 1) + 1) / 2, (reference + 1) / 2).item()
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def image_tokens(model: VQModel, image: Image.Image) -> list[int]:
    """One image -> its ``grid*grid`` code indices, row-major."""
    with torch.no_grad():
        _, _, idx = model.eval().encode(to_pixels([image], model.spec.image_size))
    return idx.flatten().tolist()


def tokens_to_png(model: VQModel, tokens: Sequence[int]) -> bytes:
    """Code indices (row-major, exactly ``grid*grid``) -> a PNG image."""
    if len(tokens) != model.num_tokens:
        raise ConfigError(f"an image needs {model.num_tokens} VQ tokens, got {len(tokens)}")
    device = model.codebook.device  # the codes go where the codebook is (GPU serving)
    idx = torch.tensor(list(tokens), dtype=torch.long, device=device).view(1, model.grid, model.grid)
    with torch.no_grad():
        return png_bytes(to_images(model.eval().decode_indices(idx))[0])


# --- training and loading ----------------------------------------------------------------------------
def synthetic_pixels(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """``n`` synthetic fundus photographs (the data package's generator) as VQ input pixels."""
    from eyeops.data.synthetic import generate

    images = [Image.fromarray(s.image) for s in generate(n, seed=seed, size=max(64, size))]
    return to_pixels(images, size)


def train_vq(
    model: VQModel, pixels: torch.Tensor, *, steps: int, batch_size: int = 16, lr: float = 2e-3, seed: int = 0
) -> dict[str, float]:
    """Train on ``pixels`` (MSE reconstruction + VQ loss); returns loss and PSNR on those pixels."""
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        batch = pixels[torch.randint(0, pixels.shape[0], (batch_size,), generator=gen)]
        recon, vq_loss, _ = model(batch)
        loss = F.mse_loss(recon, batch) + vq_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {"loss": float(loss.detach()), **evaluate_vq(model, pixels)}


def evaluate_vq(model: VQModel, pixels: torch.Tensor) -> dict[str, float]:
    """Reconstruction PSNR and the share of codes used on ``pixels``."""
    model.eval()
    with torch.no_grad():
        recon, _, idx = model(pixels)
    return {
        "psnr_db": psnr(pixels, recon.clamp(-1, 1)),
        "codebook_usage": idx.unique().numel() / model.num_codes,
    }


def load_vq_checkpoint(model: VQModel, path: str | Path) -> None:
    """Load a taming-layout state dict into ``model`` key for key.

    ``loss.*`` (taming's GAN discriminator and perceptual loss) is ignored; our EMA statistics are
    not in taming's checkpoints (the running average starts at the loaded codes). Any architecture
    key that is missing, unexpected or of another shape is a :class:`ConfigError` naming the keys.
    """
    path = Path(path).expanduser()
    state = {k: v for k, v in read_weights(path, "model.vq.checkpoint").items() if not k.startswith("loss.")}
    own = model.state_dict()
    optional = {"quantize.cluster_size", "quantize.embed_avg", "quantize.initialised"}
    missing = sorted(set(own) - set(state) - optional)
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(
        f"{k} {tuple(state[k].shape)} (model.vq: {tuple(own[k].shape)})"
        for k in set(own) & set(state)
        if tuple(own[k].shape) != tuple(state[k].shape)
    )
    if missing or unexpected or wrong:
        raise ConfigError(
            f"model.vq.checkpoint {str(path)!r} does not fit model.vq: "
            f"{len(missing)} missing {missing[:4]}, {len(unexpected)} unexpected {unexpected[:4]}, "
            f"{len(wrong)} of another shape {wrong[:2]}; set model.vq (ch, ch_mult, num_res_blocks, "
            "attn_resolutions, z_channels, embed_dim, codebook_size, quantizer) to the checkpoint's config"
        )
    model.load_state_dict({**own, **state})
    if isinstance(model.quantize, VectorQuantizer):
        model.quantize.embed_avg.copy_(model.quantize.embedding.weight)
        model.quantize.initialised.fill_(True)


# --- the tokenizer a recipe uses ---------------------------------------------------------------------
def _cache_paths(spec: VQSpec, seed: int) -> tuple[Path, Path, Path]:
    from eyeops.models.common.hub import model_cache_dir

    payload = json.dumps({**spec.model_dump(mode="json"), "seed": seed, "v": 2}, sort_keys=True)
    key = hashlib.sha256(payload.encode()).hexdigest()[:16]
    folder = model_cache_dir() / "vq"
    return folder / f"{key}.safetensors", folder / f"{key}.json", folder / f".{key}.lock"


def _from_checkpoint(spec: VQSpec) -> tuple[VQModel, dict[str, Any]]:
    model = VQModel(spec)
    load_vq_checkpoint(model, spec.checkpoint or "")
    return model.eval().requires_grad_(False), {"source": "checkpoint", "checkpoint": spec.checkpoint}


def _cached(spec: VQSpec, seed: int, data: str | None, pixels: Any) -> tuple[VQModel, dict[str, Any]]:
    """The (spec, seed) tokenizer, trained on ``pixels()`` unless the cached one saw ``data``."""
    from safetensors.torch import load_file, save_file

    from eyeops.storage import file_lock

    weights, meta, lock = _cache_paths(spec, seed)
    weights.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(lock):
        report = json.loads(meta.read_text()) if weights.is_file() and meta.is_file() else None
        if report is None or (data is not None and report.get("data") != data):
            torch.manual_seed(seed)
            model = VQModel(spec)
            train_pixels = pixels()
            report = train_vq(model, train_pixels, steps=spec.train_steps, seed=seed)
            report |= {"source": "trained", "data": data or "synthetic", "images": int(train_pixels.shape[0])}
            log.info("VQ tokenizer trained on %s: PSNR %.1f dB", report["data"], report["psnr_db"])
            tmp = weights.with_suffix(".tmp")
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
            meta.write_text(json.dumps(report))
            tmp.replace(weights)
        model = VQModel(spec)
        model.load_state_dict(load_file(str(weights)))
    return model.eval().requires_grad_(False), report


def current_vq(spec: VQSpec, *, seed: int = 0) -> VQModel:
    """What a model is built with before its data is read: the checkpoint, the cached tokenizer for
    (spec, seed), or an untrained one of the right shape (training replaces it, see :func:`dataset_vq`)."""
    if spec.checkpoint:
        return _from_checkpoint(spec)[0]
    from safetensors.torch import load_file

    weights, _, _ = _cache_paths(spec, seed)
    model = VQModel(spec)
    if weights.is_file():
        model.load_state_dict(load_file(str(weights)))
    return model.eval().requires_grad_(False)


def build_vq(spec: VQSpec, *, seed: int = 0, n_images: int = 96) -> tuple[VQModel, dict[str, Any]]:
    """The recipe's tokenizer without a dataset at hand: the checkpoint, else the cached one.

    When nothing is cached (planning, a model saved before any dataset was read) it trains on
    ``n_images`` synthetic fundus photographs. Returns the model (frozen) and its report.
    """
    if spec.checkpoint:
        return _from_checkpoint(spec)
    return _cached(spec, seed, None, lambda: synthetic_pixels(n_images, spec.image_size, seed=seed))


def dataset_vq(
    spec: VQSpec, data_dir: str | Path, *, seed: int = 0, max_images: int = 256
) -> tuple[VQModel, dict[str, Any]]:
    """The tokenizer trained on a prepared dataset's own images (inputs and generation targets).

    Uses the training split's images (all splits when it has none), at most ``max_images``
    distinct ones; retrains when the cached tokenizer for (spec, seed) saw other data.
    """
    if spec.checkpoint:
        return _from_checkpoint(spec)
    from eyeops.data.store import load_samples, read_manifest

    data_dir = Path(data_dir)
    fingerprint = read_manifest(data_dir).fingerprint

    def pixels() -> torch.Tensor:
        samples = load_samples(data_dir)
        train = [s for s in samples if str(s.split) == "train"] or samples
        paths = [p for s in train for p in (*s.images, *((s.target_image,) if s.target_image else ()))]
        paths = list(dict.fromkeys(paths))[:max_images]
        if not paths:
            raise NotFoundError(f"{data_dir}: no images to train the VQ tokenizer on")
        images = []
        for rel in paths:
            with Image.open(data_dir / rel) as image:
                images.append(image.convert("RGB"))
        return to_pixels(images, spec.image_size)

    return _cached(spec, seed, f"dataset:{fingerprint[:16]}", pixels)
