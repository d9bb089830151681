"""Vision towers for the VLM family: SigLIP / CLIP (transformers) and a timm CNN.

Every tower maps pixels ``[B, 3, S, S]`` to a list of feature *maps* ``[B, C_l, H_l, W_l]``, one per
selectable layer, so the connectors treat ViTs and CNNs alike. Layer 0 is the patch embedding (ViT)
or the stem (CNN); layer ``i`` is the output of block ``i``, like transformers' ``hidden_states``.
Towers keep only the layers a connector reads (:meth:`VisionTower.truncate`): the blocks above
them would cost compute and hold parameters that never receive a gradient (which DDP rejects).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from eyeops.errors import ConfigError

if TYPE_CHECKING:
    from eyeops.models.common.specs import VisionTowerSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_CLIP_MEAN, _CLIP_STD = (0.4815, 0.4578, 0.4082), (0.2686, 0.2613, 0.2758)  # OpenAI CLIP
_SIGLIP_MEAN, _SIGLIP_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # SigLIP: pixels to [-1, 1]


def _resolve(index: int, num_layers: int) -> int:
    resolved = index + num_layers if index < 0 else index
    if not 0 <= resolved < num_layers:
        raise ConfigError(
            f"model.connector: vision layer {index} out of range for a tower with {num_layers} "
            f"layers (0..{num_layers - 1} or -{num_layers}..-1)"
        )
    return resolved


class VisionTower(nn.Module):
    """Common interface: ``forward(pixels) -> list of feature maps`` for layers ``0..num_layers-1``."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def num_layers(self) -> int:
        raise NotImplementedError

    def layer_channels(self) -> list[int]:
        raise NotImplementedError

    def layer_grids(self) -> list[int]:
        """Side of each layer's (square) feature map at ``image_size``."""
        raise NotImplementedError

    def blocks(self) -> list[nn.Module]:
        """The trainable blocks in depth order (for 'vision_last_blocks')."""
        raise NotImplementedError

    def truncate(self, keep_layers: int) -> None:
        """Drop every block above layer ``keep_layers - 1``."""
        raise NotImplementedError

    def resolve_layer(self, index: int) -> int:
        """A layer index (negative counts from the top, like Python) as a non-negative one."""
        return _resolve(index, self.num_layers)


class HFViTTower(VisionTower):
    """SigLIP or CLIP vision transformer from transformers; patch tokens as a square map."""

    def __init__(self, model: nn.Module, *, has_cls: bool) -> None:
        super().__init__()
        self.model = model
        self.has_cls = has_cls
        cfg = model.config
        self.image_size = int(cfg.image_size)
        self.patch_size = int(cfg.patch_size)
        # The pooled head (SigLIP MAP head, CLIP post-norm on CLS) never feeds the LLM.
        self.model.post_layernorm = nn.Identity()
        for module in self.model.modules():  # SigLIP's MAP head: checkpoints with one (so400m) run it
            if hasattr(module, "use_head"):
                module.head, module.use_head = None, False
        self.mean, self.std = (_CLIP_MEAN, _CLIP_STD) if has_cls else (_SIGLIP_MEAN, _SIGLIP_STD)

    @property
    def num_layers(self) -> int:
        return len(self.model.encoder.layers) + 1

    def layer_channels(self) -> list[int]:
        return [int(self.model.config.hidden_size)] * self.num_layers

    def layer_grids(self) -> list[int]:
        return [self.image_size // self.patch_size] * self.num_layers

    def blocks(self) -> list[nn.Module]:
        return list(self.model.encoder.layers)

    def truncate(self, keep_layers: int) -> None:
        self.model.encoder.layers = self.model.encoder.layers[: max(keep_layers - 1, 0)]

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        out = self.model(pixel_values=pixel_values, output_hidden_states=True)
        maps = []
        for hidden in out.hidden_states:
            tokens = hidden[:, 1:] if self.has_cls else hidden
            side = math.isqrt(tokens.shape[1])
            maps.append(tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side))
        return maps


