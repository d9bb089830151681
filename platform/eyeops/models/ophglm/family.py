"""OphGLM recipe: fundus-classifier image embedding + BERT [CLS] text embedding -> fusion MLP ->
LLM prefix tokens.

- Image: the fundus classifier's timm backbone (pooled pre-logits features). Step 1 *is* the
  fundus-classifier recipe: ``model.image_checkpoint`` reuses a trained one (a saved classifier
  directory or ``models:/<name>@<alias>``); without it the ``image_encoder`` stage trains the
  backbone + multi-label head here on the dataset's classify samples (BCE).
- Text: a BERT encoder's [CLS] vector of the user's question (offline: the packaged
  all-MiniLM-L6-v2), frozen.
- Fusion: ``Linear -> GELU -> Linear`` from [image; text] to ``prefix_tokens`` LLM embeddings,
  placed where the prompt's ``<image>`` is (text-only dialogue has no prefix).
- Stages (groups for ``StageSpec.trainable``): ``image_encoder`` (step 1), ``fusion`` (step 2,
  VQA), ``lora`` (step 3, SFT on image-text and text-only dialogue), ``llm``, ``all``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from eyeops.errors import ConfigError, NotFoundError
from eyeops.families import ChatFamily, EvalContext, EvalOutput
from eyeops.models.classifier.family import classify_items
from eyeops.models.classifier.modeling import FundusTransform
from eyeops.models.common.processing import VLMProcessor, collate, open_image
from eyeops.models.common.stages import read_model_dir, stages_of, train_only, unwrap, write_model_dir
from eyeops.models.ophglm.inference import OphGLMPredictor
from eyeops.models.ophglm.modeling import (
    META_FILE,
    RECIPE_FILE,
    VQA_TASKS,
    WEIGHTS_FILE,
    OphGLM,
    _bert_tokenizer,
    _llm_tokenizer,
    _processor,
    _spec,
    build_ophglm,
    group_parameter_names,
    question_text,
)
from eyeops.recipes import Recipe, StageSpec


# --- data ----------------------------------------------------------------------------------------
class _ClassifyItems(Dataset):
    def __init__(self, root: Path, items: list[tuple[str, list[int]]], size: int, crop: bool) -> None:
        self.root, self.items, self.transform = Path(root), items, FundusTransform(size, circular_crop=crop)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rel, labels = self.items[i]
        image = open_image(self.root / rel, where=f"image {rel}")
        return {"cls_pixels": self.transform(image), "cls_labels": torch.tensor(labels, dtype=torch.float32)}


class _DialogueItems(Dataset):
    def __init__(self, root: Path, samples: list[Any], processor: VLMProcessor, bert_tok: Any) -> None:
        self.root, self.samples, self.processor, self.bert_tok = Path(root), samples, processor, bert_tok

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, list[int]]:
        s = self.samples[i]
        images = [open_image(self.root / rel, where=f"sample {s.id!r}") for rel in s.images]
        encoded = self.processor.encode(s.messages, s.answer or "", images, where=f"sample {s.id!r}")
        return encoded, self.bert_tok(question_text(s.messages), truncation=True, max_length=128)["input_ids"]


def collate_any(batch: Sequence[Any], pad_id: int, bert_pad: int) -> dict[str, Any]:
    if isinstance(batch[0], dict):
        return {k: torch.stack([b[k] for b in batch]) for k in ("cls_pixels", "cls_labels")}
    out = collate([e for e, _ in batch], pad_id)
    out.pop("image_plans")
    width = max(len(ids) for _, ids in batch)
    out["bert_ids"] = torch.full((len(batch), width), bert_pad, dtype=torch.long)
    out["bert_mask"] = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (_, ids) in enumerate(batch):
        out["bert_ids"][i, : len(ids)], out["bert_mask"][i, : len(ids)] = torch.tensor(ids), 1
    return out


class OphGLMFamily(ChatFamily):
    """The :class:`eyeops.families.Family` for ``model.family: ophglm``."""

    name = "ophglm"
    capabilities = OphGLMPredictor.capabilities

    def labels(self, recipe: Recipe) -> list[str]:
        return list(_spec(recipe).image_encoder.labels)

    def build_model(self, recipe: Recipe) -> OphGLM:
        return build_ophglm(recipe)

    def apply_stage(self, model: nn.Module, stage: StageSpec) -> None:
        og = unwrap(model, OphGLM)
        train_only(og, stage, lambda group: group_parameter_names(og, group))

    def datasets(self, recipe: Recipe, data_dir: Path, stage: StageSpec | None = None) -> dict[str, Dataset]:
        """Stages training ``image_encoder`` read classify samples; the others VQA and dialogue."""
        from eyeops.data.store import load_samples

        spec = _spec(recipe)
        if stage is not None and "image_encoder" in stage.trainable:
            items = classify_items(Path(data_dir), list(spec.image_encoder.labels))
            return {
                s: _ClassifyItems(
                    Path(data_dir), rows, spec.image_encoder.image_size, spec.image_encoder.circular_crop
                )
                for s, rows in items.items()
            }
        tasks = {str(t) for t in stage.data_tasks} if stage and stage.data_tasks else set(VQA_TASKS)
        by_split: dict[str, list] = {}
        for s in load_samples(data_dir):
            if str(s.task) in tasks and s.answer and s.split is not None and len(s.images) <= 1:
                by_split.setdefault(str(s.split), []).append(s)
        if not by_split.get("train"):
            raise NotFoundError(f"{data_dir}: no training samples of tasks {sorted(tasks)} with an answer")
        processor, bert_tok = _processor(spec, _llm_tokenizer(spec)), _bert_tokenizer(spec)
        return {s: _DialogueItems(Path(data_dir), rows, processor, bert_tok) for s, rows in by_split.items()}

    def collate_fn(self, recipe: Recipe) -> Callable[[list[Any]], Mapping[str, Any]]:
        spec = _spec(recipe)
        pad, bert_pad = int(_llm_tokenizer(spec).pad_token_id), int(_bert_tokenizer(spec).pad_token_id)
        return lambda batch: collate_any(batch, pad, bert_pad)

    def loss(self, model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        return model(**batch).loss

    def save(self, model: nn.Module, recipe: Recipe, out_dir: Path) -> None:
        og, spec = unwrap(model, OphGLM), _spec(recipe)
        groups = {g for s in stages_of(recipe) for g in s.trainable} | {"fusion"}
        if spec.llm_config is not None:
            groups.add("llm")
        keys = set().union(*(group_parameter_names(og, g) for g in groups))
        if "image_encoder" in groups or "all" in groups:
            keys |= {k for k in og.state_dict() if k.startswith("classifier.")}  # BatchNorm statistics too
        state = {k: v.detach().contiguous().cpu() for k, v in og.state_dict().items() if k in keys}
        meta = {"groups": sorted(groups), "tensors": len(state)}
        write_model_dir(out_dir, recipe, state, (WEIGHTS_FILE, RECIPE_FILE, META_FILE), meta)

    def load(self, model_dir: Path, device: str = "cpu") -> OphGLMPredictor:
        from safetensors.torch import load_file

        model_dir, recipe = read_model_dir(model_dir, "ophglm", (WEIGHTS_FILE, RECIPE_FILE))
        model = build_ophglm(recipe)
        result = model.load_state_dict(load_file(str(model_dir / WEIGHTS_FILE)), strict=False)
        if result.unexpected_keys:
            raise ConfigError(
                f"{model_dir}: saved tensors do not fit the model, e.g. {result.unexpected_keys[0]!r}"
            )
        return OphGLMPredictor(recipe, model, device)

    def evaluate(self, ctx: EvalContext) -> EvalOutput:
        """Closed QA, open QA and reports scored like the VLM family (Eyecare-Bench style)."""
        from eyeops.models.common.vqa_eval import evaluate_vlm

        return evaluate_vlm(ctx)


FAMILY = OphGLMFamily()
