"""HealthGPT recipe: an LVLM with H-LoRA task adapters and image generation through VQ tokens.

Reuses the VLM family's towers, connectors and processing. What is new:

- two tasks, ``comprehension`` and ``generation``, each with its own H-LoRA adapter set on every
  LLM Linear (:mod:`eyeops.models.common.hlora`) and its own vision feature layer (a connector per task:
  comprehension reads the penultimate layer, generation a shallow one);
- a VQ image tokenizer (:mod:`eyeops.models.common.vq`) and the tokens ``<start_index> <idx_0> …
  <idx_{K-1}> <end_index>`` added to the tokenizer, their embeddings initialised to the mean of
  the existing ones. The generation task answers with one image's ``grid²`` code tokens, decoded
  to a PNG (:attr:`GenerationResult.images_png`); decoding is constrained to that grammar, so every
  answer is a valid image;
- rows of one batch may belong to different tasks (:func:`~eyeops.models.common.hlora.route_tasks`), so
  one replica serves concurrent requests of both tasks without switching or reloading.

Parameter groups (``StageSpec.trainable``): ``connector``, ``hlora`` (both tasks),
``hlora_comprehension``, ``hlora_generation``, ``embeddings``, ``lm_head``, ``vision``, ``llm``,
``all``. The recipe's three stages: alignment (connector + hlora), H-LoRA plugin adaptation
(hlora + embeddings + lm_head), task-specific instruction tuning (hlora + connector).
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
import yaml
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from eyeops.errors import ConfigError, InvalidRequest, NotFoundError
from eyeops.inference import ClassifyResult, GenerationRequest, GenerationResult
from eyeops.models.common.connectors import Connector, build_connector
from eyeops.models.common.hlora import apply_hlora, route_tasks
from eyeops.models.common.language_model import build_language_model
from eyeops.models.common.processing import IMAGE_TOKEN_ID, VLMProcessor, collate, open_image
from eyeops.models.common.specs import ResolutionSpec
from eyeops.models.common.stages import train_only, unwrap
from eyeops.models.common.towers import VisionTower, build_tower, tower_geometry
from eyeops.models.common.vq import VQModel, build_vq, image_tokens, to_images, to_pixels, tokens_to_png
from eyeops.models.healthgpt.spec import HealthGPTModel
from eyeops.recipes import Recipe, StageSpec, load_saved_recipe

TASKS = ("comprehension", "generation")
GROUPS = (
    "connector",
    "hlora",
    "hlora_comprehension",
    "hlora_generation",
    "embeddings",
    "lm_head",
    "vision",
    "llm",
    "all",
)
COMPREHENSION_DATA = ("closed_qa", "open_qa", "report")
START, END = "<start_index>", "<end_index>"
GENERATE_PROMPT = "<image>\nReconstruct this fundus photograph as an image."
WEIGHTS_FILE, VQ_FILE, RECIPE_FILE, META_FILE = (
    "healthgpt.safetensors",
    "vq.safetensors",
    "recipe.yaml",
    "healthgpt.json",
)


def index_token(i: int) -> str:
    return f"<idx_{i}>"


def _spec(recipe: Recipe) -> HealthGPTModel:
    if not isinstance(recipe.model, HealthGPTModel):
        raise ConfigError(f"recipe {recipe.name!r} has model.family {recipe.family!r}, not 'healthgpt'")
    return recipe.model


def _tokenizer(spec: HealthGPTModel) -> Any:
    """The LLM's tokenizer plus ``<start_index>``, ``<idx_0..K-1>``, ``<end_index>``."""
    from eyeops.models.common.hub import load_tokenizer

    tokenizer = load_tokenizer(spec.llm)
    tokenizer.add_tokens(
        [START, *(index_token(i) for i in range(spec.vq.codebook_size)), END], special_tokens=True
    )
    return tokenizer


