"""The VQGAN tokenizer against taming-transformers' published layout, key for key.

The expected keys and shapes come from the published configs (tests/eyeops_testing/taming_layout.py
writes them down from taming's constructor loops, independently of our modules): the full-width
OpenImages f=8 models are compared on the meta device, a narrow-width checkpoint of the same layout
is written as taming's Lightning ``last.ckpt`` (with its GAN ``loss.*`` keys) and loaded tensor for
tensor, then an image round-trips through its codes to a PNG.
"""

from __future__ import annotations

import io

import pytest
import torch
from eyeops_testing.taming_layout import (
    GUMBEL_F8_8192,
    VQ_F8,
    narrow,
    taming_checkpoint,
    vq_spec_fields,
    vqgan_shapes,
)
from PIL import Image

from eyeops.errors import ConfigError
from eyeops.models.common.specs import VQSpec
from eyeops.models.common.vq import VQModel, build_vq, image_tokens, load_vq_checkpoint, tokens_to_png

PUBLISHED = pytest.mark.parametrize("published", [GUMBEL_F8_8192, VQ_F8], ids=["gumbel-f8-8192", "vq-f8"])
EMA_STATS = {"quantize.cluster_size", "quantize.embed_avg", "quantize.initialised"}


def _shapes(model: VQModel) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in EMA_STATS}


@PUBLISHED
def test_full_width_architecture_has_the_published_keys_and_shapes(published):
    spec = VQSpec(**vq_spec_fields(published, norm_groups=32))
    with torch.device("meta"):
        model = VQModel(spec)
    expected = vqgan_shapes(published)
    assert _shapes(model) == expected  # every key, every shape, nothing extra
    assert model.grid == 32 and model.num_tokens == 1024 and model.num_codes == published["n_embed"]
    if published["gumbel"]:
        assert expected["quantize.embed.weight"] == (8192, 256)  # HealthGPT's 8192 codes of width 256


@PUBLISHED
def test_taming_checkpoint_loads_key_for_key_and_round_trips(published, tmp_path):
    config = narrow(published)
    path = tmp_path / "last.ckpt"
    written = taming_checkpoint(config, path)
    spec = VQSpec(**vq_spec_fields(config, norm_groups=4, checkpoint=str(path), train_steps=0))
    model, report = build_vq(spec)  # what a recipe's vq.checkpoint does
    assert report["source"] == "checkpoint"
    state = model.state_dict()
    assert set(written) == set(state) - EMA_STATS
    assert all(torch.equal(state[k], v) for k, v in written.items())

    image = Image.new("RGB", (300, 280), (180, 70, 40))
    image.paste((240, 200, 120), (120, 110, 180, 170))
    tokens = image_tokens(model, image)
    assert len(tokens) == 32 * 32 and all(0 <= t < config["n_embed"] for t in tokens)
    if published["gumbel"]:  # encoding takes the best-scoring code of quantize.proj
        from eyeops.models.common.vq import to_pixels

        with torch.no_grad():
            logits = model.quantize.proj(model.quant_conv(model.encoder(to_pixels([image], 256))))
        assert tokens == logits.argmax(1).flatten().tolist()
    png = Image.open(io.BytesIO(tokens_to_png(model, tokens)))
    png.load()
    assert png.format == "PNG" and png.size == (256, 256)


def test_a_checkpoint_that_does_not_fit_names_its_keys(tmp_path):
    config = narrow(GUMBEL_F8_8192)
    path = tmp_path / "last.ckpt"
    state = taming_checkpoint(config, path)
    spec = VQSpec(**vq_spec_fields(config, norm_groups=4))
    broken = dict(state)
    del broken["decoder.up.3.attn.2.q.weight"]
    broken["encoder.conv_in.weight"] = torch.zeros(5, 3, 3, 3)
    torch.save({"state_dict": broken}, tmp_path / "broken.ckpt")
    with pytest.raises(
        ConfigError, match=r"1 missing \['decoder\.up\.3\.attn\.2\.q\.weight'\].*encoder\.conv_in"
    ):
        load_vq_checkpoint(VQModel(spec), tmp_path / "broken.ckpt")
    # the plain-VQ layout is not the Gumbel one: the quantiser keys say so
    with pytest.raises(ConfigError, match=r"quantize\.embedding\.weight.*quantize\.embed\.weight"):
        load_vq_checkpoint(VQModel(spec.model_copy(update={"quantizer": "vq"})), path)


def test_spec_refuses_layouts_that_cannot_exist():
    with pytest.raises(ValueError, match=r"attn_resolutions \[12\] match no level"):
        VQSpec(image_size=64, attn_resolutions=[12], ch_mult=[1, 1, 2, 4], norm_groups=8)
    with pytest.raises(ValueError, match="not divisible by norm_groups 32"):
        VQSpec(ch=16, norm_groups=32)
    with pytest.raises(ValueError, match="z_channels must equal embed_dim"):
        VQSpec(quantizer="gumbel", z_channels=32, embed_dim=16)
