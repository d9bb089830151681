"""``plan(recipe) -> Plan``: parameters and GPU memory per worker, before any pod starts.

Parameters are counted on the ``meta`` device with the families' own builders (LoRA/H-LoRA,
connectors and towers included), so nothing is downloaded or allocated; trainable parameters come
from ``Family.apply_stage`` for every stage. Hub ids are resolved to their *config* only: an explicit
config (``configs=``), a local ``save_pretrained`` directory, the transformers cache, or the
architecture fields of the seeds' published backbones shipped in ``plan_configs.json``.

Memory per worker (bytes; every term is in the result):

- weights: every parameter at its dtype; with QLoRA the LM's frozen Linear weights at 4.127 bits
  (NF4 + double-quantised constants) or 8 bits; ZeRO-3 divides all weights by the workers;
- gradients: trainable parameters at their dtype (DDP adds its bucket copy with >1 worker);
  ZeRO-2/3 divide them by the workers;
- optimizer: AdamW's two moments at the parameter's dtype (DDP) or, under DeepSpeed with bf16/fp16,
  fp32 master weights + two fp32 moments (12 bytes); ZeRO-1/2/3 divide them, CPU offload moves them
  to host memory;
- activations of the LM (Korthikanti et al. 2022, adapted to gated MLPs and GQA): per layer
  ``s·b·(6h + 2·kv + 4·I)`` values (eager attention adds ``2·a·s²·b``), or only the layer input
  ``s·b·h`` with gradient checkpointing (plus one layer recomputed); logits ``s·b·V`` at the compute
  dtype plus fp32 loss copies (8 bytes);
- overhead: 1 GiB (CUDA context, cuBLAS workspace, NCCL buffers).

Strategies: ``ddp``; ``zero1``/``zero2``/``zero3``; ``zero3-offload`` (optimizer state in host
memory); ``zero3-offload-all`` (optimizer state and partitioned weights in host memory).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from eyeops.errors import ConfigError
from eyeops.models.common.specs import PACKAGED_LLM, Strict

if TYPE_CHECKING:
    from torch import nn

    from eyeops.recipes import Recipe

log = logging.getLogger(__name__)

GIB = 1024**3
OVERHEAD_BYTES = GIB
CONFIGS_FILE = Path(__file__).resolve().parent / "plan_configs.json"
# Total memory per GPU as nvidia-smi reports it (GiB), by Ray accelerator type. Override with the
# recipe's train.gpu_memory_gib, EYEOPS_GPU_MEMORY_GIB or `eyeops plan --gpu-memory-gib`.
GPU_MEMORY_GIB: dict[str, float] = {
    "T4": 15.0,
    "V100": 16.0,
    "V100-32G": 32.0,
    "A10G": 22.5,
    "L4": 22.5,
    "L40S": 45.0,
    "A100": 40.0,  # Ray's plain "A100" may be either card: the smaller one is the safe reading
    "A100-40G": 40.0,
    "A100-80G": 80.0,
    "H100": 79.6,
    "H200": 140.4,
}
_QUANT_BYTES = {"4bit": 4.127 / 8, "8bit": 1.0}  # NF4 + double-quantised absmax; LLM.int8
Strategy = Literal["ddp", "zero1", "zero2", "zero3", "zero3-offload", "zero3-offload-all"]
STRATEGIES: tuple[Strategy, ...] = ("ddp", "zero1", "zero2", "zero3", "zero3-offload", "zero3-offload-all")


# --- result models -------------------------------------------------------------------------------
class LMGeometry(Strict):
    """The transformer shape activations are estimated from (an HF config's fields)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_dim: int = Field(description="num_key_value_heads × head_dim.")
    vocab: int


class ParamCount(Strict):
    """What would train: totals from the meta-device model, trainable parameters per stage."""

    total: int
    trainable: dict[str, int] = Field(description="Stage name -> trainable parameters.")
    weight_bytes: int = Field(description="Every parameter at the dtype it is built in.")
    trainable_bytes: dict[str, int] = Field(description="Stage name -> trainable parameters' bytes.")
    quantizable: int = Field(0, description="Frozen LM Linear weights QLoRA would store in 4/8 bit.")
    lm: LMGeometry | None = None
    notes: list[str] = Field(default_factory=list)


class MemoryInputs(Strict):
    """Everything the memory arithmetic reads (pure numbers: testable against known figures)."""

    total_params: int
    weight_bytes: int
    trainable_params: int
    trainable_bytes: int
    quantizable_params: int = 0
    quantizable_bytes_each: float = 2.0
    quantization: Literal["none", "4bit", "8bit"] = "none"
    strategy: Strategy = "ddp"
    workers: int = Field(1, ge=1)
    mixed_precision: bool = Field(True, description="bf16/fp16 training (DeepSpeed keeps fp32 masters).")
    activation_bytes: int = 0


class MemoryEstimate(Strict):
    """GPU memory of one worker, GiB, by term."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    overhead: float
    total: float
    host_offload: float = Field(0.0, description="Optimizer state in host memory (CPU offload).")


class StagePlan(Strict):
    name: str
    trainable: int
    memory: MemoryEstimate


class Plan(Strict):
    """``eyeops plan``'s answer for one recipe."""

    recipe: str
    family: str
    params: int
    stages: list[StagePlan]
    strategy: Strategy
    workers: int
    precision: str = Field(description="Weights dtype / compute precision / quantization.")
    max_seq_len: int | None
    batch_size: int
    gradient_checkpointing: bool
    accelerator_type: str | None
    gpu_memory_gib: float | None
    peak: MemoryEstimate
    by_strategy: dict[str, dict[str, float]] = Field(
        description="Strategy -> {'checkpointing': GiB, 'no_checkpointing': GiB}: peak per worker."
    )
    fits: bool | None = Field(description="None: no GPU pool to check against.")
    notes: list[str] = Field(default_factory=list)


class PlanError(ConfigError):
    """The plan cannot fit the pool's GPU."""


# --- configs -------------------------------------------------------------------------------------
def _shipped() -> dict[str, Any]:
    return json.loads(CONFIGS_FILE.read_text(encoding="utf-8"))


def hub_config(ref: str, configs: Mapping[str, str | Path | dict] | None = None) -> dict[str, Any]:
    """The config dict (with ``model_type``) of a backbone reference, without downloading weights.

    Order: ``configs[ref]`` (a dict, a config.json or a directory), a local directory or packaged
    model, the transformers cache (offline), the shipped ``plan_configs.json``.
    """
    explicit = (configs or {}).get(ref)
    if isinstance(explicit, dict):
        return dict(explicit)
    if explicit is not None:
        path = Path(explicit).expanduser()
        path = path / "config.json" if path.is_dir() else path
        if not path.is_file():
            raise ConfigError(f"config for {ref!r}: {path} is not a config.json or a directory holding one")
        return json.loads(path.read_text(encoding="utf-8"))
    if ref.startswith("packaged:") or Path(ref).expanduser().is_dir():
        from eyeops.models.common.hub import resolve_base

        return json.loads((Path(resolve_base(ref)) / "config.json").read_text(encoding="utf-8"))
    shipped = _shipped()
    name = shipped["aliases"].get(ref, ref)
    if name in shipped["configs"]:
        return dict(shipped["configs"][name])
    with contextlib.suppress(OSError, ValueError):
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(ref).to_dict()  # a cached config (HF_HUB_OFFLINE)
    raise ConfigError(
        f"no config for {ref!r} offline (not a local directory, not cached, not shipped): pass "
        f"--config {ref}=path/to/config.json (known: {', '.join(sorted(shipped['configs']))})"
    )


def _vision_config(ref: str, configs: Mapping[str, Any] | None) -> dict[str, Any]:
    cfg = hub_config(ref, configs)
    cfg = dict(cfg.get("vision_config", cfg))  # a full SigLIP/CLIP config holds the tower's
    return {k: v for k, v in cfg.items() if k not in ("model_type", "architectures", "transformers_version")}


# --- counting on the meta device -----------------------------------------------------------------
def _is_hub_id(ref: str) -> bool:
    return not ref.startswith("packaged:") and not Path(ref).expanduser().is_dir()


def offline_recipe(recipe: Recipe, configs: Mapping[str, Any] | None = None) -> tuple[Recipe, list[str]]:
    """The same architecture, built from configs: hub ids become ``*_config``, weights 'none'."""
    spec, updates, notes = recipe.model, {}, []
    if hasattr(spec, "llm_config") and spec.llm_config is None:
        updates["model.llm_config"] = hub_config(spec.llm, configs)
        if _is_hub_id(spec.llm):
            updates["model.llm"] = PACKAGED_LLM
            notes.append(
                f"tokenizer of {spec.llm!r} unavailable offline: the packaged SmolLM2 tokenizer stands in "
                "(LM sizes come from the config; rows a family adds to the vocabulary follow the stand-in)"
            )
    # A native backbone (Qwen2.5-VL) brings its own tower: its size is in the checkpoint's config.
    vision = getattr(spec, "vision", None) if getattr(spec, "backbone", "llava") != "native" else None
    if vision is not None and vision.kind != "timm" and vision.config is None:
        updates["model.vision.config"] = _vision_config(vision.name, configs)
    if vision is not None and vision.kind == "timm":
        updates["model.vision.weights"] = "none"
    if spec.family == "classifier":
        updates["model.weights"] = "none"
    if spec.family == "ophglm":
        updates["model.image_encoder.weights"] = "none"
        updates["model.image_checkpoint"] = None
    if spec.family == "healthgpt" and spec.vq.checkpoint:
        updates["model.vq.checkpoint"] = None
        notes.append(f"VQ tokenizer sized from model.vq, not read from {spec.vq.checkpoint!r}")
    if getattr(spec, "quantization", "none") != "none":
        updates["model.quantization"] = "none"  # counted at full precision, stored as quantized below
    return (recipe.with_overrides(updates) if updates else recipe), notes


def _build_on_meta(recipe: Recipe, configs: Mapping[str, Any] | None) -> tuple[nn.Module, list[str]]:
    import torch

    from eyeops.families import get_family
    from eyeops.models.common.hub import PACKAGED_PREFIX, resolve_base

    built, notes = offline_recipe(recipe, configs)
    for ref in {getattr(built.model, "llm", None), getattr(built.model, "base", None)}:
        if isinstance(ref, str) and ref.startswith(PACKAGED_PREFIX):
            resolve_base(ref)  # a packaged LM is converted once, on the CPU: from_pretrained can't on meta
    with torch.device("meta"):
        if built.family == "llm":  # the family loads weights by reference; the same LM from its config
            from transformers import AutoConfig, AutoModelForCausalLM

            from eyeops.models.common.hub import torch_dtype
            from eyeops.models.common.language_model import add_lora
            from eyeops.models.llm.family import uses_lora

            cfg = hub_config(built.model.base, configs)
            config = AutoConfig.for_model(cfg.pop("model_type", "llama"), **cfg)
            model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype(built.model.dtype))
            if uses_lora(built):
                model = add_lora(model, built.model.lora)
        elif built.family == "healthgpt":  # an untrained VQ of the recipe's shape (building trains one)
            from eyeops.models.common.vq import VQModel
            from eyeops.models.healthgpt.modeling import _tokenizer, build_healthgpt

            model = build_healthgpt(built, _tokenizer(built.model), vq=VQModel(built.model.vq))
        elif built.family == "ophglm":  # the BERT from its config (from_pretrained would load weights)
            from transformers import AutoConfig, AutoModel

            from eyeops.models.ophglm import modeling as M

            cfg = hub_config(M.text_encoder_ref(built.model.text_encoder), configs)
            bert = AutoModel.from_config(AutoConfig.for_model(cfg.pop("model_type", "bert"), **cfg))
            model = M.OphGLM(
                M._classifier(built.model),
                bert,
                M._language_model(built, built.model),
                prefix_tokens=built.model.prefix_tokens,
                hidden=built.model.fusion_hidden,
            )
        else:
            model = get_family(built.family).build_model(built)
    return model, notes


