"""Recipe schema: what to train, how, how to judge it, and how to serve it.

A recipe is a YAML file: a shipped one by name (``recipes/`` in the checkout, package data
``eyeops/builtin_recipes`` when installed) or any path. It is validated strictly (unknown keys and bad values
are rejected with the offending key path) before any work starts. ``model`` is a discriminated
union on ``family``, assembled from the spec each family package declares (``models/<family>/spec.py``,
listed in :data:`eyeops.families.FAMILIES`); nothing else branches on names or paths.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import Field, ValidationError, model_validator

from eyeops.data.schema import Task
from eyeops.data.specs import CorpusSpec, EngineSpec
from eyeops.devices import Device, gpus_for
from eyeops.errors import ConfigError, NotFoundError, RecipeError
from eyeops.families import model_specs
from eyeops.models.common.specs import Strict

# The shipped recipes are package data (the checkout's recipes/ links here), so an installed
# eyeops finds them without a source tree.
RECIPES_DIR = Path(__file__).resolve().parent / "builtin_recipes"


# --- data ----------------------------------------------------------------------------------------
Source = Literal[
    "synthetic", "odir", "llava", "mcq", "essay", "alpaca", "raw_dialogue", "corpus", "knowledge",
    "dataset", "mix",
    # benchmarks as published (eyeops.data.importers.BENCHMARKS)
    "medmcqa", "pubmedqa", "medquad", "vqa_rad", "slake", "omnimedvqa", "ophtimus_eval",
    "flashcards", "wikidoc",
]  # fmt: skip


class MixEntry(Strict):
    """One source of a mixed dataset (``data.source: mix``)."""

    source: Source
    path: str | None = Field(None, description="Input file/dir (not used by synthetic / knowledge).")
    n: int | None = Field(None, ge=1, le=1_000_000, description="Synthetic: images (default data.n).")
    tasks: list[Task] | None = Field(None, description="Tasks to materialise (default data.tasks).")
    filter: list[str] | None = Field(None, description="Benchmark sources: as data.filter.")
    weight: float | None = Field(
        None,
        gt=0,
        description="Share of the mix, relative to the other entries' weights (all entries or none): "
        "records are drawn without repetition, as many as every share allows.",
    )
    max_records: int | None = Field(
        None, ge=1, description="Most records taken from this source (before tasks are derived)."
    )

    @model_validator(mode="after")
    def _check(self) -> MixEntry:
        if self.source in ("mix", "dataset"):
            raise ValueError(f"a mix entry cannot be source {self.source!r}")
        if self.source not in ("synthetic", "knowledge") and not self.path:
            raise ValueError(f"path is required for source {self.source!r}")
        from eyeops.data.importers import BENCHMARKS

        if self.filter is not None and self.source not in BENCHMARKS:
            raise ValueError(f"filter is for benchmark sources, not {self.source!r}")
        return self


class DataSpec(Strict):
    """Where the training data comes from and how it is split."""

    source: Source = Field(
        "synthetic",
        description="Importer to use; 'dataset' reuses an already prepared dataset directory; 'mix' "
        "combines the sources listed under data.mix.",
    )
    path: str | None = Field(None, description="Input file/dir for importers (not used by synthetic).")
    mix: list[MixEntry] = Field(
        default_factory=list, description="source mix: the sources, split by patient across all of them."
    )
    engine: EngineSpec = Field(
        default_factory=EngineSpec, description="How QA / reports / MCQs are written: template or llm."
    )
    corpus: CorpusSpec = Field(default_factory=CorpusSpec, description="source corpus: cleaning and packing.")
    n: int = Field(600, ge=1, le=1_000_000, description="Synthetic: number of images to generate.")
    seed: int = 0
    image_size: int = Field(256, ge=32, le=4096, description="Stored image side in pixels.")
    tasks: list[Task] = Field(default_factory=lambda: [Task.CLASSIFY], description="Tasks to materialise.")
    val_fraction: float = Field(0.15, ge=0.0, lt=0.5)
    test_fraction: float = Field(0.15, ge=0.0, le=1.0, description="< 0.5; 1.0 only with role benchmark.")
    role: Literal["train", "benchmark"] = Field(
        "train", description="benchmark: evaluation-only, the whole source is the test split (no re-split)."
    )
    filter: list[str] | None = Field(
        None,
        description="Benchmark sources: keep rows whose subject/keywords match any term (any case; "
        "'ophthalmology' stands for the eye terms). None: the importer's default (medmcqa: "
        "Ophthalmology; others keep all); []: keep every row.",
    )

    @model_validator(mode="before")
    @classmethod
    def _benchmark_fractions(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("role") == "benchmark":
            data = {"val_fraction": 0.0, "test_fraction": 1.0, **data}
        return data

    @model_validator(mode="after")
    def _check(self) -> DataSpec:
        from eyeops.data.importers import BENCHMARKS

        if self.source not in ("synthetic", "knowledge", "mix") and not self.path:
            raise ValueError(f"data.path is required for source {self.source!r}")
        if (self.source == "mix") != bool(self.mix):
            raise ValueError("data.mix lists the sources of data.source 'mix' (and only then)")
        if self.mix and self.role == "benchmark":
            raise ValueError("a benchmark is one source: role benchmark cannot mix")
        weighted = [e.weight is not None for e in self.mix]
        if any(weighted) and not all(weighted):
            raise ValueError("data.mix: give every entry a weight, or none")
        if self.filter is not None and self.source not in BENCHMARKS:
            raise ValueError(
                f"data.filter is for benchmark sources ({', '.join(BENCHMARKS)}), not {self.source!r}"
            )
        if self.role == "benchmark" and (self.test_fraction != 1.0 or self.val_fraction != 0.0):
            raise ValueError(
                "role benchmark prepares the whole source as the test split: test_fraction must be 1.0 "
                f"and val_fraction 0.0 (got {self.test_fraction} and {self.val_fraction})"
            )
        if self.role == "train" and self.test_fraction >= 0.5:
            raise ValueError(
                f"data.test_fraction must be < 0.5 (got {self.test_fraction}); 1.0 needs role benchmark"
            )
        return self


# --- model: one spec per family, assembled from the family registry ------------------------------
ModelSpec = Annotated[Union[tuple(model_specs())], Field(discriminator="family")]  # noqa: UP007


# --- training ------------------------------------------------------------------------------------
class DeepSpeedSpec(Strict):
    zero_stage: Literal[1, 2, 3] = 2
    offload_optimizer: bool = False
    offload_param: bool = Field(False, description="ZeRO-3 only: keep partitioned weights in CPU memory.")
    overlap_comm: bool = False
    extra: dict[str, Any] = Field(default_factory=dict, description="Merged into the DeepSpeed config.")

    @model_validator(mode="after")
    def _offload_param(self) -> DeepSpeedSpec:
        if self.offload_param and self.zero_stage != 3:
            raise ValueError(f"offload_param needs zero_stage 3 (got {self.zero_stage})")
        return self


class StageSpec(Strict):
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


class TrainSpec(Strict):
    num_workers: int = Field(2, ge=1, le=1024)
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = Field(default_factory=lambda: {"CPU": 1})
    accelerator_type: str | None = Field(None, description="Ray accelerator type, e.g. 'A100' (cluster).")
    gpu_memory_gib: float | None = Field(
        None, gt=0, description="GPU memory per worker for `eyeops plan`; default: by accelerator_type."
    )
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
class JudgeSpec(Strict):
    """An LLM-as-judge through any OpenAI-compatible chat endpoint (``eyeops.evaluate.judge``)."""

    base_url: str = Field(description="API root of the endpoint, e.g. http://judge:8000/v1.")
    model: str = Field(min_length=1, description="Judge model name the endpoint serves.")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY", description="Environment variable holding the API key; null for no key."
    )
    rubric: str | None = Field(None, description="System prompt; null: the built-in 1-5 rubric.")
    max_score: int = Field(5, ge=2, le=100, description="Top of the rubric's 1..N scale.")
    max_items: int | None = Field(None, ge=1, description="Judge at most N answers per task (by id).")
    max_tokens: int = Field(256, ge=1, description="Reply budget of the judge.")
    timeout_s: float = Field(60, gt=0, description="Per-request timeout.")


class EvalSpec(Strict):
    threshold: float = Field(0.5, gt=0, lt=1)
    primary_metric: str = Field("macro_auc", description="Metric the gate compares.")
    split: Literal["val", "test"] = "test"
    max_per_task: int | None = Field(
        None,
        ge=1,
        description="Score at most N samples of each task (the first N by sample id: the same subset "
        "for every candidate, so the gate still compares like with like); bounds generative eval cost.",
    )
    device: Device = Field(
        "auto",
        description="Where evaluation loads the model: auto (the settings' device) | cpu | cuda | cuda:N "
        "| mps. On a cluster, cuda gives the KFP evaluate task the GPU(s) it needs (eyeops.devices).",
    )
    semscore_model: str = Field(
        "sentence-transformers/all-mpnet-base-v2",
        description="SemScore encoder: local dir or hub id (offline cache); when absent the packaged "
        "all-MiniLM-L6-v2 scores and the metric is named semscore_all-MiniLM-L6-v2.",
    )
    bertscore_model: str = Field(
        "roberta-large",
        description="BERTScore encoder (bert-score), resolved like semscore_model; a stand-in names "
        "the metric bertscore_<encoder>.",
    )
    bertscore_layers: int | None = Field(
        None, ge=1, description="BERTScore layer; null: bert-score's tuned layer, else the last."
    )
    judge: JudgeSpec | None = Field(None, description="Optional LLM-as-judge; off when null.")

    @property
    def gpus(self) -> int:
        """GPUs the evaluate task's pod requests (``cuda`` → 1, ``cuda:N`` → N+1, otherwise 0)."""
        return gpus_for(self.device, field="evaluate.device")


