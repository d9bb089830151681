"""The VQGAN tokenizer: trains (PSNR reported), round-trips to a PNG, straight-through gradients,
EMA codebook, the trained-model cache, training on a dataset's own images. taming's published
layout is checked key for key in test_vqgan_layout.py."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from eyeops.errors import ConfigError
from eyeops.models.common.specs import VQSpec
from eyeops.models.common.vq import (
    VQModel,
    build_vq,
    evaluate_vq,
    image_tokens,
    synthetic_pixels,
    to_images,
    tokens_to_png,
    train_vq,
)

SPEC = VQSpec(
    image_size=32,
    ch=16,
    ch_mult=[1, 2, 2],  # f=4: an 8x8 code map at 32 px
    num_res_blocks=1,
    attn_resolutions=[8],
    z_channels=16,
    embed_dim=16,
    codebook_size=64,
    norm_groups=8,
    train_steps=80,
)


@pytest.fixture(scope="module")
def pixels():
    return synthetic_pixels(40, SPEC.image_size, seed=3)


@pytest.fixture(scope="module")
def trained(pixels):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convs: one thread is faster than two fighting on a shared CPU
    try:
        torch.manual_seed(0)
        model = VQModel(SPEC)
        before = evaluate_vq(model, pixels)
        report = train_vq(model, pixels, steps=SPEC.train_steps, batch_size=8)
    finally:
        torch.set_num_threads(threads)
    return model, before, report


def test_training_raises_reconstruction_psnr(trained, record_property):
    _, before, report = trained
    record_property("vq_psnr_db", report["psnr_db"])
    print(f"VQ reconstruction PSNR: {before['psnr_db']:.1f} dB untrained -> {report['psnr_db']:.1f} dB")
    assert report["psnr_db"] > before["psnr_db"] + 6
    assert report["psnr_db"] > 18
    assert report["codebook_usage"] > 0.1  # dead-code restarts keep the codebook in use


def test_round_trip_to_png(trained, pixels):
    model, _, _ = trained
    image = to_images(pixels[:1])[0]
    tokens = image_tokens(model, image)
    assert len(tokens) == model.num_tokens == 64
    assert all(0 <= t < SPEC.codebook_size for t in tokens)
    png = tokens_to_png(model, tokens)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    decoded = Image.open(io.BytesIO(png))
    decoded.load()
    assert decoded.size == (32, 32) and decoded.mode == "RGB"
    with pytest.raises(ConfigError, match="needs 64 VQ tokens, got 3"):
        tokens_to_png(model, [1, 2, 3])
    with pytest.raises(ConfigError, match=r"0\.\.63"):
        tokens_to_png(model, [64] * 64)


def test_straight_through_and_ema_codebook(pixels):
    model = VQModel(SPEC).train()
    recon, vq_loss, _ = model(pixels[:4])
    (torch.nn.functional.mse_loss(recon, pixels[:4]) + vq_loss).backward()
    grad = model.encoder.conv_in.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert model.quantize.embedding.weight.grad is None  # EMA: no optimiser on the codebook
    loss_trained = VQModel(SPEC.model_copy(update={"ema": False})).train()
    recon, vq_loss, _ = loss_trained(pixels[:4])
    (torch.nn.functional.mse_loss(recon, pixels[:4]) + vq_loss).backward()
    assert loss_trained.quantize.embedding.weight.grad.abs().sum() > 0


def test_build_vq_trains_once_then_reuses(tmp_path):
    spec = SPEC.model_copy(update={"train_steps": 5, "ch": 8})
    first, report = build_vq(spec, n_images=8)
    second, again = build_vq(spec, n_images=8)
    assert report == again and "psnr_db" in report
    assert all(
        torch.equal(a, b)
        for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    )
    assert not any(p.requires_grad for p in first.parameters())
    path = tmp_path / "vq.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in first.state_dict().items()}, str(path))
    loaded, meta = build_vq(spec.model_copy(update={"checkpoint": str(path)}))
    assert meta["source"] == "checkpoint"
    assert torch.equal(loaded.quantize.embedding.weight, first.quantize.embedding.weight)


def test_dataset_vq_trains_on_the_datasets_own_images(tmp_path):
    """Without a checkpoint the recipe's tokenizer learns the dataset's inputs and targets; the
    cache keeps it per (spec, seed) and retrains when the data changes."""
    from eyeops.data import prepare
    from eyeops.models.common.vq import current_vq, dataset_vq
    from eyeops.recipes import DataSpec

    spec = VQSpec(
        image_size=16,
        ch=8,
        ch_mult=[1, 2],
        num_res_blocks=1,
        attn_resolutions=[],
        z_channels=8,
        embed_dim=8,
        codebook_size=16,
        norm_groups=4,
        train_steps=1,
    )
    refs = [
        prepare(
            DataSpec(source="synthetic", n=n, image_size=64, tasks=["generate_image"], test_fraction=0.2),
            str(tmp_path / f"ds{n}"),
            name=f"ds{n}",
        )
        for n in (2, 4)
    ]
    first, report = dataset_vq(spec, refs[0].uri, seed=7)
    assert report["data"] == f"dataset:{refs[0].fingerprint[:16]}"
    # 2 photographs + their low-resolution inputs + angiogram targets (train split, distinct files)
    assert 2 <= report["images"] <= 6
    assert dataset_vq(spec, refs[0].uri, seed=7)[1] == report  # cached
    assert torch.equal(current_vq(spec, seed=7).quantize.embedding.weight, first.quantize.embedding.weight)
    _, other = dataset_vq(spec, refs[1].uri, seed=7)
    assert other["data"] == f"dataset:{refs[1].fingerprint[:16]}" != report["data"]