def _lm_geometry(model: nn.Module) -> LMGeometry | None:
    """The first causal LM inside ``model`` (its HF config), or None (a classifier)."""
    for module in model.modules():
        cfg = getattr(module, "config", None)
        if (
            cfg is None
            or not hasattr(module, "get_output_embeddings")
            or module.get_output_embeddings() is None
        ):
            continue
        cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        heads = int(cfg.num_attention_heads)
        head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
        return LMGeometry(
            hidden=int(cfg.hidden_size),
            intermediate=int(getattr(cfg, "intermediate_size", 4 * cfg.hidden_size)),
            layers=int(cfg.num_hidden_layers),
            heads=heads,
            kv_dim=int(getattr(cfg, "num_key_value_heads", None) or heads) * head_dim,
            vocab=int(cfg.vocab_size),
        )
    return None


def _quantizable(model: nn.Module) -> int:
    """Frozen Linear weights of the LM that bitsandbytes would quantize (not lm_head, not adapters)."""
    from torch import nn

    total = 0
    for name, module in model.named_modules():
        if type(module) is nn.Linear and "lora_" not in name and not name.endswith("lm_head"):
            total += module.weight.numel()
    return total


def count_parameters(recipe: Recipe, configs: Mapping[str, Any] | None = None) -> ParamCount:
    """Parameters of the recipe's model and trainable parameters per stage (meta device)."""
    from eyeops.families import get_family
    from eyeops.models.common.stages import stages_of

    model, notes = _build_on_meta(recipe, configs)
    family = get_family(recipe.family)
    params = list(model.named_parameters())
    trainable, trainable_bytes = {}, {}
    for stage in stages_of(recipe):
        family.apply_stage(model, stage)
        chosen = [p for _, p in params if p.requires_grad]
        trainable[stage.name] = sum(p.numel() for p in chosen)
        trainable_bytes[stage.name] = sum(p.numel() * p.element_size() for p in chosen)
    lm = _lm_geometry(model)
    quantizable = _quantizable(model.lm if hasattr(model, "lm") else model) if lm else 0
    return ParamCount(
        total=sum(p.numel() for _, p in params),
        trainable=trainable,
        weight_bytes=sum(p.numel() * p.element_size() for _, p in params),
        trainable_bytes=trainable_bytes,
        quantizable=quantizable,
        lm=lm,
        notes=notes,
    )