class GateSpec(Strict):
    metric: str | None = Field(None, description="Defaults to evaluate.primary_metric.")
    min_margin: float = Field(
        0.0,
        ge=0,
        description="Candidate must beat the champion by at least this, and chance / the base model "
        "by more than this at the lower confidence bound.",
    )
    min_value: float | None = Field(None, description="Absolute floor for the metric.")
    higher_is_better: bool = True
    floors: dict[str, float] = Field(
        default_factory=dict, description="Per-breakdown floors, e.g. {'modality/fundus/macro_auc': 0.8}."
    )
    baseline: bool = Field(
        False,
        description="Candidate must beat the base model's zero-shot score on the same eval split "
        "(computed once per base model x benchmark fingerprint, cached in MLflow).",
    )
    chance: bool = Field(
        False, description="Candidate must beat chance / the majority answer on the gate metric."
    )
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="Two-sided bootstrap interval level.")
    bootstrap_samples: int = Field(1000, ge=100, le=100_000, description="Paired bootstrap resamples.")


class RegisterSpec(Strict):
    model_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    experiment: str | None = None
    gate: GateSpec = Field(default_factory=GateSpec)


class ServeSpec(Strict):
    backend: Literal["local", "kserve", "ray"] = "local"
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(4, gt=0)
    max_batch_size: int = Field(
        16, ge=1, description="Dynamic batching: most images or chat requests per model call."
    )
    batch_wait_timeout_s: float = Field(
        0.01,
        ge=0,
        description="Dynamic batching: how long a partial batch waits for company (the one default: "
        "ServeSettings reads it from here; EYEOPS_BATCH_WAIT_TIMEOUT_S overrides).",
    )
    gpu: int = Field(
        0,
        ge=0,
        description="GPUs per replica (pod limit, Ray num_gpus); omitted with device cuda[:N]: as many "
        "as that device needs.",
    )
    device: Device = Field(
        "auto",
        description="Where replicas load the model: auto (the settings' device; the GPU when the pod has "
        "one) | cpu | cuda | cuda:N | mps (eyeops.devices).",
    )
    upscale_delay_s: float = Field(
        30.0, ge=0, description="Ray Serve: sustained load before adding replicas."
    )
    downscale_delay_s: float = Field(
        600.0, ge=0, description="Ray Serve: idle time before removing replicas."
    )
    runtime: Literal["eyeops", "huggingface"] = Field(
        "eyeops",
        description="KServe runtime: 'eyeops' (the eyeops server: gateway routes, API keys, every "
        "family) or 'huggingface' (KServe's Hugging Face runtime, vLLM backend, serving the merged "
        "export of an llm model; backend kserve, family llm only).",
    )
    max_model_len: int | None = Field(
        None,
        ge=16,
        description="huggingface runtime: context length the server reserves KV cache for "
        "(--max_model_len); default model.max_seq_len.",
    )

    @property
    def gpus(self) -> int:
        """GPUs per replica: ``gpu``, or what ``device`` needs when only it is given."""
        return gpus_for(self.device, self.gpu, field="serve.device")

    @model_validator(mode="before")
    @classmethod
    def _gpus_for_device(cls, data: Any) -> Any:
        # serve.device cuda[:N] without serve.gpu: the pods request the GPUs that device needs.
        if isinstance(data, dict) and "gpu" not in data and isinstance(data.get("device"), str):
            try:
                return {**data, "gpu": gpus_for(data["device"], field="serve.device")}
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return data

    @model_validator(mode="after")
    def _replicas(self) -> ServeSpec:
        try:
            gpus_for(self.device, self.gpu, field="serve.device")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"serve.min_replicas {self.min_replicas} > max_replicas {self.max_replicas}")
        if self.runtime == "huggingface" and self.backend == "ray":
            raise ValueError(
                "serve.runtime 'huggingface' is a KServe runtime: use serve.backend kserve, not ray"
            )
        return self


