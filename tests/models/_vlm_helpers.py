"""Tiny VLM building blocks for tests: a BPE tokenizer trained here + a tiny Llama, saved locally.

Nothing is downloaded: the tokenizer is trained on a few ophthalmic sentences with `tokenizers`,
and the LM is a 2-layer Llama saved with ``save_pretrained`` — so recipes can point ``model.llm``
at a real local directory, exactly like a production checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = [
    "Is there diabetic retinopathy in this fundus photograph? Answer yes or no.",
    "Which finding is present? A) glaucoma B) cataract C) drusen D) normal. Answer: B",
    "Examination Type: colour fundus photograph. Image Description: microaneurysms and exudates.",
    "Diagnostic Recommendation: refer to an ophthalmologist for diabetic retinopathy follow-up.",
    "yes no A B C D normal glaucoma cataract myopia hypertension haemorrhage optic disc macula",
]


def save_tiny_llm(path: Path, *, hidden: int = 32) -> Path:
    """A tokenizer with a ChatML template and a 2-layer Llama sized to it, both save_pretrained."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<unk>"
    )
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(path)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    return path


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
            "crop_fundus_border": False,
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
