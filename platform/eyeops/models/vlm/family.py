"""EyecareGPT recipe: a LLaVA-style vision-language model (vision tower -> connector -> causal LM).

Images become views (a global view, plus AnyRes tiles when enabled), the tower turns each view
into multi-layer feature maps, the connector (``mlp2x_gelu`` or the layer-wise dense connector)
projects them into the LLM's embedding space, and the features replace the ``<image>`` slots of
the prompt inside ``inputs_embeds``. Only the answer is trained on. The LLM is any Hugging Face
causal LM (offline default: the packaged SmolLM2-135M-Instruct), adapted with LoRA via peft.

Parameter groups for ``StageSpec.trainable``: ``connector`` (connector + AnyRes separators),
``lora``, ``vision_last_blocks`` (the last ``model.vision_last_blocks`` tower blocks), ``vision``,
``llm`` (the LM's own weights) and ``all``. Stage 1 (alignment) trains ``connector``; stage 2
(instruction tuning) ``connector`` + ``lora`` (+ ``vision_last_blocks``).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import Dataset

from eyeops.errors import ConfigError, InvalidRequest, NotFoundError
from eyeops.inference import ClassifyResult, GenerationRequest, GenerationResult
from eyeops.models.common.anyres import AnyResMerger, ViewPlan
from eyeops.models.common.connectors import Connector, build_connector, tokens_per_view
from eyeops.models.common.generation import stream_generation
from eyeops.models.common.language_model import add_lora, build_language_model
from eyeops.models.common.processing import (
    IGNORE_INDEX,
    IMAGE_TOKEN_ID,
    VLMDataset,
    VLMProcessor,
    collate,
)
from eyeops.models.common.stages import train_only, trains, unwrap
from eyeops.models.common.towers import VisionTower, build_tower, tower_geometry
from eyeops.models.vlm.spec import VLMModel
from eyeops.recipes import Recipe, StageSpec, load_saved_recipe

GROUPS = ("connector", "lora", "vision_last_blocks", "vision", "llm", "all")
DEFAULT_TASKS = ("closed_qa", "open_qa", "report")
WEIGHTS_FILE = "vlm.safetensors"
RECIPE_FILE = "recipe.yaml"
META_FILE = "vlm.json"
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class EyeVLM(nn.Module):
    """Tower -> connector (-> AnyRes layout) -> features scattered into the LM's input embeddings."""

    def __init__(
        self,
        tower: VisionTower,
        connector: Connector,
        lm: nn.Module,
        *,
        anyres: bool,
        vision_last_blocks: int,
    ) -> None:
        super().__init__()
        self.tower, self.connector, self.lm = tower, connector, lm
        self.merger = AnyResMerger(self.embed_dim) if anyres else None
        self.vision_last_blocks = vision_last_blocks

    @property
    def embed_dim(self) -> int:
        return self.lm.get_input_embeddings().embedding_dim

    @property
    def tokens_per_view(self) -> int:
        return self.connector.num_tokens

    def train(self, mode: bool = True) -> EyeVLM:
        super().train(mode)
        # A frozen tower stays in eval mode: BatchNorm statistics must not drift while it is frozen.
        if not any(p.requires_grad for p in self.tower.parameters()):
            self.tower.eval()
        # Nor those of the frozen blocks below 'vision_last_blocks' when only the top is tuned.
        for module in self.tower.modules():
            if isinstance(module, _BATCH_NORMS) and not any(p.requires_grad for p in module.parameters()):
                module.eval()
        return self

    def image_features(self, pixel_values: torch.Tensor, image_plans: torch.Tensor) -> torch.Tensor:
        """All images' feature sequences, concatenated in order: ``[total image tokens, D]``."""
        if pixel_values.shape[0] == 0:
            return pixel_values.new_zeros(0, self.embed_dim)
        views = self.connector(self.tower(pixel_values))  # [V, T, D]
        plans = [ViewPlan(int(r), int(c)) for r, c in image_plans.tolist()]
        if sum(p.num_views for p in plans) != views.shape[0]:
            raise InvalidRequest(
                f"{views.shape[0]} views for image plans needing {sum(p.num_views for p in plans)}"
            )
        out, start = [], 0
        for plan in plans:
            chunk = views[start : start + plan.num_views]
            start += plan.num_views
            out.append(
                self.merger(chunk, plan) if self.merger is not None else chunk.reshape(-1, chunk.shape[-1])
            )
        return torch.cat(out)

    def embed(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor, image_plans: torch.Tensor
    ) -> torch.Tensor:
        slots = input_ids == IMAGE_TOKEN_ID
        embeds = self.lm.get_input_embeddings()(input_ids.masked_fill(slots, 0))
        features = self.image_features(pixel_values, image_plans).to(embeds.dtype)
        if int(slots.sum()) != features.shape[0]:
            raise InvalidRequest(
                f"{int(slots.sum())} image slots in the prompt but {features.shape[0]} image feature tokens"
            )
        return embeds.masked_scatter(slots.unsqueeze(-1), features)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        image_plans: torch.Tensor,
        labels: torch.Tensor | None = None,
        answer_logits_only: bool = False,
    ) -> Any:
        """The LM's output; ``answer_logits_only`` (training) projects only the labelled positions."""
        embeds = self.embed(input_ids, pixel_values, image_plans)
        if not answer_logits_only or labels is None:
            return self.lm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels)
        # Only the answer is trained on (a few tokens of a long prompt): projecting every position
        # onto the vocabulary would spend about a fifth of a CPU step on logits nobody reads.
        targets = labels[:, 1:]
        keep = torch.cat([targets != IGNORE_INDEX, torch.zeros_like(targets[:, :1], dtype=torch.bool)], 1)
        out = self.lm(
            inputs_embeds=embeds, attention_mask=attention_mask, logits_to_keep=keep, use_cache=False
        )
        out.loss = F.cross_entropy(out.logits.float(), targets[targets != IGNORE_INDEX])
        return out