# --- memory arithmetic ---------------------------------------------------------------------------
def activation_bytes(
    lm: LMGeometry,
    *,
    batch: int,
    seq: int,
    act_bytes: int,
    checkpointing: bool,
    eager_attention: bool = False,
) -> int:
    """Activations the backward pass keeps for the LM, logits included (see the module docstring)."""
    tokens = batch * seq
    per_layer = tokens * (6 * lm.hidden + 2 * lm.kv_dim + 4 * lm.intermediate) * act_bytes
    if eager_attention:  # scores and softmax output, s² per head
        per_layer += 2 * lm.heads * seq * seq * batch * act_bytes
    if checkpointing:
        layers = lm.layers * tokens * lm.hidden * act_bytes + per_layer  # inputs + one recomputed layer
    else:
        layers = lm.layers * per_layer
    logits = tokens * lm.vocab * (act_bytes + 8)
    return layers + logits


def memory_per_worker(m: MemoryInputs) -> MemoryEstimate:
    """GPU memory of one worker for the inputs' strategy (pure arithmetic)."""
    zero = {"ddp": 0, "zero1": 1, "zero2": 2}.get(m.strategy, 3)
    frozen_quant = m.quantizable_params if m.quantization != "none" else 0
    weights = m.weight_bytes - frozen_quant * m.quantizable_bytes_each
    weights += frozen_quant * _QUANT_BYTES.get(m.quantization, 0.0)
    grads = float(m.trainable_bytes)
    if zero == 0:
        optimizer = 2.0 * m.trainable_bytes  # torch AdamW: exp_avg + exp_avg_sq at the param dtype
        if m.workers > 1:
            grads *= 2  # DDP's gradient buckets hold a second copy
    else:
        optimizer = (12.0 if m.mixed_precision else 8.0) * m.trainable_params
    host = 0.0
    if zero >= 1:
        optimizer /= m.workers
    if zero >= 2:
        grads /= m.workers
    if zero == 3:
        weights /= m.workers
    if m.strategy.startswith("zero3-offload"):
        host, optimizer = optimizer, 0.0
    if m.strategy == "zero3-offload-all":  # partitioned weights in host memory too
        host, weights = host + weights, 0.0
    total = weights + grads + optimizer + m.activation_bytes + OVERHEAD_BYTES
    return MemoryEstimate(
        weights=round(weights / GIB, 2),
        gradients=round(grads / GIB, 2),
        optimizer=round(optimizer / GIB, 2),
        activations=round(m.activation_bytes / GIB, 2),
        overhead=round(OVERHEAD_BYTES / GIB, 2),
        total=round(total / GIB, 2),
        host_offload=round(host / GIB, 2),
    )


