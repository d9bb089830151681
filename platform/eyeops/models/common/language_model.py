"""The language model inside every generative family: one builder, one LoRA attachment.

``build_language_model`` loads the spec's ``llm`` (packaged, local directory or hub id) or builds
a randomly initialised model from ``llm_config`` (tiny architectures in tests), with the recipe's
memory features (QLoRA quantization, attention kernel, gradient checkpointing); ``add_lora`` wraps
it in a peft LoRA model and refuses target names that match no Linear layer, so a fused
architecture (Phi-3's ``qkv_proj``) never silently adapts less than the recipe says.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from typing import TYPE_CHECKING, Protocol

from eyeops.errors import ConfigError
from eyeops.models.common.hub import check_attn_implementation, load_causal_lm, torch_dtype

if TYPE_CHECKING:
    from torch import nn

    from eyeops.models.common.specs import LanguageModelSpec, LoRASpec

log = logging.getLogger(__name__)
ALL_LINEAR = "all-linear"


class LMOptions(Protocol):
    """The recipe fields that shape how a language model is loaded (LLMModel, LanguageModelSpec)."""

    dtype: str
    quantization: str
    gradient_checkpointing: bool
    attn_implementation: str
    trust_remote_code: bool


def load_language_model(ref: str, options: LMOptions, *, revision: str | None = None) -> nn.Module:
    """``from_pretrained`` of ``ref`` (packaged, local dir or hub id) with the recipe's memory features."""
    model = load_causal_lm(
        ref,
        dtype=options.dtype,
        revision=revision,
        quantization=options.quantization,
        attn_implementation=options.attn_implementation,
        trust_remote_code=options.trust_remote_code,
    )
    return with_memory_features(model, options)


def with_memory_features(model: nn.Module, options: LMOptions) -> nn.Module:
    """Gradient checkpointing (non-reentrant: frozen embeddings and LoRA need no input grads)."""
    model.config.use_cache = False  # no KV cache while training: it only costs memory
    if options.gradient_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise ConfigError(f"model.gradient_checkpointing: {type(model).__name__} does not support it")
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model


def build_language_model(spec: LanguageModelSpec, vocab_size: int) -> nn.Module:
    """The spec's causal LM; ``vocab_size`` sizes a model built from ``llm_config`` (if not given)."""
    if spec.llm_config is None:
        return load_language_model(spec.llm, spec)
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(spec.llm_config)
    model_type = cfg.pop("model_type", "llama")
    cfg.setdefault("vocab_size", vocab_size)
    if spec.quantization != "none":
        raise ConfigError(
            f"model.quantization={spec.quantization!r} applies to loaded weights, not to a model "
            "built from model.llm_config"
        )
    check_attn_implementation(spec.attn_implementation)
    try:
        config = AutoConfig.for_model(model_type, **cfg)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"model.llm_config: {exc}") from None
    model = AutoModelForCausalLM.from_config(
        config, dtype=torch_dtype(spec.dtype), attn_implementation=spec.attn_implementation
    )
    return with_memory_features(model, spec)


def linear_names(model: nn.Module) -> dict[str, str]:
    """Qualified name -> leaf name of every Linear (bitsandbytes' 4/8-bit layers subclass it)."""
    from torch import nn

    return {n: n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def check_lora_targets(model: nn.Module, targets: list[str], *, field: str = "model.lora") -> Counter:
    """Layers each target adapts (peft's rule: the name or its dotted suffix); none -> ConfigError."""
    if targets == [ALL_LINEAR]:
        return Counter()
    if ALL_LINEAR in targets:
        raise ConfigError(f"{field}.target_modules {targets}: '{ALL_LINEAR}' must be the only entry")
    names = linear_names(model)
    hits = Counter(t for t in targets for qualified in names if qualified == t or qualified.endswith(f".{t}"))
    missing = [t for t in targets if not hits[t]]
    if missing:
        raise ConfigError(
            f"{field}.target_modules: {missing} match no Linear layer of {type(model).__name__} "
            f"(its Linear layers: {sorted(set(names.values()))}; or use ['{ALL_LINEAR}'])"
        )
    return hits


def add_lora(model: nn.Module, lora: LoRASpec, *, quantized: bool | None = None) -> nn.Module:
    """``model`` wrapped in a peft LoRA adapter shaped by ``lora`` (k-bit prepared when quantized).

    ``quantized`` defaults to whether transformers loaded the model through a quantizer (QLoRA).
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    targets = list(lora.target_modules)
    hits = check_lora_targets(model, targets)
    if quantized is None:
        quantized = getattr(model, "hf_quantizer", None) is not None
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=ALL_LINEAR if targets == [ALL_LINEAR] else targets,
        task_type="CAUSAL_LM",
    )
    try:
        with warnings.catch_warnings():  # peft 0.21 asks transformers 5 the deprecated question
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
            wrapped = get_peft_model(model, config)
    except ValueError as exc:
        raise ConfigError(f"model.lora.target_modules {targets}: {exc}") from None
    _zero_partitioned_lora_b(wrapped)
    adapted = Counter(
        n.removesuffix(".lora_A").rsplit(".", 1)[-1]
        for n, _ in wrapped.named_modules()
        if n.endswith(".lora_A")
    )
    log.info("LoRA adapts %s (targets %s: %s)", dict(adapted), targets, dict(hits) or ALL_LINEAR)
    return wrapped


def _zero_partitioned_lora_b(model: nn.Module) -> None:
    """Under ``deepspeed.zero.Init`` peft's ``zeros_(lora_B)`` meets an empty partition and does
    nothing; an adapter must start as the identity, so zero the gathered B matrices here."""
    import torch

    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n and hasattr(p, "ds_id")]
    if not lora_b:
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(lora_b, modifier_rank=0), torch.no_grad():
        for param in lora_b:
            param.zero_()