# --- building ------------------------------------------------------------------------------------
def _spec(recipe: Recipe) -> VLMModel:
    if not isinstance(recipe.model, VLMModel):
        raise ConfigError(f"recipe {recipe.name!r} has model.family {recipe.family!r}, not 'vlm'")
    return recipe.model


def build_vlm(recipe: Recipe, tokenizer: Any) -> EyeVLM:
    """The model with pretrained tower and LM loaded, LoRA attached when any stage trains it."""
    spec = _spec(recipe)
    tower = build_tower(spec.vision)
    lm = build_language_model(spec, len(tokenizer))
    if trains(recipe, "lora"):
        lm = add_lora(lm, spec.lora)
    dim = lm.get_input_embeddings().embedding_dim
    connector = build_connector(spec.connector, tower, dim)
    tower.truncate(max(connector.layers) + 1)
    return EyeVLM(
        tower,
        connector,
        lm,
        anyres=spec.resolution.mode == "anyres",
        vision_last_blocks=spec.vision_last_blocks,
    )


def _processor(spec: VLMModel, tokenizer: Any, mean: tuple, std: tuple, tokens: int) -> VLMProcessor:
    return VLMProcessor(
        tokenizer,
        image_size=spec.vision.image_size,
        mean=mean,
        std=std,
        tokens_per_view=tokens,
        resolution=spec.resolution,
        crop_border=spec.crop_fundus_border,
        max_images=spec.max_images,
        max_seq_len=spec.max_seq_len,
        system_prompt=spec.system_prompt,
    )


def _tokenizer(spec: VLMModel) -> Any:
    from eyeops.models.common.hub import load_tokenizer

    return load_tokenizer(spec.llm)


# --- parameter groups ----------------------------------------------------------------------------
def group_modules(model: EyeVLM, group: str) -> list[nn.Module]:
    """The modules whose every parameter belongs to ``group`` (``lora`` is selected by name instead)."""
    if group == "connector":
        return [model.connector] + ([model.merger] if model.merger is not None else [])
    if group == "vision_last_blocks":
        return model.tower.blocks()[-model.vision_last_blocks :]
    if group == "vision":
        return [model.tower]
    if group == "all":
        return [model]
    return []


def group_parameter_names(model: EyeVLM, group: str) -> set[str]:
    """Fully qualified names of the parameters a trainable group covers."""
    if group not in GROUPS:
        raise ConfigError(
            f"train.stages[].trainable: unknown group {group!r} for family vlm (known: {', '.join(GROUPS)})"
        )
    names = dict(model.named_parameters())
    if group == "lora":
        found = {n for n in names if "lora_" in n}
        if not found:
            raise ConfigError(
                "stage trains 'lora' but the model has no LoRA adapter (no stage listed 'lora' "
                "when it was built)"
            )
        return found
    if group == "llm":
        return {n for n in names if n.startswith("lm.") and "lora_" not in n}
    ids = {id(p) for m in group_modules(model, group) for p in m.parameters()}
    return {n for n, p in names.items() if id(p) in ids}


def _prefixes(model: EyeVLM, modules: list[nn.Module]) -> set[str]:
    """State-dict prefixes of modules; an unregistered container (the timm head pair) by its children."""
    names = {id(m): name for name, m in model.named_modules()}
    out = set()
    for module in modules:
        targets = [module] if id(module) in names else list(module.children())
        out |= {names[id(m)] + "." if names[id(m)] else "" for m in targets}
    return out