class HealthGPT(nn.Module):
    """Tower -> per-task connector -> features in the LLM's input embeddings; H-LoRA per task; VQ."""

    def __init__(
        self,
        tower: VisionTower,
        connectors: dict[str, Connector],
        lm: nn.Module,
        vq: VQModel,
        *,
        image_token_ids: list[int],
    ) -> None:
        super().__init__()
        self.tower, self.connectors, self.lm = tower, nn.ModuleDict(connectors), lm
        self.vq = vq.requires_grad_(False)
        self.image_token_ids = image_token_ids  # [start, idx_0 .. idx_{K-1}, end]

    def train(self, mode: bool = True) -> HealthGPT:
        super().train(mode)
        self.vq.eval()  # a fixed tokenizer: its EMA codebook must not move
        if not any(p.requires_grad for p in self.tower.parameters()):
            self.tower.eval()
        return self

    def embed(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor, image_tasks: Sequence[str]
    ) -> torch.Tensor:
        """Token embeddings with each image's features (from its task's connector) in its slots."""
        slots = input_ids == IMAGE_TOKEN_ID
        embeds = self.lm.get_input_embeddings()(input_ids.masked_fill(slots, 0))
        if pixel_values.shape[0] == 0:
            return embeds
        maps = self.tower(pixel_values)
        feats = None
        for task, connector in self.connectors.items():
            out = connector(maps)  # every connector runs: each takes part in the graph (DDP)
            mask = torch.tensor([t == task for t in image_tasks], dtype=out.dtype, device=out.device)
            part = out * mask.view(-1, 1, 1)
            feats = part if feats is None else feats + part
        feats = feats.reshape(-1, feats.shape[-1]).to(embeds.dtype)
        if int(slots.sum()) != feats.shape[0]:
            raise InvalidRequest(f"{int(slots.sum())} image slots but {feats.shape[0]} image feature tokens")
        return embeds.masked_scatter(slots.unsqueeze(-1), feats)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        tasks: Sequence[str],
        labels: torch.Tensor | None = None,
        **_: Any,
    ) -> Any:
        image_tasks = [
            t for t, n in zip(tasks, _images_per_row(input_ids, self), strict=True) for _ in range(n)
        ]
        embeds = self.embed(input_ids, pixel_values, image_tasks)
        with route_tasks(self.lm, tasks):
            return self.lm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels)