class TimmCNNTower(VisionTower):
    """A timm CNN (EfficientNet family): stem, every block stage, then the 1x1 head conv."""

    def __init__(self, model: nn.Module, image_size: int) -> None:
        super().__init__()
        self.model = model
        self.image_size = image_size
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        self.mean = tuple(cfg.get("mean", IMAGENET_MEAN))
        self.std = tuple(cfg.get("std", IMAGENET_STD))
        self.model.reset_classifier(0)
        self._with_head = True
        with torch.no_grad():  # one dry run at build time tells channels and grids exactly
            maps = self._run(torch.zeros(1, 3, image_size, image_size))
        self._channels = [m.shape[1] for m in maps]
        self._grids = [m.shape[-1] for m in maps]

    @property
    def num_layers(self) -> int:
        return len(self._channels)

    def layer_channels(self) -> list[int]:
        return list(self._channels)

    def layer_grids(self) -> list[int]:
        return list(self._grids)

    def blocks(self) -> list[nn.Module]:
        head = [nn.ModuleList([self.model.conv_head, self.model.bn2])] if self._with_head else []
        return [*self.model.blocks, *head]

    def truncate(self, keep_layers: int) -> None:
        n_blocks = len(self.model.blocks)
        if keep_layers <= n_blocks + 1:  # the head layer is not needed
            self._with_head = False
            self.model.conv_head = nn.Identity()
            self.model.bn2 = nn.Identity()
        self.model.blocks = self.model.blocks[: max(keep_layers - 1, 0)]
        self._channels, self._grids = self._channels[:keep_layers], self._grids[:keep_layers]

    def _run(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.model.bn1(self.model.conv_stem(x))
        maps = [x]
        for block in self.model.blocks:
            x = block(x)
            maps.append(x)
        if self._with_head:
            maps.append(self.model.bn2(self.model.conv_head(x)))
        return maps

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        return self._run(pixel_values)


def _hf_tower(spec: VisionTowerSpec) -> HFViTTower:
    from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

    model_cls, config_cls = {
        "siglip": (SiglipVisionModel, SiglipVisionConfig),
        "clip": (CLIPVisionModel, CLIPVisionConfig),
    }[spec.kind]
    if spec.config:  # tiny or custom architecture: random init from the given config
        extra = {"vision_use_head": False} if spec.kind == "siglip" else {}
        model = model_cls(config_cls(**{**extra, **spec.config}))
    else:
        source = spec.name
        if Path(source).expanduser().is_dir():
            source = str(Path(source).expanduser())
        try:
            model = model_cls.from_pretrained(source)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"model.vision.name {spec.name!r}: cannot load a {spec.kind} vision model "
                f"(a local save_pretrained directory, or a hub id with network access): {exc}"
            ) from None
    return HFViTTower(model, has_cls=spec.kind == "clip")


def _timm_tower(spec: VisionTowerSpec) -> TimmCNNTower:
    # The classifier family owns timm backbones and their weight sources (the packaged ImageNet
    # efficientnet_lite0, timm's download, a local file): reuse it, keep the body, drop the head.
    from eyeops.models.classifier.modeling import build_classifier
    from eyeops.models.classifier.spec import ClassifierModel

    net = build_classifier(ClassifierModel(backbone=spec.name, weights=spec.weights, drop_rate=0.0)).net
    if not all(hasattr(net, a) for a in ("conv_stem", "bn1", "blocks", "conv_head", "bn2")):
        raise ConfigError(
            f"model.vision.name {spec.name!r}: the timm tower supports EfficientNet/MobileNet-style models "
            "(conv_stem, blocks, conv_head)"
        )
    return TimmCNNTower(net, spec.image_size)


@dataclass(frozen=True)
class TowerGeometry:
    """What processing needs to know about a tower without loading its weights."""

    grids: list[int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def resolve_layer(self, index: int) -> int:
        return _resolve(index, len(self.grids))


def tower_geometry(spec: VisionTowerSpec) -> TowerGeometry:
    """Layer grids and normalisation of the recipe's tower, from its config alone (no weights)."""
    if spec.kind == "timm":
        import timm

        try:
            tower = TimmCNNTower(timm.create_model(spec.name, pretrained=False), spec.image_size)
        except RuntimeError as exc:
            raise ConfigError(f"model.vision.name {spec.name!r}: not a timm model: {exc}") from None
        return TowerGeometry(tower.layer_grids(), tower.mean, tower.std)
    from transformers import CLIPVisionConfig, SiglipVisionConfig

    config_cls = SiglipVisionConfig if spec.kind == "siglip" else CLIPVisionConfig
    if spec.config:
        cfg = config_cls(**spec.config)
    else:
        try:
            cfg = config_cls.from_pretrained(spec.name)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"model.vision.name {spec.name!r}: cannot read the {spec.kind} config: {exc}"
            ) from None
    grid = int(cfg.image_size) // int(cfg.patch_size)
    mean, std = (_CLIP_MEAN, _CLIP_STD) if spec.kind == "clip" else (_SIGLIP_MEAN, _SIGLIP_STD)
    return TowerGeometry([grid] * (int(cfg.num_hidden_layers) + 1), mean, std)


def build_tower(spec: VisionTowerSpec) -> VisionTower:
    """A vision tower as the recipe's ``model.vision`` describes it."""
    tower = _timm_tower(spec) if spec.kind == "timm" else _hf_tower(spec)
    if spec.kind != "timm" and spec.image_size != tower.image_size:
        raise ConfigError(
            f"model.vision.image_size {spec.image_size} does not match the {spec.kind} model's "
            f"image_size {tower.image_size}"
        )
    return tower
