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

from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from eyeops.errors import NotFoundError
from eyeops.families import ChatFamily, EvalContext, EvalOutput
from eyeops.models.common.calibration import fit_calibration, reference_rows
from eyeops.models.common.connectors import tokens_per_view
from eyeops.models.common.processing import (
    VLMDataset,
    VLMProcessor,
    collate,
    open_image,
)
from eyeops.models.common.stages import stages_of, train_only, trains, unwrap, write_model_dir
from eyeops.models.common.towers import tower_geometry
from eyeops.models.vlm.inference import VLMPredictor, pooled_features
from eyeops.models.vlm.modeling import (
    DEFAULT_TASKS,
    META_FILE,
    RECIPE_FILE,
    WEIGHTS_FILE,
    EyeVLM,
    _processor,
    _spec,
    _state_keys,
    _tokenizer,
    build_vlm,
    group_parameter_names,
)
from eyeops.models.vlm.native import (
    NativeVLMPredictor,
    build_native,
    collate_native,
    load_image_processor,
    native_processor,
)
from eyeops.recipes import Recipe, StageSpec, load_saved_recipe


# --- the family ----------------------------------------------------------------------------------
class VLMFamily(ChatFamily):
    """The :class:`eyeops.families.Family` for ``model.family: vlm``."""

    name = "vlm"
    capabilities = VLMPredictor.capabilities

    def build_model(self, recipe: Recipe) -> nn.Module:
        spec = _spec(recipe)
        if spec.backbone == "native":
            return build_native(spec, lora=trains(recipe, "lora"))
        return build_vlm(recipe, _tokenizer(spec))

    def apply_stage(self, model: nn.Module, stage: StageSpec) -> None:
        vlm = unwrap(model, nn.Module)
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
        if spec.backbone == "native":
            return native_processor(spec, tokenizer)
        geometry = tower_geometry(spec.vision)
        return _processor(
            spec, tokenizer, geometry.mean, geometry.std, tokens_per_view(spec.connector, geometry)
        )

    def collate_fn(self, recipe: Recipe) -> Callable[[list[Any]], Mapping[str, Any]]:
        spec = _spec(recipe)
        pad_id = int(_tokenizer(spec).pad_token_id)
        return partial(collate_native if spec.backbone == "native" else collate, pad_id=pad_id)

    def loss(self, model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        return model(**batch, answer_logits_only=True).loss

    def save(self, model: nn.Module, recipe: Recipe, out_dir: Path) -> None:
        """Weights of every group a stage trained, plus whatever cannot be rebuilt from a reference."""
        vlm, spec = unwrap(model, nn.Module), _spec(recipe)
        stages = stages_of(recipe)
        groups = {g for s in stages for g in s.trainable}
        if spec.llm_config is not None:  # a randomly initialised LM is not reproducible from a name
            groups.add("all" if spec.backbone == "native" else "llm")
        if spec.vision.random_init and spec.backbone == "llava":
            groups.add("vision")
        keys = _state_keys(vlm, groups)
        state = {k: v.detach().contiguous().cpu() for k, v in vlm.state_dict().items() if k in keys}
        meta = {"groups": sorted(groups), "tensors": len(state)}
        out = write_model_dir(out_dir, recipe, state, (WEIGHTS_FILE, RECIPE_FILE, META_FILE), meta)
        _tokenizer(spec).save_pretrained(str(out / "tokenizer"))
        if spec.backbone == "native":  # the image processor travels with the model (offline reload)
            load_image_processor(spec.llm).save_pretrained(str(out / "tokenizer"))

    def load(self, model_dir: Path, device: str = "cpu") -> VLMPredictor | NativeVLMPredictor:
        if _spec(load_saved_recipe(Path(model_dir) / RECIPE_FILE)).backbone == "native":
            return NativeVLMPredictor.from_dir(Path(model_dir), device=device)
        return VLMPredictor.from_dir(Path(model_dir), device=device)

    def calibrate(self, model: nn.Module, recipe: Recipe, data_dir: Path, out_dir: Path) -> None:
        """The OOD screen on the tower's pooled features: neighbours from 'train' images, threshold
        from 'val' images (backbone llava; a native backbone's answers carry no verdict yet)."""
        spec = _spec(recipe)
        if spec.backbone == "native" or not spec.ood.enabled:
            return
        from eyeops.data.store import load_samples

        found: dict[str, dict[str, None]] = {"train": {}, "val": {}}  # ordered sets of image paths
        for sample in load_samples(data_dir):
            if str(sample.split) in found:
                found[str(sample.split)].update(dict.fromkeys(sample.images))
        paths = {split: list(rels) for split, rels in found.items()}
        if len(paths["train"]) < 2:
            return  # a text-only dataset: nothing to compare images with
        rows = reference_rows(len(paths["train"]), spec.ood.max_reference, recipe.train.seed)
        train = [paths["train"][int(i)] for i in rows]  # only the screen's neighbours are embedded
        vlm, processor = unwrap(model, EyeVLM), self.processor(recipe, _tokenizer(spec))

        def features(rels: list[str]) -> torch.Tensor | None:
            if not rels:
                return None
            return pooled_features(vlm, processor, (open_image(Path(data_dir) / r, where=r) for r in rels))

        calibrator = fit_calibration(
            ood=spec.ood,
            temperature_mode="none",  # a generated answer has no per-label logits to scale
            train_features=features(train),
            val_features=features(paths["val"]),
            seed=recipe.train.seed,
        )
        calibrator.save(Path(out_dir))

    def evaluate(self, ctx: EvalContext) -> EvalOutput:
        """The evaluation runner's hook: Eyecare-Bench style metrics and tables (see ``vlm_eval``)."""
        from eyeops.models.common.vqa_eval import evaluate_vlm

        return evaluate_vlm(ctx)


FAMILY = VLMFamily()