def _images_per_row(input_ids: torch.Tensor, model: HealthGPT) -> list[int]:
    per_view = next(iter(model.connectors.values())).num_tokens  # single view per image
    return [int(n) // per_view for n in (input_ids == IMAGE_TOKEN_ID).sum(1).tolist()]


# --- building ------------------------------------------------------------------------------------
def _add_token_rows(lm: nn.Module, vocab: int) -> None:
    """Grow the vocabulary; new input/output rows start at the mean of the existing rows."""
    old = lm.get_input_embeddings().weight.shape[0]
    lm.resize_token_embeddings(vocab, mean_resizing=False)
    with torch.no_grad():
        for emb in {
            id(e): e for e in (lm.get_input_embeddings(), lm.get_output_embeddings()) if e is not None
        }.values():
            emb.weight[old:] = emb.weight[:old].mean(0)


def build_healthgpt(recipe: Recipe, tokenizer: Any, vq: VQModel | None = None) -> HealthGPT:
    """Tower, one connector per task, the LLM grown by the image tokens with H-LoRA per task, VQ."""
    spec = _spec(recipe)
    tower = build_tower(spec.vision)
    base_vocab = len(tokenizer) - spec.vq.codebook_size - 2
    lm = build_language_model(spec, base_vocab)
    _add_token_rows(lm, len(tokenizer))
    lm.config.use_cache = False
    lm = apply_hlora(lm, spec.hlora, TASKS)
    dim = lm.get_input_embeddings().embedding_dim
    connectors = {
        task: build_connector(
            spec.connector.model_copy(update={"select_layer": spec.feature_layers[task]}), tower, dim
        )
        for task in TASKS
    }
    tower.truncate(max(layer for c in connectors.values() for layer in c.layers) + 1)
    if vq is None:
        vq, _ = build_vq(spec.vq, seed=recipe.train.seed)
    ids = tokenizer.convert_tokens_to_ids(
        [START, *(index_token(i) for i in range(spec.vq.codebook_size)), END]
    )
    return HealthGPT(tower, connectors, lm, vq, image_token_ids=ids)


def _processor(spec: HealthGPTModel, tokenizer: Any) -> VLMProcessor:
    geometry = tower_geometry(spec.vision)
    grid = spec.connector.grid or geometry.grids[geometry.resolve_layer(spec.feature_layers["comprehension"])]
    return VLMProcessor(
        tokenizer,
        image_size=spec.vision.image_size,
        mean=geometry.mean,
        std=geometry.std,
        tokens_per_view=grid * grid,
        resolution=ResolutionSpec(mode="single"),
        crop_border=spec.crop_fundus_border,
        max_images=1,
        max_seq_len=spec.max_seq_len,
        system_prompt=spec.system_prompt,
    )


# --- data ----------------------------------------------------------------------------------------
class HealthGPTDataset(Dataset):
    """(task, sample) pairs: comprehension answers text, generation answers the image's VQ tokens."""

    def __init__(
        self, root: Path, items: list[tuple[str, Any]], processor: VLMProcessor, vq: VQModel
    ) -> None:
        self.root, self.items, self.processor, self.vq = Path(root), items, processor, vq

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[str, Any]:
        task, sample = self.items[index]
        where = f"sample {sample.id!r}"
        images = [open_image(self.root / rel, where=where) for rel in sample.images]
        if task == "generation":
            from eyeops.data.schema import Message

            answer = image_answer(image_tokens(self.vq, images[0]))
            return task, self.processor.encode(
                [Message(role="user", content=GENERATE_PROMPT)], answer, images[:1], where=where
            )
        return task, self.processor.encode(sample.messages, sample.answer or "", images, where=where)


def image_answer(tokens: Sequence[int]) -> str:
    return START + "".join(index_token(t) for t in tokens) + END


def collate_tasks(batch: Sequence[tuple[str, Any]], pad_id: int) -> dict[str, Any]:
    out: dict[str, Any] = collate([e for _, e in batch], pad_id)
    out.pop("image_plans")
    out["tasks"] = [t for t, _ in batch]
    return out


# --- parameter groups ----------------------------------------------------------------------------
def group_parameter_names(model: HealthGPT, group: str) -> set[str]:
    if group not in GROUPS:
        raise ConfigError(
            f"train.stages[].trainable: unknown group {group!r} for family healthgpt "
            f"(known: {', '.join(GROUPS)})"
        )
    names = dict(model.named_parameters())
    if group == "all":
        return {n for n in names if not n.startswith("vq.")}
    if group == "hlora":
        return {n for n in names if "lora_" in n}
    if group.startswith("hlora_"):
        task = group.removeprefix("hlora_")
        return {n for n in names if "lora_" in n and f".{task}." in n}
    if group == "llm":
        return {n for n in names if n.startswith("lm.") and "lora_" not in n}
    if group in ("embeddings", "lm_head"):
        emb = model.lm.get_input_embeddings() if group == "embeddings" else model.lm.get_output_embeddings()
        ids = {id(p) for p in emb.parameters()}
        return {n for n, p in names.items() if id(p) in ids}
    prefix = {"connector": "connectors.", "vision": "tower."}[group]
    return {n for n in names if n.startswith(prefix)}


class HealthGPTFamily:
    name = "healthgpt"

    def build_model(self, recipe: Recipe) -> HealthGPT:
        return build_healthgpt(recipe, _tokenizer(_spec(recipe)))

    def apply_stage(self, model: nn.Module, stage: StageSpec) -> None:
        hg = unwrap(model, HealthGPT)
        trainable = train_only(hg, stage, lambda group: group_parameter_names(hg, group))
        if not trainable:
            raise ConfigError(f"stage {stage.name!r}: trainable {stage.trainable} selects no parameters")

    def datasets(self, recipe: Recipe, data_dir: Path, stage: StageSpec | None = None) -> dict[str, Dataset]:
        """Comprehension: QA/report samples; generation: one item per distinct image (all splits)."""
        from eyeops.data.store import load_samples

        spec = _spec(recipe)
        wanted = {str(t) for t in stage.data_tasks} if stage and stage.data_tasks else set()
        vq, _ = build_vq(spec.vq, seed=recipe.train.seed)
        by_split: dict[str, list[tuple[str, Any]]] = {}
        seen: set[str] = set()
        for s in load_samples(data_dir):
            if s.split is None or not s.images:
                continue
            split = str(s.split)
            if str(s.task) in COMPREHENSION_DATA and s.answer and (not wanted or str(s.task) in wanted):
                by_split.setdefault(split, []).append(("comprehension", s))
            if (not wanted or "generate_image" in wanted) and s.images[0] not in seen:
                seen.add(s.images[0])
                by_split.setdefault(split, []).append(("generation", s))
        if not by_split.get("train"):
            raise NotFoundError(
                f"{data_dir}: no training samples for healthgpt (data_tasks {sorted(wanted)})"
            )
        processor = _processor(spec, _tokenizer(spec))
        return {
            split: HealthGPTDataset(Path(data_dir), rows, processor, vq) for split, rows in by_split.items()
        }

    def collate_fn(self, recipe: Recipe) -> Callable[[list[Any]], Mapping[str, Any]]:
        return partial(collate_tasks, pad_id=int(_tokenizer(_spec(recipe)).pad_token_id))

    def loss(self, model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        return model(**batch).loss

    def save(self, model: nn.Module, recipe: Recipe, out_dir: Path) -> None:
        """Trained groups + what cannot be rebuilt from references; the VQ; never merged weights."""
        from safetensors.torch import save_file

        hg, spec = unwrap(model, HealthGPT), _spec(recipe)
        stages = recipe.train.stages or [StageSpec(name="all", trainable=["all"])]
        groups = {g for s in stages for g in s.trainable} | {"hlora", "embeddings", "lm_head", "connector"}
        if spec.llm_config is not None:
            groups.add("llm")
        if (spec.vision.config is not None) if spec.vision.kind != "timm" else spec.vision.weights == "none":
            groups.add("vision")
        keys = set().union(*(group_parameter_names(hg, g) for g in groups))
        keys |= {k for k in hg.state_dict() if k.startswith(("tower.", "connectors.")) and "vision" in groups}
        state = {k: v.detach().contiguous().cpu() for k, v in hg.state_dict().items() if k in keys}
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file(state, str(out / WEIGHTS_FILE))
        save_file({k: v.contiguous().cpu() for k, v in hg.vq.state_dict().items()}, str(out / VQ_FILE))
        (out / RECIPE_FILE).write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
        _, vq_report = build_vq(spec.vq, seed=recipe.train.seed)
        (out / META_FILE).write_text(
            json.dumps(
                {
                    "groups": sorted(groups),
                    "format": "base+hlora-adapters",
                    "vq": vq_report,
                    "tasks": list(TASKS),
                },
                indent=2,
            )
        )
        _tokenizer(spec).save_pretrained(str(out / "tokenizer"))

    def load(self, model_dir: Path, device: str = "cpu") -> HealthGPTPredictor:
        return HealthGPTPredictor.from_dir(Path(model_dir), device=device)

    def evaluate(self, ctx: Any) -> Any:
        """Comprehension as the VLM family scores it, plus generation PSNR against each input image."""
        from eyeops.models.common.vqa_eval import evaluate_vlm

        out = evaluate_vlm(ctx)
        return out.model_copy(update={"metrics": {**out.metrics, **generation_metrics(ctx)}})


def generation_metrics(ctx: Any, limit: int = 4) -> dict[str, float]:
    """Mean PSNR of generated images vs their inputs, and of the tokenizer's own round trip."""
    from eyeops.data.schema import Message
    from eyeops.models.common.vq import psnr

    paths = list(dict.fromkeys(p for images in ctx.samples["images"] for p in list(images)))[:limit]
    if not paths:
        return {}
    model: HealthGPTPredictor = ctx.model
    size = model.model.vq.spec.image_size
    generated, tokenizer_only = [], []
    for rel in paths:
        image = open_image(Path(ctx.data_dir) / rel, where=f"image {rel}")
        request = GenerationRequest(
            messages=[Message(role="user", content=GENERATE_PROMPT)], images=[image], task="generation"
        )
        png = model.generate([request])[0].images_png[0]
        reference = to_pixels([image], size)
        generated.append(psnr(reference, to_pixels([Image.open(io.BytesIO(png))], size)))
        tokenizer_only.append(psnr(reference, to_pixels([model.reconstruct(image)], size)))
    return {
        "generation/psnr_db": sum(generated) / len(generated),
        "generation/vq_psnr_db": sum(tokenizer_only) / len(tokenizer_only),
        "generation/n": float(len(paths)),
    }


def load_model_dir(model_dir: Path) -> tuple[Recipe, HealthGPT, Any]:
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    for name in (WEIGHTS_FILE, VQ_FILE, RECIPE_FILE):
        if not (model_dir / name).is_file():
            raise NotFoundError(f"{model_dir}: not a healthgpt model directory ({name} missing)")
    recipe = load_saved_recipe(model_dir / RECIPE_FILE)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir / "tokenizer"))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    vq = VQModel(_spec(recipe).vq)
    vq.load_state_dict(load_file(str(model_dir / VQ_FILE)))
    model = build_healthgpt(recipe, tokenizer, vq=vq)
    result = model.load_state_dict(load_file(str(model_dir / WEIGHTS_FILE)), strict=False)
    if result.unexpected_keys:
        raise ConfigError(
            f"{model_dir}: saved tensors do not fit the rebuilt model, e.g. {result.unexpected_keys[0]!r}"
        )
    return recipe, model, tokenizer