def _state_keys(model: EyeVLM, groups: set[str]) -> set[str]:
    """State-dict keys (parameters and buffers) owned by the given groups."""
    keys: set[str] = set()
    state = model.state_dict()
    for group in groups:
        if group in ("lora", "llm"):
            keys |= group_parameter_names(model, group)
        else:
            prefixes = _prefixes(model, group_modules(model, group))
            keys |= {k for k in state if any(k.startswith(p) for p in prefixes)}
    return keys


# --- the family ----------------------------------------------------------------------------------
class VLMFamily:
    name = "vlm"

    def build_model(self, recipe: Recipe) -> EyeVLM:
        return build_vlm(recipe, _tokenizer(_spec(recipe)))

    def apply_stage(self, model: nn.Module, stage: StageSpec) -> None:
        vlm = unwrap(model, EyeVLM)
        train_only(vlm, stage, lambda group: group_parameter_names(vlm, group))

    def datasets(self, recipe: Recipe, data_dir: Path, stage: StageSpec | None = None) -> dict[str, Dataset]:
        spec = _spec(recipe)
        tokenizer = _tokenizer(spec)
        processor = self.processor(recipe, tokenizer)
        tasks = {str(t) for t in (stage.data_tasks if stage and stage.data_tasks else DEFAULT_TASKS)}
        by_split: dict[str, list] = {}
        from eyeops.data.store import load_samples

        for sample in load_samples(data_dir):
            if str(sample.task) in tasks and sample.answer and sample.split is not None:
                by_split.setdefault(str(sample.split), []).append(sample)
        if not by_split.get("train"):
            raise NotFoundError(f"{data_dir}: no training samples of tasks {sorted(tasks)} with an answer")
        return {split: VLMDataset(Path(data_dir), rows, processor) for split, rows in by_split.items()}

    def processor(self, recipe: Recipe, tokenizer: Any) -> VLMProcessor:
        """A processor from the tower's geometry: no weights are loaded to count image tokens."""
        spec = _spec(recipe)
        geometry = tower_geometry(spec.vision)
        return _processor(
            spec, tokenizer, geometry.mean, geometry.std, tokens_per_view(spec.connector, geometry)
        )

    def collate_fn(self, recipe: Recipe) -> Callable[[list[Any]], Mapping[str, Any]]:
        tokenizer = _tokenizer(_spec(recipe))
        return partial(collate, pad_id=int(tokenizer.pad_token_id))

    def loss(self, model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        return model(**batch, answer_logits_only=True).loss

    def save(self, model: nn.Module, recipe: Recipe, out_dir: Path) -> None:
        """Weights of every group a stage trained, plus whatever cannot be rebuilt from a reference."""
        from safetensors.torch import save_file

        vlm, spec = unwrap(model, EyeVLM), _spec(recipe)
        stages = recipe.train.stages or [StageSpec(name="all", trainable=["all"])]
        groups = {g for s in stages for g in s.trainable}
        if spec.llm_config is not None:  # a randomly initialised LM is not reproducible from a name
            groups.add("llm")
        random_tower = (
            spec.vision.config is not None if spec.vision.kind != "timm" else spec.vision.weights == "none"
        )
        if random_tower:
            groups.add("vision")
        keys = _state_keys(vlm, groups)
        state = {k: v.detach().contiguous().cpu() for k, v in vlm.state_dict().items() if k in keys}
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file(state, str(out / WEIGHTS_FILE))
        (out / RECIPE_FILE).write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
        (out / META_FILE).write_text(json.dumps({"groups": sorted(groups), "tensors": len(state)}, indent=2))
        _tokenizer(spec).save_pretrained(str(out / "tokenizer"))

    def load(self, model_dir: Path, device: str = "cpu") -> VLMPredictor:
        return VLMPredictor.from_dir(Path(model_dir), device=device)

    def evaluate(self, ctx: Any) -> Any:
        """The evaluation runner's hook: Eyecare-Bench style metrics and tables (see ``vlm_eval``)."""
        from eyeops.models.common.vqa_eval import evaluate_vlm

        return evaluate_vlm(ctx)


def load_model_dir(model_dir: Path) -> tuple[Recipe, EyeVLM, Any]:
    """Rebuild a saved VLM: the recipe's references, then the saved groups on top."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / WEIGHTS_FILE).is_file() or not (model_dir / RECIPE_FILE).is_file():
        raise NotFoundError(
            f"{model_dir}: not a VLM model directory (needs {WEIGHTS_FILE} and {RECIPE_FILE})"
        )
    recipe = load_saved_recipe(model_dir / RECIPE_FILE)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir / "tokenizer"))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = build_vlm(recipe, tokenizer)
    state = load_file(str(model_dir / WEIGHTS_FILE))
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ConfigError(
            f"{model_dir}: saved tensors do not fit the rebuilt model, e.g. {result.unexpected_keys[0]!r}"
        )
    return recipe, model, tokenizer


# --- inference -----------------------------------------------------------------------------------
class VLMPredictor:
    """:class:`eyeops.inference.InferenceModel` for chat and report generation with images."""

    capabilities = frozenset({"chat", "report"})

    def __init__(self, recipe: Recipe, model: EyeVLM, tokenizer: Any, device: str = "cpu") -> None:
        if hasattr(model.lm, "merge_and_unload"):  # fold LoRA into the weights: plain-speed decoding
            model.lm = model.lm.merge_and_unload()
        self.recipe, self.model, self.tokenizer = recipe, model.to(device).eval(), tokenizer
        self.device = device
        self.processor = _processor(
            _spec(recipe), tokenizer, model.tower.mean, model.tower.std, model.tokens_per_view
        )
        self.labels: list[str] = []
        self._lock = threading.Lock()  # one generate at a time; the batcher groups concurrent calls
        self._eos = self._stop_ids()

    @classmethod
    def from_dir(cls, model_dir: Path, device: str = "cpu") -> VLMPredictor:
        recipe, model, tokenizer = load_model_dir(model_dir)
        return cls(recipe, model, tokenizer, device)

    def _stop_ids(self) -> list[int]:
        ids = self.model.lm.generation_config.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    def classify(self, images: Sequence[Any]) -> list[ClassifyResult]:
        raise InvalidRequest("model family 'vlm' answers chat and report requests, not classify")

    def _inputs(self, requests: Sequence[GenerationRequest]) -> dict[str, torch.Tensor]:
        """Left-padded prompt embeddings for a batch of requests."""
        prompts, pixels, plans = [], [], []
        for request in requests:
            pv, pl = self.processor.pixels(request.images)
            prompts.append(self.processor.prompt_ids(request.messages, pl))
            pixels.append(pv)
            plans.extend(pl)
        width = max(len(p) for p in prompts)
        pad = int(self.tokenizer.pad_token_id)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :], mask[i, width - len(p) :] = torch.tensor(p), 1
        image_plans = torch.tensor([[p.rows, p.cols] for p in plans], dtype=torch.long).view(-1, 2)
        with torch.no_grad():
            embeds = self.model.embed(ids.to(self.device), torch.cat(pixels).to(self.device), image_plans)
        return {"inputs_embeds": embeds, "attention_mask": mask.to(self.device)}

    def _gen_kwargs(self, request: GenerationRequest, max_new_tokens: int) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "pad_token_id": int(self.tokenizer.pad_token_id),
            "eos_token_id": self._eos,
        }
        if request.temperature > 0:
            kwargs.update(do_sample=True, temperature=request.temperature, top_p=request.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Batched KV-cache decoding; requests with different sampling settings run as separate batches."""
        results: dict[int, GenerationResult] = {}
        groups: dict[tuple[float, float], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.temperature, r.top_p), []).append(i)
        for indices in groups.values():
            batch = [requests[i] for i in indices]
            limit = max(r.max_new_tokens for r in batch)
            inputs = self._inputs(batch)
            with self._lock, torch.no_grad():
                out = self.model.lm.generate(**inputs, **self._gen_kwargs(batch[0], limit))
            prompt_tokens = inputs["attention_mask"].sum(1).tolist()
            for row, i in enumerate(indices):
                results[i] = self._result(
                    out[row].tolist(), requests[i].max_new_tokens, int(prompt_tokens[row])
                )
        return [results[i] for i in range(len(requests))]

    def _result(self, tokens: list[int], max_new: int, prompt_tokens: int) -> GenerationResult:
        pad = self.tokenizer.pad_token_id
        new, finish = [], "length"
        for t in tokens[:max_new]:
            if t in self._eos:
                finish = "stop"
                break
            new.append(t)
        while new and new[-1] == pad and pad not in self._eos:
            new.pop()
        text = self.tokenizer.decode(new, skip_special_tokens=True).strip()
        return GenerationResult(
            text=text, prompt_tokens=prompt_tokens, completion_tokens=len(new), finish_reason=finish
        )

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        """Text pieces as they are decoded; joined, they equal ``generate``'s text."""
        inputs = self._inputs([request])

        def run(**streaming: Any) -> None:
            with self._lock, torch.no_grad():
                self.model.lm.generate(
                    **inputs, **self._gen_kwargs(request, request.max_new_tokens), **streaming
                )

        return stream_generation(self.tokenizer, run, thread_name="eyeops-vlm-stream")


FAMILY = VLMFamily()