# --- the plan ------------------------------------------------------------------------------------
def recipe_strategy(recipe: Recipe) -> Strategy:
    """The recipe's strategy in this module's names (ddp, zero1..3, zero3-offload)."""
    train = recipe.train
    if train.strategy == "ddp":
        return "ddp"
    stage, ds = train.deepspeed.zero_stage, train.deepspeed
    offload_param = getattr(ds, "offload_param", False)
    if ds.offload_optimizer or offload_param:
        if stage != 3:
            raise ConfigError(
                f"eyeops plan models CPU offload with ZeRO-3 only (train.deepspeed.zero_stage is {stage})"
            )
        return "zero3-offload-all" if offload_param else "zero3-offload"
    return f"zero{stage}"  # type: ignore[return-value]


def gpu_memory(recipe: Recipe, override: float | None = None) -> float | None:
    """GiB per GPU of the pool: the override, the recipe's, the settings', or the accelerator table."""
    from eyeops.config import get_settings

    for value in (override, recipe.train.gpu_memory_gib, get_settings().gpu_memory_gib):
        if value is not None:
            return float(value)
    kind = recipe.train.accelerator_type
    if kind is None:
        return None
    if kind not in GPU_MEMORY_GIB:
        raise ConfigError(
            f"train.accelerator_type {kind!r}: unknown GPU memory (known: {', '.join(GPU_MEMORY_GIB)}); "
            "set train.gpu_memory_gib or EYEOPS_GPU_MEMORY_GIB"
        )
    return GPU_MEMORY_GIB[kind]


