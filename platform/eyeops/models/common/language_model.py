"""The language model inside every generative family: one builder, one LoRA attachment.

``build_language_model`` loads the spec's ``llm`` (packaged, local directory or hub id) or builds
a randomly initialised model from ``llm_config`` (tiny architectures in tests); ``add_lora`` wraps
it in a peft LoRA model, naming the model's Linear layers when the targets match none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from eyeops.errors import ConfigError
from eyeops.models.common.hub import load_causal_lm, torch_dtype

if TYPE_CHECKING:
    from torch import nn

    from eyeops.models.common.specs import LanguageModelSpec, LoRASpec


def build_language_model(spec: LanguageModelSpec, vocab_size: int) -> nn.Module:
    """The spec's causal LM; ``vocab_size`` sizes a model built from ``llm_config`` (if not given)."""
    if spec.llm_config is None:
        return load_causal_lm(spec.llm, dtype=spec.dtype)
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(spec.llm_config)
    model_type = cfg.pop("model_type", "llama")
    cfg.setdefault("vocab_size", vocab_size)
    try:
        config = AutoConfig.for_model(model_type, **cfg)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"model.llm_config: {exc}") from None
    return AutoModelForCausalLM.from_config(config, dtype=torch_dtype(spec.dtype))


def add_lora(model: nn.Module, lora: LoRASpec, *, quantized: bool = False) -> nn.Module:
    """``model`` wrapped in a peft LoRA adapter shaped by ``lora`` (k-bit prepared when quantized)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model)
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        linear = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ == "Linear"}
        )
        raise ConfigError(
            f"model.lora.target_modules {lora.target_modules}: {exc} (Linear layers of this model: {linear})"
        ) from None
