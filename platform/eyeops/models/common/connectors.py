"""Connectors: vision-tower feature maps -> a sequence of LLM-embedding-sized tokens.

- ``mlp2x_gelu`` (LLaVA-1.5 / HealthGPT): one tower layer, ``Linear -> GELU -> Linear``.
- ``ldc``, the layer-wise dense connector (EyecareGPT, after the Dense Connector's channel
  integration): the mean of several low-level layers (a *fine* map: edges, micro-lesions), the mean
  of several high-level layers (a *coarse*, semantic map) and the last selected layer are brought to
  one grid, concatenated along channels, then projected by the same two-layer MLP. Layers whose
  channel counts differ (CNN stages) are concatenated instead of averaged.

Both may compress the token count by pooling the map to ``grid x grid`` (avg or max) before
projection. Layer indices and pooling come from the recipe (``model.connector``).

With ``input_norm`` (default) every selected layer's tokens pass their own LayerNorm before they
are averaged or concatenated, as InternVL's projector normalises its (pixel-shuffled) input: CNN
stages differ ~10x in scale, so unnormalised the loudest stage drowns the others, and the MLP's
output lands far from the LLM's word-embedding norm (measured ~13 vs ~3.2 on eye-vlm).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from eyeops.errors import ConfigError

if TYPE_CHECKING:
    from eyeops.models.common.specs import ConnectorSpec
    from eyeops.models.common.towers import TowerGeometry, VisionTower


def _mlp2x_gelu(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


def _to_grid(feature: torch.Tensor, grid: int, pool: str) -> torch.Tensor:
    """Resample a ``[B, C, H, W]`` map to ``grid x grid``: pool when larger, interpolate when smaller."""
    if feature.shape[-1] == grid and feature.shape[-2] == grid:
        return feature
    if feature.shape[-1] >= grid:
        fn = F.adaptive_max_pool2d if pool == "max" else F.adaptive_avg_pool2d
        return fn(feature, grid)
    return F.interpolate(feature, size=(grid, grid), mode="bilinear", align_corners=False)


class Connector(nn.Module):
    """Selects tower layers, fuses them and projects the tokens to the LLM width."""

    def __init__(
        self,
        *,
        kind: str,
        groups: list[list[int]],
        mean_flags: list[bool],
        group_channels: list[int],
        grid: int,
        pool: str,
        out_dim: int,
        norm_channels: list[list[int]] | None = None,
    ) -> None:
        super().__init__()
        self.kind, self.groups, self.mean_flags = kind, groups, mean_flags
        self.grid, self.pool = grid, pool
        # One LayerNorm per selected layer (per group position): each layer has its own scale.
        self.norms = (
            nn.ModuleList(nn.ModuleList(nn.LayerNorm(c) for c in chans) for chans in norm_channels)
            if norm_channels is not None
            else None
        )
        self.proj = _mlp2x_gelu(sum(group_channels), out_dim)

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    @property
    def layers(self) -> list[int]:
        return sorted({i for group in self.groups for i in group})

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """``maps``: the tower's per-layer maps; returns ``[B, grid*grid, out_dim]``."""
        fused = []
        for g, (group, mean) in enumerate(zip(self.groups, self.mean_flags, strict=True)):
            # [B, C, H, W] -> [B, grid*grid, C] tokens, normalised per layer before fusing.
            parts = [_to_grid(maps[i], self.grid, self.pool).flatten(2).transpose(1, 2) for i in group]
            if self.norms is not None:
                parts = [norm(part) for norm, part in zip(self.norms[g], parts, strict=True)]
            fused.append(torch.stack(parts).mean(0) if mean else torch.cat(parts, dim=-1))
        return self.proj(torch.cat(fused, dim=-1))

    @classmethod
    def from_spec(cls, spec: ConnectorSpec, tower: VisionTower, out_dim: int) -> Connector:
        """Build from ``model.connector``; layer indices are checked against the tower."""
        last = tower.resolve_layer(spec.select_layer)
        if spec.type == "mlp2x_gelu":
            groups = [[last]]
        else:
            low = [tower.resolve_layer(i) for i in spec.low_layers]
            high = [tower.resolve_layer(i) for i in spec.high_layers]
            if not low or not high:
                raise ConfigError("model.connector: type 'ldc' needs non-empty low_layers and high_layers")
            if max(low) >= min(high):
                raise ConfigError(
                    f"model.connector: low_layers {spec.low_layers} must all lie below high_layers "
                    f"{spec.high_layers}"
                )
            groups = [low, high, [last]]
        channels = tower.layer_channels()
        grids = tower.layer_grids()
        grid = spec.grid or grids[last]
        mean_flags, group_channels = [], []
        for group in groups:
            chans = [channels[i] for i in group]
            same = len(set(chans)) == 1
            mean_flags.append(same)
            group_channels.append(chans[0] if same else sum(chans))
        return cls(
            kind=spec.type,
            groups=groups,
            mean_flags=mean_flags,
            group_channels=group_channels,
            grid=grid,
            pool=spec.pool,
            out_dim=out_dim,
            norm_channels=[[channels[i] for i in group] for group in groups] if spec.input_norm else None,
        )


def tokens_per_view(spec: ConnectorSpec, geometry: TowerGeometry) -> int:
    """Connector output tokens per view, from the tower geometry alone (no weights loaded)."""
    return (spec.grid or geometry.grids[geometry.resolve_layer(spec.select_layer)]) ** 2


def build_connector(spec: ConnectorSpec, tower: VisionTower, out_dim: int) -> Connector:
    """The recipe's connector for ``tower``, projecting to the LLM hidden size ``out_dim``."""
    return Connector.from_spec(spec, tower, out_dim)
