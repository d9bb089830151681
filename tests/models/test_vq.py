"""The VQ tokenizer: trains on synthetic fundus images (PSNR reported), round-trips to a PNG,
straight-through gradients, EMA codebook, a taming-layout checkpoint, the trained-model cache."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from eyeops.errors import ConfigError, NotFoundError
from eyeops.models.common.specs import VQSpec
from eyeops.models.common.vq import (
    VQModel,
    build_vq,
    evaluate_vq,
    image_tokens,
    load_vq_checkpoint,
    synthetic_pixels,
    to_images,
    tokens_to_png,
    train_vq,
)

SPEC = VQSpec(image_size=32, downsample=2, hidden=16, codebook_size=64, embed_dim=16, train_steps=80)


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
    assert report["codebook_usage"] > before["codebook_usage"]


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
    assert model.encoder[0].weight.grad is not None and model.encoder[0].weight.grad.abs().sum() > 0
    assert model.quantize.embedding.weight.grad is None  # EMA: no optimiser on the codebook
    loss_trained = VQModel(SPEC.model_copy(update={"ema": False})).train()
    recon, vq_loss, _ = loss_trained(pixels[:4])
    (torch.nn.functional.mse_loss(recon, pixels[:4]) + vq_loss).backward()
    assert loss_trained.quantize.embedding.weight.grad.abs().sum() > 0


def test_taming_layout_checkpoint(trained, pixels, tmp_path):
    model, _, _ = trained
    state = {k: v for k, v in model.state_dict().items() if k in dict(model.named_parameters())}
    state["loss.discriminator.main.0.weight"] = torch.zeros(2, 2)  # taming's GAN part is dropped
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": state, "global_step": 10}, path)
    fresh = VQModel(SPEC)
    load_vq_checkpoint(fresh, path)
    fresh.eval()
    model.eval()
    with torch.no_grad():
        assert torch.equal(fresh(pixels[:2])[2], model(pixels[:2])[2])
    with pytest.raises(ConfigError, match=r"does not fit model\.vq"):
        load_vq_checkpoint(VQModel(SPEC.model_copy(update={"hidden": 8})), path)
    with pytest.raises(NotFoundError, match="file not found"):
        load_vq_checkpoint(fresh, tmp_path / "nope.ckpt")


def test_build_vq_trains_once_then_reuses(tmp_path):
    spec = SPEC.model_copy(update={"train_steps": 5, "hidden": 8})
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
    assert meta == {"source": "checkpoint"}
    assert torch.equal(loaded.quantize.embedding.weight, first.quantize.embedding.weight)
