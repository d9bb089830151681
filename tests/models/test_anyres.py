"""AnyRes: best-fit grid choice, view cutting, token layout with learned separators."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from eyeops.errors import ConfigError
from eyeops.models.common.anyres import (
    GLOBAL_ONLY,
    AnyResMerger,
    ViewPlan,
    make_views,
    select_grid,
    to_tensor,
)

GRIDS = [(1, 1), (1, 2), (2, 1), (2, 2), (1, 3), (3, 1)]


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((1411, 1411), (2, 2)),  # a full-resolution fundus photograph: as many tiles as allowed
        ((1000, 300), (1, 3)),  # a wide OCT B-scan: one row
        ((300, 1000), (3, 1)),  # a tall UBM slice: one column
        ((100, 100), (1, 1)),  # a small crop: upscaling gains nothing, so the least waste wins
    ],
)
def test_select_grid_fits_aspect_and_resolution(size, expected):
    assert select_grid(*size, GRIDS, tile_size=224, max_tiles=4) == expected


def test_select_grid_respects_max_tiles_and_rejects_bad_input():
    # A square image gains nothing from a 1x2 canvas (same kept pixels, more padding): 1x1 wins.
    assert select_grid(1411, 1411, GRIDS, tile_size=224, max_tiles=2) == (1, 1)
    assert select_grid(1411, 700, GRIDS, tile_size=224, max_tiles=2) == (1, 2)
    with pytest.raises(ConfigError, match="no candidate grid"):
        select_grid(100, 100, [(3, 3)], tile_size=224, max_tiles=4)
    with pytest.raises(ConfigError, match="0x5"):
        select_grid(0, 5, GRIDS, tile_size=224, max_tiles=4)


def test_views_global_first_then_tiles_row_major():
    image = Image.new("RGB", (200, 100), (0, 0, 0))
    image.paste((255, 0, 0), (0, 0, 100, 100))  # left half red, right half black
    views = make_views(image, ViewPlan(1, 2), tile_size=32)
    assert len(views) == 3 and all(v.size == (32, 32) for v in views)
    assert views[1].getpixel((16, 16))[0] > 200 and views[2].getpixel((16, 16))[0] < 30
    assert len(make_views(image, GLOBAL_ONLY, 32)) == 1
    pixels = to_tensor(views, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert pixels.shape == (3, 3, 32, 32) and pixels.min() >= -1 and pixels.max() <= 1


def test_merger_layout_and_gradients():
    merger = AnyResMerger(dim=8)
    plan = ViewPlan(2, 2)
    tokens = torch.randn(plan.num_views, 3, 8)
    out = merger(tokens, plan)
    assert out.shape == (plan.num_tokens(3), 8) == (3 + 1 + 2 * (2 * 3 + 1), 8)
    assert torch.equal(out[:3], tokens[0])
    assert torch.equal(out[3], merger.global_sep)
    assert torch.equal(out[4:7], tokens[1]) and torch.equal(out[7:10], tokens[2])
    assert torch.equal(out[10], merger.row_sep) and torch.equal(out[-1], merger.row_sep)
    out.sum().backward()
    assert merger.global_sep.grad is not None and merger.row_sep.grad.abs().sum() > 0
    assert GLOBAL_ONLY.num_tokens(3) == 3
    with pytest.raises(ValueError, match="views"):
        merger(tokens[:2], plan)