# pydantic's metaclass derives from ABCMeta, whose ``register`` the ``register`` section shadows on
# the class (instances read the field as intended); the key name is the recipe format's, so keep it.
warnings.filterwarnings("ignore", message='Field name "register" in "Recipe" shadows', category=UserWarning)


class Recipe(Strict):
    """A complete, validated recipe."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    description: str = ""
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec
    train: TrainSpec = Field(default_factory=TrainSpec)
    evaluate: EvalSpec = Field(default_factory=EvalSpec)
    register: RegisterSpec
    serve: ServeSpec = Field(default_factory=ServeSpec)

    @model_validator(mode="after")
    def _serve_runtime(self) -> Recipe:
        # The Hugging Face runtime serves a plain causal LM checkpoint: only llm models export one.
        if self.serve.runtime == "huggingface" and self.family != "llm":
            raise ValueError(
                f"serve.runtime 'huggingface' serves merged causal-LM exports of model.family 'llm' "
                f"only; model.family is {self.family!r} (use serve.runtime: eyeops)"
            )
        return self

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


def load_data_spec(path: str | Path, what: str = "data spec") -> DataSpec:
    """The :class:`DataSpec` in a YAML file: a recipe's ``data:`` section or a bare data mapping."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{what} {path}: cannot read YAML: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("data"), dict):
        data = data["data"]
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path}: expected a mapping (a data spec or a recipe)")
    return DataSpec.model_validate(data)


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RecipeError(f"invalid recipe {path}: not valid YAML: {exc}") from None


def load_saved_recipe(path: str | Path) -> Recipe:
    """The recipe saved beside a model, read with the defaults that model was trained under.

    A field added since the model was saved is filled with the value that reproduces the old
    behaviour, not today's default: ``model.connector.input_norm`` (default on) was off before it
    existed, and the saved weights have no LayerNorms for it. A HealthGPT ``model.hlora`` saved as
    one spec (before specs were per task) serves both tasks, as it did then.
    """
    path = Path(path)
    data = _read_yaml(path)
    model = data.get("model") if isinstance(data, dict) else None
    connector = model.get("connector") if isinstance(model, dict) else None
    if isinstance(connector, dict):  # a malformed file is left to parse_recipe's error
        connector.setdefault("input_norm", False)
    # HealthGPT's 'hlora' was one spec for both tasks before it became per task.
    hlora = model.get("hlora") if isinstance(model, dict) and model.get("family") == "healthgpt" else None
    if isinstance(hlora, dict) and not {"comprehension", "generation"} & set(hlora):
        model["hlora"] = {"comprehension": dict(hlora), "generation": dict(hlora)}
    return parse_recipe(data, origin=str(path))


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
