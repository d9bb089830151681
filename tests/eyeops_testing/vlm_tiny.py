"""Tiny VLM building blocks for tests: a BPE tokenizer trained here + a tiny Llama, saved locally.

Nothing is downloaded: the tokenizer is trained on a few ophthalmic sentences with `tokenizers`,
and the LM is a 2-layer Llama saved with ``save_pretrained`` — so recipes can point ``model.llm``
at a real local directory, exactly like a production checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eyeops_testing import llm_tiny

_CORPUS = [
    "Is there diabetic retinopathy in this fundus photograph? Answer yes or no.",
    "Which finding is present? A) glaucoma B) cataract C) drusen D) normal. Answer: B",
    "Examination Type: colour fundus photograph. Image Description: microaneurysms and exudates.",
    "Diagnostic Recommendation: refer to an ophthalmologist for diabetic retinopathy follow-up.",
    "yes no A B C D normal glaucoma cataract myopia hypertension haemorrhage optic disc macula",
]


def save_tiny_llm(path: Path, *, hidden: int = 32) -> Path:
    """The LLM room's tiny ChatML Llama, its tokenizer trained on VLM-style questions and reports."""
    return llm_tiny.save_tiny_llm(path, hidden=hidden, corpus=_CORPUS, vocab_size=500, max_positions=1024)


TINY_SIGLIP = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
}
TINY_CLIP = dict(TINY_SIGLIP)


def tiny_recipe(
    llm_dir: Path,
    *,
    tower: str = "siglip",
    connector: str = "mlp2x_gelu",
    resolution: str = "single",
    stages: list[dict] | None = None,
    **model: Any,
) -> dict:
    """A recipe mapping for a tiny VLM; ``tower``: siglip | clip | timm (efficientnet_lite0, random)."""
    if tower == "timm":
        vision = {"kind": "timm", "name": "efficientnet_lite0", "weights": "none", "image_size": 64}
        ldc = {"low_layers": [2, 3], "high_layers": [5, 6], "select_layer": -1}
    else:
        vision = {
            "kind": tower,
            "name": "tiny",
            "config": TINY_SIGLIP if tower == "siglip" else TINY_CLIP,
            "image_size": 32,
        }
        ldc = {"low_layers": [1, 2], "high_layers": [3], "select_layer": -1}
    conn = {"type": connector, **(ldc if connector == "ldc" else {"select_layer": -2})}
    return {
        "name": "tiny-vlm",
        "data": {"source": "synthetic", "tasks": ["closed_qa"]},
        "model": {
            "family": "vlm",
            "llm": str(llm_dir),
            "vision": vision,
            "connector": conn,
            "resolution": {"mode": resolution, "grids": [[1, 1], [1, 2], [2, 1], [2, 2]], "max_tiles": 4},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
            **model,
        },
        "train": {
            "num_workers": 1,
            "batch_size": 2,
            "stages": stages
            or [
                {"name": "align", "trainable": ["connector"], "max_steps": 1},
                {
                    "name": "instruct",
                    "trainable": ["connector", "lora", "vision_last_blocks"],
                    "max_steps": 1,
                },
            ],
        },
        "evaluate": {"primary_metric": "closed_qa/accuracy"},
        "register": {"model_name": "tiny-vlm"},
    }


HEALTHGPT_STAGES = [
    {"name": "align", "trainable": ["connector", "hlora"], "max_steps": 1},
    {"name": "plugin", "trainable": ["hlora", "embeddings", "lm_head"], "max_steps": 1},
    {"name": "instruct", "trainable": ["hlora", "connector"], "max_steps": 1},
]


# The VQGAN's f=8 layout (ch_mult [1, 1, 2, 4], attention at the lowest level) at 32 px and width 8:
# a 4x4 code map of 16 codes.
TINY_VQ = {
    "image_size": 32,
    "ch": 8,
    "ch_mult": [1, 1, 2, 4],
    "num_res_blocks": 1,
    "attn_resolutions": [4],
    "z_channels": 8,
    "embed_dim": 8,
    "codebook_size": 16,
    "norm_groups": 4,
}


def tiny_healthgpt_recipe(llm_dir: Path) -> dict:
    """A recipe mapping for a tiny HealthGPT (32 px SigLIP, H-LoRA r=4, 16-code VQGAN at 32 px)."""
    return {
        "name": "tiny-healthgpt",
        "model": {
            "family": "healthgpt",
            "llm": str(llm_dir),
            "vision": {"kind": "siglip", "name": "tiny", "config": TINY_SIGLIP, "image_size": 32},
            "connector": {"type": "mlp2x_gelu", "grid": 2},
            "feature_layers": {"comprehension": -2, "generation": 1},
            "hlora": {
                "comprehension": {"r": 4, "alpha": 8, "dropout": 0.0, "num_experts": 2},
                "generation": {"r": 4, "alpha": 8, "dropout": 0.0, "num_experts": 2},
            },
            "vq": TINY_VQ | {"train_steps": 2},
        },
        "train": {"num_workers": 1, "batch_size": 2, "stages": HEALTHGPT_STAGES},
        "evaluate": {"primary_metric": "closed_qa/accuracy"},
        "register": {"model_name": "tiny-healthgpt"},
    }