def _precision(recipe: Recipe) -> tuple[str, int, bool]:
    """(weights dtype, activation bytes, mixed precision) as the loop would run on a GPU."""
    dtype = getattr(recipe.model, "dtype", "float32")
    wanted = recipe.train.mixed_precision
    mixed = wanted in ("bf16", "fp16") or (wanted == "auto" and recipe.train.use_gpu)
    act = 2 if mixed or dtype != "float32" else 4
    return dtype, act, mixed


def plan(
    recipe: Recipe,
    *,
    configs: Mapping[str, Any] | None = None,
    gpu_memory_gib: float | None = None,
    count: ParamCount | None = None,
) -> Plan:
    """Parameters, trainable parameters per stage and GPU memory per worker for ``recipe``."""
    count = count or count_parameters(recipe, configs)
    spec, train = recipe.model, recipe.train
    strategy = recipe_strategy(recipe)
    dtype, act, mixed = _precision(recipe)
    quant = getattr(spec, "quantization", "none")
    ckpt = bool(getattr(spec, "gradient_checkpointing", False))
    seq = getattr(spec, "max_seq_len", None)
    eager = getattr(spec, "attn_implementation", "sdpa") == "eager"
    notes = list(count.notes)

    def estimate(stage: str, strat: Strategy, checkpointing: bool) -> MemoryEstimate:
        acts = 0
        if count.lm is not None and seq:
            acts = activation_bytes(
                count.lm,
                batch=train.batch_size,
                seq=seq,
                act_bytes=act,
                checkpointing=checkpointing,
                eager_attention=eager,
            )
        return memory_per_worker(
            MemoryInputs(
                total_params=count.total,
                weight_bytes=count.weight_bytes,
                trainable_params=count.trainable[stage],
                trainable_bytes=count.trainable_bytes[stage],
                quantizable_params=count.quantizable,
                quantizable_bytes_each=count.weight_bytes / max(count.total, 1),
                quantization=quant,
                strategy=strat,
                workers=train.num_workers,
                mixed_precision=mixed,
                activation_bytes=acts,
            )
        )

    stages = [
        StagePlan(name=s, trainable=n, memory=estimate(s, strategy, ckpt)) for s, n in count.trainable.items()
    ]
    peak = max((s.memory for s in stages), key=lambda m: m.total)
    by_strategy = {
        strat: {
            key: max(estimate(s, strat, flag).total for s in count.trainable)
            for key, flag in (("checkpointing", True), ("no_checkpointing", False))
        }
        for strat in STRATEGIES
    }
    if count.lm is None:
        notes.append("no language model: activations not estimated (a CNN's are small beside its batch)")
    capacity = gpu_memory(recipe, gpu_memory_gib) if train.use_gpu else None
    if train.use_gpu and capacity is None:
        notes.append("train.accelerator_type not set: the fit is not checked")
    if not train.use_gpu:
        notes.append("train.use_gpu is false: figures are what each worker would need on a GPU")
    return Plan(
        recipe=recipe.name,
        family=recipe.family,
        params=count.total,
        stages=stages,
        strategy=strategy,
        workers=train.num_workers,
        precision=f"{dtype} weights, {'bf16/fp16' if mixed else 'fp32'} compute"
        + (f", QLoRA {quant}" if quant != "none" else ""),
        max_seq_len=seq,
        batch_size=train.batch_size,
        gradient_checkpointing=ckpt,
        accelerator_type=train.accelerator_type,
        gpu_memory_gib=capacity,
        peak=peak,
        by_strategy=by_strategy,
        fits=None if capacity is None else peak.total <= capacity,
        notes=notes,
    )


