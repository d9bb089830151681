"""State dicts in taming-transformers' published VQGAN layout, built from its configs alone.

taming's ``Encoder``/``Decoder`` (``taming/modules/diffusionmodules/model.py``) name their modules by
how their constructors loop over ``ch_mult``, ``num_res_blocks`` and ``attn_resolutions``; this module
writes those names and shapes down independently of eyeops' implementation, so a test can hand our
loader exactly what a real ``last.ckpt`` holds (plus the ``loss.*`` GAN keys it must ignore) at any
channel width. The published configurations are below; tests narrow ``ch`` (and the code sizes) to
stay small while keeping the layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# taming "VQGAN OpenImages (f=8), 8192, GumbelQuantization" (vqgan_gumbel_f8/configs/model.yaml):
# the tokenizer HealthGPT decodes with. target: taming.models.vqgan.GumbelVQ
GUMBEL_F8_8192 = {
    "embed_dim": 256,
    "n_embed": 8192,
    "gumbel": True,
    "ddconfig": {
        "double_z": False,
        "z_channels": 256,
        "resolution": 256,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 128,
        "ch_mult": [1, 1, 2, 4],
        "num_res_blocks": 2,
        "attn_resolutions": [32],
        "dropout": 0.0,
    },
}
# latent-diffusion's "VQGAN OpenImages (f=8), 16384" (vq-f8): the plain VectorQuantizer layout.
VQ_F8 = {
    "embed_dim": 4,
    "n_embed": 16384,
    "gumbel": False,
    "ddconfig": {
        "double_z": False,
        "z_channels": 4,
        "resolution": 256,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 128,
        "ch_mult": [1, 2, 2, 4],
        "num_res_blocks": 2,
        "attn_resolutions": [32],
        "dropout": 0.0,
    },
}
LOSS_KEYS = {  # what a taming training checkpoint also holds: discriminator and LPIPS weights
    "loss.logvar": (),
    "loss.discriminator.main.0.weight": (64, 3, 4, 4),
    "loss.perceptual_loss.lin0.model.1.weight": (1, 64, 1, 1),
}


def narrow(config: dict[str, Any], *, ch: int = 8, z: int = 8, n_embed: int = 32) -> dict[str, Any]:
    """The same layout at a small width: ``ch``, ``z_channels``/``embed_dim`` and codebook shrunk."""
    dd = {**config["ddconfig"], "ch": ch, "z_channels": z}
    return {**config, "embed_dim": z, "n_embed": n_embed, "ddconfig": dd}


def _resnet(prefix: str, cin: int, cout: int) -> dict[str, tuple[int, ...]]:
    keys = {
        f"{prefix}.norm1.weight": (cin,),
        f"{prefix}.norm1.bias": (cin,),
        f"{prefix}.conv1.weight": (cout, cin, 3, 3),
        f"{prefix}.conv1.bias": (cout,),
        f"{prefix}.norm2.weight": (cout,),
        f"{prefix}.norm2.bias": (cout,),
        f"{prefix}.conv2.weight": (cout, cout, 3, 3),
        f"{prefix}.conv2.bias": (cout,),
    }
    if cin != cout:
        keys |= {f"{prefix}.nin_shortcut.weight": (cout, cin, 1, 1), f"{prefix}.nin_shortcut.bias": (cout,)}
    return keys


def _attn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    keys = {f"{prefix}.norm.weight": (c,), f"{prefix}.norm.bias": (c,)}
    for name in ("q", "k", "v", "proj_out"):
        keys |= {f"{prefix}.{name}.weight": (c, c, 1, 1), f"{prefix}.{name}.bias": (c,)}
    return keys


def _conv(prefix: str, cout: int, cin: int, k: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (cout, cin, k, k), f"{prefix}.bias": (cout,)}


def _mid(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return (
        _resnet(f"{prefix}.block_1", c, c) | _attn(f"{prefix}.attn_1", c) | _resnet(f"{prefix}.block_2", c, c)
    )


def vqgan_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every key (``loss.*`` aside) and shape of taming's VQModel / GumbelVQ built from ``config``."""
    dd = config["ddconfig"]
    ch, mult, n_res, attn = dd["ch"], list(dd["ch_mult"]), dd["num_res_blocks"], dd["attn_resolutions"]
    z, levels = dd["z_channels"], len(dd["ch_mult"])
    keys = _conv("encoder.conv_in", ch, dd["in_channels"], 3)
    res, in_mult = dd["resolution"], [1, *mult]
    for i in range(levels):
        block_in, block_out = ch * in_mult[i], ch * mult[i]
        for j in range(n_res):
            keys |= _resnet(f"encoder.down.{i}.block.{j}", block_in, block_out)
            block_in = block_out
            if res in attn:
                keys |= _attn(f"encoder.down.{i}.attn.{j}", block_in)
        if i != levels - 1:
            keys |= _conv(f"encoder.down.{i}.downsample.conv", block_in, block_in, 3)
            res //= 2
    keys |= _mid("encoder.mid", block_in)
    keys |= {"encoder.norm_out.weight": (block_in,), "encoder.norm_out.bias": (block_in,)}
    keys |= _conv("encoder.conv_out", 2 * z if dd["double_z"] else z, block_in, 3)

    block_in, res = ch * mult[-1], dd["resolution"] // 2 ** (levels - 1)
    keys |= _conv("decoder.conv_in", block_in, z, 3) | _mid("decoder.mid", block_in)
    for i in reversed(range(levels)):
        block_out = ch * mult[i]
        for j in range(n_res + 1):
            keys |= _resnet(f"decoder.up.{i}.block.{j}", block_in, block_out)
            block_in = block_out
            if res in attn:
                keys |= _attn(f"decoder.up.{i}.attn.{j}", block_in)
        if i != 0:
            keys |= _conv(f"decoder.up.{i}.upsample.conv", block_in, block_in, 3)
            res *= 2
    keys |= {"decoder.norm_out.weight": (block_in,), "decoder.norm_out.bias": (block_in,)}
    keys |= _conv("decoder.conv_out", dd["out_ch"], block_in, 3)

    e, n = config["embed_dim"], config["n_embed"]
    keys |= _conv("quant_conv", e, z, 1) | _conv("post_quant_conv", z, e, 1)
    if config["gumbel"]:
        keys |= _conv("quantize.proj", n, z, 1) | {"quantize.embed.weight": (n, e)}
    else:
        keys |= {"quantize.embedding.weight": (n, e)}
    return keys


