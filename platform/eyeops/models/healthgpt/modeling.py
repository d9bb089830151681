"""HealthGPT: the model (tower, per-task connectors, LM with H-LoRA and VQ token rows), building, groups."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from eyeops.data.image_pairs import GENERATION_PROMPTS, GENERATION_TASKS
from eyeops.errors import ConfigError, InvalidRequest
from eyeops.models.common.connectors import Connector, build_connector
from eyeops.models.common.hlora import apply_hlora, route_tasks
from eyeops.models.common.language_model import build_language_model
from eyeops.models.common.processing import IMAGE_TOKEN_ID, VLMProcessor
from eyeops.models.common.specs import ResolutionSpec
from eyeops.models.common.stages import check_group
from eyeops.models.common.towers import VisionTower, build_tower, tower_geometry
from eyeops.models.common.vq import VQModel, current_vq
from eyeops.models.healthgpt.spec import HealthGPTModel
from eyeops.recipes import Recipe

TASKS = ("comprehension", "generation")  # the H-LoRA adapters, chosen per row by the hard router
# What a request may name: every generation task runs the generation adapter; "generation" follows
# the request's own prompt, the others use the prompt their training samples had.
SERVED_TASKS = ("comprehension", "generation", *GENERATION_TASKS)
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
PIXEL_NEWLINE = "<pixel_newline>"  # in the seed's vocabulary (so its embeddings import); never emitted
GENERATE_PROMPT = GENERATION_PROMPTS["reconstruction"]
WEIGHTS_FILE, VQ_FILE, RECIPE_FILE, META_FILE = (
    "healthgpt.safetensors",
    "vq.safetensors",
    "recipe.yaml",
    "healthgpt.json",
)


def index_token(i: int) -> str:
    return f"<idx_{i}>"


def _image_vocab(spec: HealthGPTModel) -> list[str]:
    """``<start_index>``, ``<idx_0..K-1>``, ``<end_index>``: the tokens an image answer is made of."""
    return [START, *(index_token(i) for i in range(spec.vq.codebook_size)), END]


def _added_tokens(spec: HealthGPTModel) -> list[str]:
    """What the LLM's vocabulary grows by, in the seed's order (its released embedding rows line
    up with ours)."""
    return [*_image_vocab(spec), PIXEL_NEWLINE]


def adapter_of(task: str) -> str:
    """The H-LoRA adapter (and vision layer) a served task runs through."""
    if task not in SERVED_TASKS:
        raise InvalidRequest(f"unknown task {task!r} for healthgpt (known: {', '.join(SERVED_TASKS)})")
    return "comprehension" if task == "comprehension" else "generation"


def _spec(recipe: Recipe) -> HealthGPTModel:
    if not isinstance(recipe.model, HealthGPTModel):
        raise ConfigError(f"recipe {recipe.name!r} has model.family {recipe.family!r}, not 'healthgpt'")
    return recipe.model


def _tokenizer(spec: HealthGPTModel) -> Any:
    """The LLM's tokenizer plus the image tokens and ``<pixel_newline>`` (:func:`_added_tokens`)."""
    from eyeops.models.common.hub import load_tokenizer

    tokenizer = load_tokenizer(spec.llm)
    tokenizer.add_tokens(_added_tokens(spec), special_tokens=True)
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
    base_vocab = len(tokenizer) - len(_added_tokens(spec))
    lm = build_language_model(spec, base_vocab)
    _add_token_rows(lm, len(tokenizer))
    lm.config.use_cache = False
    lm = apply_hlora(lm, {task: spec.hlora[task] for task in TASKS})
    dim = lm.get_input_embeddings().embedding_dim
    connectors = {
        task: build_connector(
            spec.connector.model_copy(update={"select_layer": spec.feature_layers[task]}), tower, dim
        )
        for task in TASKS
    }
    tower.truncate(max(layer for c in connectors.values() for layer in c.layers) + 1)
    if vq is None:
        vq = current_vq(spec.vq, seed=recipe.train.seed)
    ids = tokenizer.convert_tokens_to_ids(_image_vocab(spec))
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


# --- parameter groups ----------------------------------------------------------------------------
def group_parameter_names(model: HealthGPT, group: str) -> set[str]:
    check_group("healthgpt", group, GROUPS)
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