def require_fit(result: Plan) -> Plan:
    """``result`` when it fits the pool's GPU (or none is named); else :class:`PlanError`."""
    if result.fits is not False:
        return result
    worst = max(result.stages, key=lambda s: s.memory.total)
    m = worst.memory
    better = [s for s, v in result.by_strategy.items() if v["checkpointing"] <= (result.gpu_memory_gib or 0)]
    hint = (
        f"strategies that fit with gradient checkpointing: {', '.join(better)}"
        if better
        else (
            "no strategy fits at this batch size: lower train.batch_size or model.max_seq_len, or use QLoRA"
        )
    )
    raise PlanError(
        f"recipe {result.recipe!r} does not fit train.accelerator_type {result.accelerator_type!r} "
        f"({result.gpu_memory_gib:g} GiB per GPU): stage {worst.name!r} needs {m.total:g} GiB per worker "
        f"with {result.strategy} on {result.workers} worker(s) (weights {m.weights:g}, gradients "
        f"{m.gradients:g}, optimizer {m.optimizer:g}, activations {m.activations:g}, overhead "
        f"{m.overhead:g}); {hint}"
    )


def preflight(recipe: Recipe, configs: Mapping[str, Any] | None = None) -> Plan | None:
    """The train step's check: refuse a GPU plan that cannot fit before any worker starts.

    CPU recipes and GPU recipes without an accelerator type pass without building anything.
    """
    if not recipe.train.use_gpu or gpu_memory(recipe) is None:
        return None
    return require_fit(plan(recipe, configs=configs))


def fmt_params(n: int) -> str:
    """1234567 -> '1.23M'."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)
