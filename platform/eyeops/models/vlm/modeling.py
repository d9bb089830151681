"""eye-vlm: the model (tower -> connector -> LM, AnyRes merger), how it is built, its parameter groups."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from eyeops.errors import ConfigError, InvalidRequest
from eyeops.models.common.anyres import AnyResMerger, ViewPlan
from eyeops.models.common.calibration import stage_means
from eyeops.models.common.connectors import Connector, build_connector
from eyeops.models.common.language_model import add_lora, build_language_model
from eyeops.models.common.processing import (
    IGNORE_INDEX,
    IMAGE_TOKEN_ID,
    VLMProcessor,
)
from eyeops.models.common.stages import check_group, trains
from eyeops.models.common.towers import VisionTower, build_tower
from eyeops.models.vlm.spec import VLMModel
from eyeops.recipes import Recipe

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

    def pooled_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[V, features]``: every kept tower layer's channel means (what the OOD screen compares)."""
        return stage_means(self.tower(pixel_values))

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


def group_parameter_names(model: nn.Module, group: str) -> set[str]:
    """Fully qualified names of the parameters a trainable group covers (either backbone)."""
    check_group("vlm", group, GROUPS)
    if not isinstance(model, EyeVLM):
        from eyeops.models.vlm.native import native_group_names

        return native_group_names(model, group)
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


def _state_keys(model: nn.Module, groups: set[str]) -> set[str]:
    """State-dict keys (parameters and buffers) owned by the given groups."""
    if not isinstance(model, EyeVLM):  # native backbone: its buffers are rebuilt from the config
        return set().union(*(group_parameter_names(model, g) for g in groups))
    keys: set[str] = set()
    state = model.state_dict()
    for group in groups:
        if group in ("lora", "llm"):
            keys |= group_parameter_names(model, group)
        else:
            prefixes = _prefixes(model, group_modules(model, group))
            keys |= {k for k in state if any(k.startswith(p) for p in prefixes)}
    return keys
