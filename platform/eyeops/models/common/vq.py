"""VQ image tokenizer for HealthGPT's generation task: a small VQ-VAE (encoder, codebook, decoder).

An image becomes a ``grid x grid`` map of codebook indices (``grid = image_size / 2^downsample``);
the LLM predicts those indices as ``<idx_i>`` tokens and :meth:`VQModel.decode_indices` turns
them back into pixels. The codebook learns by exponential moving averages (VQ-VAE-2 / Sonnet
style) or by the codebook loss, with the commitment loss and a straight-through gradient either
way; unused codes are restarted from encoder outputs so a short CPU run still uses the codebook.

Offline default: trained here for ``vq.train_steps`` on the synthetic fundus generator's images
(:func:`build_vq`, cached by spec), its reconstruction PSNR reported. For real use point
``vq.checkpoint`` at a local state dict: the top-level names follow taming-transformers'
``VQModel`` (``encoder``, ``quant_conv``, ``quantize.embedding``, ``post_quant_conv``,
``decoder``; a Lightning ``state_dict`` wrapper and the GAN ``loss.*`` keys are accepted), so a
checkpoint trained with this architecture in taming's layout loads directly; taming's own
VQGAN encoder (ResNet + attention blocks) is a different architecture and is refused naming the
keys that do not fit.
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
from torch import nn

from eyeops.errors import ConfigError, NotFoundError

if TYPE_CHECKING:
    from eyeops.models.common.specs import VQSpec

log = logging.getLogger(__name__)
_EMA_DECAY = 0.99
_EPS = 1e-5


class _ResBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(ch, ch, 3, padding=1), nn.ReLU(), nn.Conv2d(ch, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _encoder(hidden: int, downsample: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(3, hidden, 3, padding=1)]
    for _ in range(downsample):
        layers += [nn.Conv2d(hidden, hidden, 4, stride=2, padding=1), nn.ReLU()]
    layers += [_ResBlock(hidden), _ResBlock(hidden), nn.ReLU()]
    return nn.Sequential(*layers)


def _decoder(hidden: int, downsample: int) -> nn.Sequential:
    layers: list[nn.Module] = [_ResBlock(hidden), _ResBlock(hidden)]
    for _ in range(downsample):
        layers += [nn.ReLU(), nn.ConvTranspose2d(hidden, hidden, 4, stride=2, padding=1)]
    layers += [nn.ReLU(), nn.Conv2d(hidden, 3, 3, padding=1)]
    return nn.Sequential(*layers)


class VectorQuantizer(nn.Module):
    """Nearest-code quantisation with straight-through gradients; EMA or loss-trained codebook."""

    def __init__(self, num_codes: int, dim: int, *, beta: float, ema: bool) -> None:
        super().__init__()
        self.num_codes, self.dim, self.beta, self.ema = num_codes, dim, beta, ema
        self.embedding = nn.Embedding(num_codes, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / num_codes, 1.0 / num_codes)
        self.register_buffer("cluster_size", torch.ones(num_codes))
        self.register_buffer("embed_avg", self.embedding.weight.detach().clone())
        self.register_buffer("initialised", torch.tensor(False))
        if ema:
            self.embedding.weight.requires_grad_(False)  # moved by averages, not by the optimiser

    def codes(self, flat: torch.Tensor) -> torch.Tensor:
        weight = self.embedding.weight
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ weight.T + weight.pow(2).sum(1)[None]
        return dist.argmin(1)

    @torch.no_grad()
    def _init_from(self, flat: torch.Tensor) -> None:
        # Codes start on encoder outputs: a random uniform codebook far from the data wastes most codes.
        picks = flat[torch.randint(0, flat.shape[0], (self.num_codes,), device=flat.device)]
        self.embedding.weight.copy_(picks)
        self.embed_avg.copy_(picks)
        self.cluster_size.fill_(1.0)
        self.initialised.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, idx: torch.Tensor) -> None:
        onehot = F.one_hot(idx, self.num_codes).type(flat.dtype)
        self.cluster_size.mul_(_EMA_DECAY).add_(onehot.sum(0), alpha=1 - _EMA_DECAY)
        self.embed_avg.mul_(_EMA_DECAY).add_(onehot.T @ flat, alpha=1 - _EMA_DECAY)
        n = self.cluster_size.sum()
        size = (self.cluster_size + _EPS) / (n + self.num_codes * _EPS) * n
        self.embedding.weight.copy_(self.embed_avg / size[:, None])

    @torch.no_grad()
    def _restart_dead(self, flat: torch.Tensor) -> None:
        dead = self.cluster_size < 1e-2
        if dead.any():
            picks = flat[torch.randint(0, flat.shape[0], (int(dead.sum()),), device=flat.device)]
            self.embedding.weight[dead] = picks
            self.embed_avg[dead] = picks
            self.cluster_size[dead] = 1.0

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``z [B, D, H, W]`` -> (quantised z, commitment(+codebook) loss, indices ``[B, H, W]``)."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        if self.training and not bool(self.initialised):
            self._init_from(flat.detach())
        idx = self.codes(flat.detach())
        if self.training:
            if self.ema:
                self._ema_update(flat.detach(), idx)
            else:
                self._count(idx)
            self._restart_dead(flat.detach())
        zq = self.embedding(idx).view(b, h, w, d).permute(0, 3, 1, 2)
        loss = self.beta * F.mse_loss(z, zq.detach())
        if not self.ema:
            loss = loss + F.mse_loss(zq, z.detach())
        zq = z + (zq - z).detach()  # straight-through: the decoder's gradient reaches the encoder
        return zq, loss, idx.view(b, h, w)

    @torch.no_grad()
    def _count(self, idx: torch.Tensor) -> None:
        # Usage statistics for dead-code restarts when the codebook is trained by its loss.
        counts = torch.bincount(idx, minlength=self.num_codes).type(self.cluster_size.dtype)
        self.cluster_size.mul_(_EMA_DECAY).add_(counts, alpha=1 - _EMA_DECAY)


class VQModel(nn.Module):
    """Encoder -> quant_conv -> quantize -> post_quant_conv -> decoder (taming-transformers names)."""

    def __init__(self, spec: VQSpec) -> None:
        super().__init__()
        self.spec = spec
        self.encoder = _encoder(spec.hidden, spec.downsample)
        self.quant_conv = nn.Conv2d(spec.hidden, spec.embed_dim, 1)
        self.quantize = VectorQuantizer(spec.codebook_size, spec.embed_dim, beta=spec.beta, ema=spec.ema)
        self.post_quant_conv = nn.Conv2d(spec.embed_dim, spec.hidden, 1)
        self.decoder = _decoder(spec.hidden, spec.downsample)

    @property
    def grid(self) -> int:
        return self.spec.image_size // 2**self.spec.downsample

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    @property
    def num_codes(self) -> int:
        return self.spec.codebook_size

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.quantize(self.quant_conv(self.encoder(x)))

    def decode(self, zq: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(zq))

    def decode_indices(self, idx: torch.Tensor) -> torch.Tensor:
        """Indices ``[B, grid, grid]`` -> pixels in [-1, 1]."""
        if int(idx.min()) < 0 or int(idx.max()) >= self.num_codes:
            raise ConfigError(f"VQ indices must lie in 0..{self.num_codes - 1}")
        zq = self.quantize.embedding(idx).permute(0, 3, 1, 2)
        return self.decode(zq).clamp(-1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        zq, vq_loss, idx = self.encode(x)
        return self.decode(zq), vq_loss, idx


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
    device = model.quantize.embedding.weight.device  # the codes go where the codebook is (GPU serving)
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
    """Load a local state dict (ours, or taming-transformers' layout) into ``model``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise NotFoundError(f"model.vq.checkpoint {str(path)!r}: file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle / zip errors of many kinds: all mean "not a state dict"
            raise ConfigError(f"model.vq.checkpoint {str(path)!r}: not a torch state dict: {exc}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a Lightning checkpoint (taming-transformers saves these)
    state = {k: v for k, v in state.items() if not k.startswith("loss.")}  # taming's GAN discriminator
    own = model.state_dict()
    # taming has no EMA statistics: keep ours for those buffers.
    optional = {k for k in own if k.startswith("quantize.") and k != "quantize.embedding.weight"}
    missing = sorted(set(own) - set(state) - optional)
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        raise ConfigError(
            f"model.vq.checkpoint {str(path)!r} does not fit model.vq "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {wrong[:3]}); "
            "set vq.hidden / downsample / codebook_size / embed_dim to the checkpoint's architecture"
        )
    model.load_state_dict({**own, **state})
    model.quantize.initialised.fill_(True)


def _cache_key(spec: VQSpec, seed: int) -> str:
    payload = json.dumps({**spec.model_dump(mode="json"), "seed": seed, "v": 1}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def build_vq(spec: VQSpec, *, seed: int = 0, n_images: int = 96) -> tuple[VQModel, dict[str, float]]:
    """The recipe's tokenizer: from ``vq.checkpoint``, else trained on synthetic fundus images.

    Trained tokenizers are cached by (spec, seed) under the model cache, so the workers of a run
    and later runs reuse one instead of training again. Returns the model (frozen) and its report.
    """
    from safetensors.torch import load_file, save_file

    from eyeops.models.common.hub import model_cache_dir
    from eyeops.storage import file_lock

    model = VQModel(spec)
    if spec.checkpoint:
        load_vq_checkpoint(model, spec.checkpoint)
        report = {"source": "checkpoint"}
    else:
        folder = model_cache_dir() / "vq"
        key = _cache_key(spec, seed)
        weights, meta = folder / f"{key}.safetensors", folder / f"{key}.json"
        with file_lock(folder / f".{key}.lock"):
            if not weights.is_file():
                torch.manual_seed(seed)
                model = VQModel(spec)
                pixels = synthetic_pixels(n_images, spec.image_size, seed=seed)
                report = train_vq(model, pixels, steps=spec.train_steps, seed=seed)
                log.info("VQ tokenizer trained: PSNR %.1f dB", report["psnr_db"])
                tmp = weights.with_suffix(".tmp")
                save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
                meta.write_text(json.dumps(report))
                tmp.replace(weights)
        model.load_state_dict(load_file(str(weights)))
        report = json.loads(meta.read_text())
    model.eval().requires_grad_(False)
    return model, report