def taming_checkpoint(config: dict[str, Any], path: Path, *, seed: int = 0) -> dict[str, Any]:
    """Write a Lightning-style ``last.ckpt`` (``{"state_dict": ...}``) in taming's layout, random
    weights (GroupNorm weights 1), plus the loss keys; returns the architecture tensors written."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in vqgan_shapes(config).items():
        if ".norm" in key and key.endswith(".weight"):
            state[key] = torch.ones(shape)
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.05
    extra = {k: torch.zeros(s) for k, s in LOSS_KEYS.items()}
    torch.save({"state_dict": {**state, **extra}, "global_step": 1, "epoch": 0}, path)
    return state


def vq_spec_fields(config: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """The eyeops ``model.vq`` fields of a taming ``config`` (``norm_groups`` for narrow widths)."""
    dd = config["ddconfig"]
    return {
        "image_size": dd["resolution"],
        "ch": dd["ch"],
        "ch_mult": list(dd["ch_mult"]),
        "num_res_blocks": dd["num_res_blocks"],
        "attn_resolutions": list(dd["attn_resolutions"]),
        "z_channels": dd["z_channels"],
        "embed_dim": config["embed_dim"],
        "codebook_size": config["n_embed"],
        "quantizer": "gumbel" if config["gumbel"] else "vq",
        **overrides,
    }


def tiny_gumbel_vq(tmp: Path) -> dict[str, Any]:
    """``model.vq`` fields of a 32 px, width-8 GumbelVQ in the published f=8 layout (attention at
    the lowest level, 4x4 codes), with its ``last.ckpt`` written under ``tmp``."""
    config = narrow(GUMBEL_F8_8192, ch=8, z=8, n_embed=16)
    config["ddconfig"] |= {"resolution": 32, "attn_resolutions": [4]}
    path = tmp / "vqgan_gumbel_f8" / "last.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    taming_checkpoint(config, path)
    return vq_spec_fields(config, norm_groups=4, checkpoint=str(path), train_steps=0)