# --- inference -----------------------------------------------------------------------------------
class HealthGPTPredictor:
    """InferenceModel: chat/report (comprehension) and image generation, task chosen per request."""

    capabilities = frozenset({"chat", "report", "generate_image"})
    # what each H-LoRA task answers; the gateway selects one per request (model suffix / eyeops_task)
    tasks = MappingProxyType({"comprehension": "chat", "generation": "generate_image"})
    default_task = "comprehension"

    def __init__(self, recipe: Recipe, model: HealthGPT, tokenizer: Any, device: str = "cpu") -> None:
        self.recipe, self.model, self.tokenizer, self.device = (
            recipe,
            model.to(device).eval(),
            tokenizer,
            device,
        )
        self.model.lm.config.use_cache = True
        self.processor = _processor(_spec(recipe), tokenizer)
        self.labels: list[str] = []
        self._lock = threading.Lock()  # torch modules are not re-entrant; tasks need no switching
        ids = model.lm.generation_config.eos_token_id
        self._eos = [ids] if isinstance(ids, int) else list(ids or [])
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in self._eos:
            self._eos.append(tokenizer.eos_token_id)

    @classmethod
    def from_dir(cls, model_dir: Path, device: str = "cpu") -> HealthGPTPredictor:
        return cls(*load_model_dir(model_dir), device=device)

    def classify(self, images: Sequence[Image.Image]) -> list[ClassifyResult]:
        raise InvalidRequest("model family 'healthgpt' answers chat and image generation, not classify")

    @staticmethod
    def task_of(request: GenerationRequest) -> str:
        task = request.task or "comprehension"
        if task not in TASKS:
            raise InvalidRequest(f"unknown task {task!r} for healthgpt (known: {', '.join(TASKS)})")
        return task

    def _inputs(self, requests: Sequence[GenerationRequest], tasks: Sequence[str]) -> dict[str, Any]:
        prompts, pixels, image_tasks = [], [], []
        for request, task in zip(requests, tasks, strict=True):
            if task == "generation" and len(request.images) != 1:
                raise InvalidRequest(
                    f"the generation task takes exactly one input image, got {len(request.images)}"
                )
            pv, plans = self.processor.pixels(request.images)
            prompts.append(self.processor.prompt_ids(request.messages, plans))
            pixels.append(pv)
            image_tasks += [task] * len(plans)
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), int(self.tokenizer.pad_token_id), dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :], mask[i, width - len(p) :] = torch.tensor(p), 1
        with torch.no_grad():
            embeds = self.model.embed(ids.to(self.device), torch.cat(pixels).to(self.device), image_tasks)
        return {"inputs_embeds": embeds, "attention_mask": mask.to(self.device)}

    def _image_grammar(self, row_tasks: Sequence[str]) -> Callable[[int, torch.Tensor], list[int]]:
        """Generation rows: <start_index>, exactly grid² <idx_i>, <end_index>; other rows unconstrained."""
        start, *idx, end = self.model.image_token_ids
        n, everything = self.model.vq.num_tokens, list(range(len(self.tokenizer)))

        def allowed(row: int, generated: torch.Tensor) -> list[int]:
            if row_tasks[row] != "generation":
                return everything
            k = generated.shape[-1]
            return [start] if k == 0 else idx if k <= n else [end]

        return allowed

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Requests are grouped by sampling settings; tasks mix freely inside a batch."""
        tasks = [self.task_of(r) for r in requests]
        groups: dict[tuple[float, float], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.temperature, r.top_p), []).append(i)
        results: dict[int, GenerationResult] = {}
        for indices in groups.values():
            batch, row_tasks = [requests[i] for i in indices], [tasks[i] for i in indices]
            limit = max(
                self.model.vq.num_tokens + 2 if t == "generation" else r.max_new_tokens
                for r, t in zip(batch, row_tasks, strict=True)
            )
            inputs = self._inputs(batch, row_tasks)
            with self._lock, torch.no_grad(), route_tasks(self.model.lm, row_tasks):
                out = self.model.lm.generate(
                    **inputs,
                    **self._sampling(batch[0], limit),
                    prefix_allowed_tokens_fn=self._image_grammar(row_tasks)
                    if "generation" in row_tasks
                    else None,
                )
            prompt_tokens = inputs["attention_mask"].sum(1).tolist()
            for row, i in enumerate(indices):
                results[i] = self._result(
                    out[row].tolist(), requests[i], row_tasks[row], int(prompt_tokens[row])
                )
        return [results[i] for i in range(len(requests))]

    def _sampling(self, request: GenerationRequest, limit: int) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": limit,
            "pad_token_id": int(self.tokenizer.pad_token_id),
            "eos_token_id": self._eos,
        }
        if request.temperature > 0:
            return {**kwargs, "do_sample": True, "temperature": request.temperature, "top_p": request.top_p}
        return {**kwargs, "do_sample": False, "temperature": None, "top_p": None, "top_k": None}

    def _result(
        self, tokens: list[int], request: GenerationRequest, task: str, prompt: int
    ) -> GenerationResult:
        if task == "generation":
            code_of = {tid: i for i, tid in enumerate(self.model.image_token_ids[1:-1])}
            codes = [code_of[t] for t in tokens if t in code_of][: self.model.vq.num_tokens]
            png = tokens_to_png(self.model.vq, codes)
            side = self.model.vq.spec.image_size
            return GenerationResult(
                text=f"Generated fundus image ({side}x{side} px).",
                prompt_tokens=prompt,
                completion_tokens=len(codes) + 2,
                images_png=[png],
            )
        new, finish = [], "length"
        for t in tokens[: request.max_new_tokens]:
            if t in self._eos:
                finish = "stop"
                break
            new.append(t)
        text = self.tokenizer.decode(new, skip_special_tokens=True).strip()
        return GenerationResult(
            text=text, prompt_tokens=prompt, completion_tokens=len(new), finish_reason=finish
        )

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        """Comprehension text as one piece per finished generation (images cannot be streamed)."""
        if self.task_of(request) == "generation":
            raise InvalidRequest("the generation task returns an image: request it without streaming")
        yield self.generate([request])[0].text

    def reconstruct(self, image: Image.Image) -> Image.Image:
        """The VQ tokenizer's own round trip (what a perfect generation answer decodes to)."""
        with torch.no_grad():
            recon, _, _ = self.model.vq(to_pixels([image], self.model.vq.spec.image_size).to(self.device))
        return to_images(recon)[0]


FAMILY = HealthGPTFamily()
