"""HealthGPT's released weight files, in their published key layout, for a given model.

The seed's inference scripts wrap ``LlavaPhiForCausalLM`` in its own peft ``LoraModel`` (every LLM
Linear but ``lm_head`` gets ``lora_A [r, in]``, ``lora_B [out, r]`` and the router ``lora_route
[k, in]``) and load ``com_hlora_weights.bin`` / ``gen_hlora_weights.bin`` and
``fusion_layer_weights.bin`` (the ``model.mm_projector`` mlp2x_gelu) with
``load_state_dict(strict=False)``, so the files hold those module paths under
``base_model.model.``. Here the paths come from the base LLM's own module tree (built on the meta
device from its config), not from eyeops' model.
"""

from __future__ import annotations

from pathlib import Path

import torch

PREFIX = "base_model.model."


def hlora_state(llm_dir: Path, *, r: int, experts: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """An H-LoRA file (com/gen_hlora_weights.bin) for the causal LM saved in ``llm_dir``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(llm_dir))
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in lm.named_modules():
        if isinstance(module, torch.nn.Linear) and name != "lm_head":
            state[f"{PREFIX}{name}.lora_A.weight"] = torch.randn(r, module.in_features, generator=gen)
            state[f"{PREFIX}{name}.lora_B.weight"] = torch.randn(module.out_features, r, generator=gen)
            state[f"{PREFIX}{name}.lora_route.weight"] = torch.randn(
                experts, module.in_features, generator=gen
            )
    return state


def fusion_state(vision_dim: int, hidden: int, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """fusion_layer_weights.bin: the mlp2x_gelu projector ``model.mm_projector.{0,2}``."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {
        "0.weight": (hidden, vision_dim),
        "0.bias": (hidden,),
        "2.weight": (hidden, hidden),
        "2.bias": (hidden,),
    }
    return {f"{PREFIX}model.mm_projector.{k}": torch.randn(s, generator=gen) for k, s in shapes.items()}


def vocab_state(vocab: int, hidden: int, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """The grown vocabulary (text + <start_index>, 8192 codes, <end_index>, <pixel_newline>)."""
    gen = torch.Generator().manual_seed(seed)
    return {
        f"{PREFIX}model.embed_tokens.weight": torch.randn(vocab, hidden, generator=gen),
        f"{PREFIX}lm_head.weight": torch.randn(vocab, hidden, generator=gen),
    }
