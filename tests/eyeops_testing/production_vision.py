"""Vision pieces for the architecture-exact production tests (beside the shared ``_production``).

Tiny towers and a tiny Qwen2.5-VL saved with ``save_pretrained`` into local directories, shaped
like the seeds' checkpoints: SigLIP-so400m's 27 layers and patch 14, CLIP-ViT-L/14's 24 layers, and
Qwen2.5-VL's ViT (window attention, 2x2 merger, 14 px patches) with the packaged SmolLM2 tokenizer
plus Qwen's vision tokens, and a ``Qwen2VLImageProcessor`` next to it, so ``AutoProcessor`` /
``AutoImageProcessor`` / ``AutoModelForImageTextToText.from_pretrained(dir)`` read it offline.
"""

from __future__ import annotations

from pathlib import Path

from eyeops_testing.production import TINY_DECODER, packaged_tokenizer_dir

TOWER_SIDE = 28  # 2x2 patches of 14 px per view: the real patch size, a tiny image
QWEN_VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def tiny_tower_dir(tmp: Path, kind: str, layers: int) -> Path:
    """A SigLIP (``siglip_vision_model``) or CLIP (``clip_vision_model``) vision tower, saved."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

    model_cls, config_cls = {
        "siglip": (SiglipVisionModel, SiglipVisionConfig),
        "clip": (CLIPVisionModel, CLIPVisionConfig),
    }[kind]
    sizes = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2}
    torch.manual_seed(0)
    model = model_cls(config_cls(num_hidden_layers=layers, image_size=TOWER_SIDE, patch_size=14, **sizes))
    dest = tmp / f"{kind}-tower"
    model.save_pretrained(dest)
    return dest


def tiny_qwen25vl_dir(tmp: Path) -> Path:
    """A tiny ``qwen2_5_vl`` checkpoint with its tokenizer and image processor, saved locally."""
    import torch
    from transformers import (
        AutoModelForImageTextToText,
        AutoTokenizer,
        Qwen2_5_VLConfig,
        Qwen2VLImageProcessor,
    )

    tokenizer = AutoTokenizer.from_pretrained(str(packaged_tokenizer_dir()))
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_VISION_TOKENS})
    start, end, image, video = tokenizer.convert_tokens_to_ids(QWEN_VISION_TOKENS)
    text = {
        **TINY_DECODER,
        "vocab_size": len(tokenizer),
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},  # head_dim 16 -> 8 pairs
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": None,
        "tie_word_embeddings": True,
    }
    vision = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": TINY_DECODER["hidden_size"],
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 56,
        "fullatt_block_indexes": [1],
    }
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        vision_start_token_id=start,
        vision_end_token_id=end,
        image_token_id=image,
        video_token_id=video,
    )
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    dest = tmp / "qwen2_5_vl"
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112).save_pretrained(dest)
    return dest


def adapters_per_layer(keys: list[str], adapter: str = "") -> dict[int, set[str]]:
    """Decoder layer -> Linear names carrying a ``lora_A`` (of ``adapter``, if given) in saved keys."""
    out: dict[int, set[str]] = {}
    for key in keys:
        if ".lora_A." not in key or (adapter and f".lora_A.{adapter}." not in key):
            continue
        parts = key.split(".lora_A.")[0].split(".")
        if "layers" in parts:
            out.setdefault(int(parts[parts.index("layers") + 1]), set()).add(parts[-1])
    return out
