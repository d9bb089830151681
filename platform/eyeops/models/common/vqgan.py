"""The VQGAN image tokenizer (taming-transformers' first stage), written here from its published layout.

Encoder: ``conv_in``; per level ``num_res_blocks`` ResNet blocks (GroupNorm, SiLU, 3x3 convs, a 1x1
``nin_shortcut`` when the width changes), self-attention blocks at the resolutions listed in
``attn_resolutions``, a strided ``downsample`` conv between levels; a middle block
(ResNet, attention, ResNet); ``norm_out`` and ``conv_out`` to ``z_channels``. The decoder mirrors it
with ``num_res_blocks + 1`` blocks per level and nearest-neighbour ``upsample`` convs. Around the
quantiser sit the 1x1 ``quant_conv`` / ``post_quant_conv``. Two quantisers:

- ``vq`` (taming ``VQModel``): nearest code in ``quantize.embedding``; trained here with
  exponential moving averages (or the codebook loss) and dead-code restarts;
- ``gumbel`` (taming ``GumbelVQ``, the OpenImages f=8 8192-code model HealthGPT decodes with):
  ``quantize.proj`` scores every code, ``quantize.embed`` holds the code vectors; encoding takes the
  best-scoring code, training samples with the straight-through Gumbel-softmax plus a KL prior.

Module names follow taming's, so a taming checkpoint's ``state_dict`` loads key for key
(:func:`eyeops.models.common.vq.load_vq_checkpoint`). The sizes come from
:class:`~eyeops.models.common.specs.VQSpec` (its defaults are a CPU-sized model; the production
recipes give the published f=8 configuration).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from eyeops.errors import ConfigError

if TYPE_CHECKING:
    from eyeops.models.common.specs import VQSpec

_EMA_DECAY = 0.99
_EPS = 1e-5


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """Pre-activation residual block; a 1x1 ``nin_shortcut`` when the width changes."""

    def __init__(self, cin: int, cout: int, *, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(cin, groups), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout, groups), nn.Conv2d(cout, cout, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the ``H*W`` positions of a feature map (1x1 q, k, v, out)."""

    def __init__(self, channels: int, *, groups: int) -> None:
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q, self.k, self.v = (nn.Conv2d(channels, channels, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (t.reshape(b, c, h * w).transpose(1, 2) for t in (self.q(y), self.k(y), self.v(y)))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(c)) v
        return x + self.proj_out(out.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric pad: exact halving of even sides


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution of the encoder or decoder: ``blocks`` ResNet blocks ``cin -> cout``, each
    followed by self-attention when ``attn``; the caller adds the resampler."""

    def __init__(self, cin: int, cout: int, blocks: int, *, attn: bool, groups: int, dropout: float) -> None:
        super().__init__()
        self.block, self.attn = nn.ModuleList(), nn.ModuleList()
        for j in range(blocks):  # block, attn, block, ...: taming's order of construction
            self.block.append(ResnetBlock(cin if j == 0 else cout, cout, groups=groups, dropout=dropout))
            if attn:
                self.attn.append(AttnBlock(cout, groups=groups))

    def run(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


class Middle(nn.Module):
    def __init__(self, channels: int, *, groups: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups=groups, dropout=dropout)
        self.attn_1 = AttnBlock(channels, groups=groups)
        self.block_2 = ResnetBlock(channels, channels, groups=groups, dropout=dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    def __init__(self, spec: VQSpec) -> None:
        super().__init__()
        g, drop, ch = spec.norm_groups, spec.dropout, spec.ch
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        self.down = nn.ModuleList()
        width, res = ch, spec.image_size
        for i, mult in enumerate(spec.ch_mult):
            attn = res in spec.attn_resolutions
            level = Level(width, ch * mult, spec.num_res_blocks, attn=attn, groups=g, dropout=drop)
            width = ch * mult
            if i != len(spec.ch_mult) - 1:
                level.downsample = Downsample(width)
                res //= 2
            self.down.append(level)
        self.mid = Middle(width, groups=g, dropout=drop)
        self.norm_out = _norm(width, g)
        self.conv_out = nn.Conv2d(width, spec.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level.run(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    def __init__(self, spec: VQSpec) -> None:
        super().__init__()
        g, drop, ch, n = spec.norm_groups, spec.dropout, spec.ch, len(spec.ch_mult)
        width, res = ch * spec.ch_mult[-1], spec.image_size // 2 ** (n - 1)
        self.conv_in = nn.Conv2d(spec.z_channels, width, 3, padding=1)
        self.mid = Middle(width, groups=g, dropout=drop)
        levels: list[Level] = []
        for i in reversed(range(n)):
            attn = res in spec.attn_resolutions
            level = Level(
                width, ch * spec.ch_mult[i], spec.num_res_blocks + 1, attn=attn, groups=g, dropout=drop
            )
            width = ch * spec.ch_mult[i]
            if i != 0:
                level.upsample = Upsample(width)
                res *= 2
            levels.insert(0, level)  # indexed by resolution level, as the encoder's
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(width, g)
        self.conv_out = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level.run(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# --- quantisers ------------------------------------------------------------------------------------
class VectorQuantizer(nn.Module):
    """Nearest-code quantisation with straight-through gradients; EMA or loss-trained codebook."""

    def __init__(self, num_codes: int, dim: int, *, beta: float, ema: bool) -> None:
        super().__init__()
        self.num_codes, self.dim, self.beta, self.ema = num_codes, dim, beta, ema
        self.embedding = nn.Embedding(num_codes, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / num_codes, 1.0 / num_codes)
        # Training statistics (not in a taming checkpoint, which loads without them).
        self.register_buffer("cluster_size", torch.ones(num_codes))
        self.register_buffer("embed_avg", self.embedding.weight.detach().clone())
        self.register_buffer("initialised", torch.tensor(False))
        if ema:
            self.embedding.weight.requires_grad_(False)  # moved by averages, not by the optimiser

    def codes(self, flat: torch.Tensor) -> torch.Tensor:
        weight = self.embedding.weight
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ weight.T + weight.pow(2).sum(1)[None]
        return dist.argmin(1)

    def lookup(self, idx: torch.Tensor) -> torch.Tensor:
        """Indices ``[B, H, W]`` -> code vectors ``[B, D, H, W]``."""
        return self.embedding(idx).permute(0, 3, 1, 2)

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
    def _count(self, idx: torch.Tensor) -> None:
        # Usage statistics for dead-code restarts when the codebook is trained by its loss.
        counts = torch.bincount(idx, minlength=self.num_codes).type(self.cluster_size.dtype)
        self.cluster_size.mul_(_EMA_DECAY).add_(counts, alpha=1 - _EMA_DECAY)

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
        zq = self.lookup(idx.view(b, h, w))
        loss = self.beta * F.mse_loss(z, zq.detach())
        if not self.ema:
            loss = loss + F.mse_loss(zq, z.detach())
        zq = z + (zq - z).detach()  # straight-through: the decoder's gradient reaches the encoder
        return zq, loss, idx.view(b, h, w)


class GumbelQuantizer(nn.Module):
    """taming's ``GumbelQuantize``: per-position code scores (``proj``), code vectors (``embed``)."""

    def __init__(self, num_codes: int, dim: int, in_channels: int, *, kl_weight: float = 5e-4) -> None:
        super().__init__()
        self.num_codes, self.dim, self.kl_weight, self.temperature = num_codes, dim, kl_weight, 1.0
        self.proj = nn.Conv2d(in_channels, num_codes, 1)
        self.embed = nn.Embedding(num_codes, dim)

    def lookup(self, idx: torch.Tensor) -> torch.Tensor:
        return self.embed(idx).permute(0, 3, 1, 2)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.proj(z)
        idx = logits.argmax(1)  # encoding is deterministic: the best-scoring code
        if not self.training:
            return self.lookup(idx), logits.new_zeros(()), idx
        one_hot = F.gumbel_softmax(logits, tau=self.temperature, dim=1, hard=True)
        zq = torch.einsum("bnhw,nd->bdhw", one_hot, self.embed.weight)
        probs = F.softmax(logits, dim=1)
        kl = (probs * torch.log(probs * self.num_codes + 1e-10)).sum(1).mean()  # KL to a uniform prior
        return zq, self.kl_weight * kl, idx


# --- the model ---------------------------------------------------------------------------------------
class VQModel(nn.Module):
    """Encoder -> quant_conv -> quantize -> post_quant_conv -> decoder (taming-transformers names)."""

    def __init__(self, spec: VQSpec) -> None:
        super().__init__()
        self.spec = spec
        self.encoder = Encoder(spec)
        self.quant_conv = nn.Conv2d(spec.z_channels, spec.embed_dim, 1)
        self.quantize: VectorQuantizer | GumbelQuantizer
        if spec.quantizer == "gumbel":
            self.quantize = GumbelQuantizer(spec.codebook_size, spec.embed_dim, spec.z_channels)
        else:
            self.quantize = VectorQuantizer(spec.codebook_size, spec.embed_dim, beta=spec.beta, ema=spec.ema)
        self.post_quant_conv = nn.Conv2d(spec.embed_dim, spec.z_channels, 1)
        self.decoder = Decoder(spec)

    @property
    def grid(self) -> int:
        return self.spec.image_size // 2 ** (len(self.spec.ch_mult) - 1)

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    @property
    def num_codes(self) -> int:
        return self.spec.codebook_size

    @property
    def codebook(self) -> torch.Tensor:
        q = self.quantize
        return q.embed.weight if isinstance(q, GumbelQuantizer) else q.embedding.weight

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.quantize(self.quant_conv(self.encoder(x)))

    def decode(self, zq: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(zq))

    def decode_indices(self, idx: torch.Tensor) -> torch.Tensor:
        """Indices ``[B, grid, grid]`` -> pixels in [-1, 1]."""
        if int(idx.min()) < 0 or int(idx.max()) >= self.num_codes:
            raise ConfigError(f"VQ indices must lie in 0..{self.num_codes - 1}")
        return self.decode(self.quantize.lookup(idx)).clamp(-1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        zq, vq_loss, idx = self.encode(x)
        return self.decode(zq), vq_loss, idx
