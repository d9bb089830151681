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

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from eyeops.errors import ConfigError, NotFoundError
from eyeops.families import ChatFamily, EvalContext, EvalOutput
from eyeops.models.common.processing import VLMProcessor, collate, open_image
from eyeops.models.common.stages import stages_of, train_only, unwrap, write_model_dir
from eyeops.models.common.vq import VQModel, build_vq, dataset_vq, image_tokens
from eyeops.models.healthgpt.evaluation import generation_metrics
from eyeops.models.healthgpt.inference import HealthGPTPredictor
from eyeops.models.healthgpt.modeling import (
    COMPREHENSION_DATA,
    END,
    GENERATE_PROMPT,
    META_FILE,
    RECIPE_FILE,
    START,
    TASKS,
    VQ_FILE,
    WEIGHTS_FILE,
    HealthGPT,
    _processor,
    _spec,
    _tokenizer,
    build_healthgpt,
    group_parameter_names,
    index_token,
)
from eyeops.recipes import Recipe, StageSpec


# --- data ---------------------------------------------------------------------------------------
class HealthGPTDataset(Dataset):
    """(adapter, sample) pairs: comprehension answers text, generation the target image's VQ tokens."""

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

            if sample.target_image:  # a generate_image sample: its own prompt, input(s) and target
                target = open_image(self.root / sample.target_image, where=where)
                messages = sample.messages
            else:  # an image of a comprehension sample: reconstruct it
                target, images = images[0], images[:1]
                messages = [Message(role="user", content=GENERATE_PROMPT)]
            answer = image_answer(image_tokens(self.vq, target))
            return task, self.processor.encode(
                messages, answer, images, where=where, modality=sample.modality
            )
        return task, self.processor.encode(
            sample.messages, sample.answer or "", images, where=where, modality=sample.modality
        )


def image_answer(tokens: Sequence[int]) -> str:
    return START + "".join(index_token(t) for t in tokens) + END


def collate_tasks(batch: Sequence[tuple[str, Any]], pad_id: int) -> dict[str, Any]:
    out: dict[str, Any] = collate([e for _, e in batch], pad_id)
    out.pop("image_plans")
    out["tasks"] = [t for t, _ in batch]
    return out


class HealthGPTFamily(ChatFamily):
    """The :class:`eyeops.families.Family` for ``model.family: healthgpt``."""

    name = "healthgpt"
    capabilities = HealthGPTPredictor.capabilities

    def build_model(self, recipe: Recipe) -> HealthGPT:
        return build_healthgpt(recipe, _tokenizer(_spec(recipe)))

    def apply_stage(self, model: nn.Module, stage: StageSpec) -> None:
        hg = unwrap(model, HealthGPT)
        trainable = train_only(hg, stage, lambda group: group_parameter_names(hg, group))
        if not trainable:
            raise ConfigError(f"stage {stage.name!r}: trainable {stage.trainable} selects no parameters")

    def datasets(self, recipe: Recipe, data_dir: Path, stage: StageSpec | None = None) -> dict[str, Dataset]:
        """Comprehension: QA/report samples; generation: generate_image samples with their target
        images, or, when the dataset has none, one reconstruction per distinct image.

        The VQ tokenizer comes from ``vq.checkpoint`` or is trained on this dataset's images.
        """
        from eyeops.data.store import load_samples

        spec = _spec(recipe)
        wanted = {str(t) for t in stage.data_tasks} if stage and stage.data_tasks else set()
        generate = not wanted or "generate_image" in wanted
        vq, _ = dataset_vq(spec.vq, data_dir, seed=recipe.train.seed)
        samples = [s for s in load_samples(data_dir) if s.split is not None]
        paired = any(s.target_image for s in samples)
        by_split: dict[str, list[tuple[str, Any]]] = {}
        seen: set[str] = set()
        for s in samples:
            split = str(s.split)
            if (
                s.images
                and str(s.task) in COMPREHENSION_DATA
                and s.answer
                and (not wanted or str(s.task) in wanted)
            ):
                by_split.setdefault(split, []).append(("comprehension", s))
            if not generate:
                continue
            if s.target_image:
                by_split.setdefault(split, []).append(("generation", s))
            elif not paired and s.images and s.images[0] not in seen:
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
        stages = stages_of(recipe)
        groups = {g for s in stages for g in s.trainable} | {"hlora", "embeddings", "lm_head", "connector"}
        if spec.llm_config is not None:
            groups.add("llm")
        if spec.vision.random_init:
            groups.add("vision")
        keys = set().union(*(group_parameter_names(hg, g) for g in groups))
        keys |= {k for k in hg.state_dict() if k.startswith(("tower.", "connectors.")) and "vision" in groups}
        state = {k: v.detach().contiguous().cpu() for k, v in hg.state_dict().items() if k in keys}
        # The tokenizer this run's data trained (datasets() caches it), or the checkpoint's.
        vq, vq_report = build_vq(spec.vq, seed=recipe.train.seed)
        hg.vq.load_state_dict(vq.state_dict())
        meta = {
            "groups": sorted(groups),
            "format": "base+hlora-adapters",
            "vq": vq_report,
            "tasks": list(TASKS),
        }
        out = write_model_dir(out_dir, recipe, state, (WEIGHTS_FILE, RECIPE_FILE, META_FILE), meta)
        save_file({k: v.contiguous().cpu() for k, v in hg.vq.state_dict().items()}, str(out / VQ_FILE))
        _tokenizer(spec).save_pretrained(str(out / "tokenizer"))

    def load(self, model_dir: Path, device: str = "cpu") -> HealthGPTPredictor:
        return HealthGPTPredictor.from_dir(Path(model_dir), device=device)

    def evaluate(self, ctx: EvalContext) -> EvalOutput:
        """Comprehension as the VLM family scores it; every generation task by PSNR / SSIM / MSE."""
        from eyeops.models.common.vqa_eval import evaluate_vlm

        out = evaluate_vlm(ctx)
        metrics, tables, artifacts = generation_metrics(ctx)
        return out.model_copy(
            update={
                "metrics": {**out.metrics, **metrics},
                "tables": {**out.tables, **tables},
                "artifacts": {**out.artifacts, **artifacts},
            }
        )


FAMILY = HealthGPTFamily()
