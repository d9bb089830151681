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


def _oct_bscan(width=1024, height=496):
    """An OCT-shaped B-scan: dark vitreous and choroid around a bright, wide band of retinal layers."""
    image = Image.new("RGB", (width, height), (5, 5, 5))
    image.paste((200, 200, 200), (0, height // 3, width, height // 3 + 90))
    return image


def _fundus(side=300, frame=(400, 300)):
    """A fundus photograph: a bright disc on the camera's black frame."""
    from PIL import ImageDraw

    image = Image.new("RGB", frame, (0, 0, 0))
    left, top = (frame[0] - side) // 2, (frame[1] - side) // 2
    ImageDraw.Draw(image).ellipse((left, top, left + side - 1, top + side - 1), fill=(180, 70, 30))
    return image


def test_wide_oct_keeps_its_shape_and_gets_one_row_of_tiles(tmp_path):
    """The real path (dataset row -> processor -> views): an OCT B-scan is tiled 1x3, a fundus 2x2."""
    from eyeops_testing.vlm_tiny import save_tiny_llm

    from eyeops.data.schema import Message, Modality, Sample, Task
    from eyeops.models.common.hub import load_tokenizer
    from eyeops.models.common.processing import VLMDataset, VLMProcessor, border_crop
    from eyeops.models.common.specs import ResolutionSpec

    _oct_bscan().save(tmp_path / "oct.png")
    _fundus(side=600, frame=(800, 600)).save(tmp_path / "fundus.png")
    processor = VLMProcessor(
        load_tokenizer(str(save_tiny_llm(tmp_path / "llm"))),
        image_size=224,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        tokens_per_view=2,
        resolution=ResolutionSpec(mode="anyres", grids=GRIDS, max_tiles=4),
        crop_border=True,
        max_images=2,
        max_seq_len=512,
        system_prompt=None,
    )
    question = [Message(role="user", content="<image>\nDescribe the scan.")]
    rows = [
        Sample(
            id=name,
            modality=modality,
            images=[f"{name}.png"],
            task=Task.OPEN_QA,
            messages=question,
            answer="ok",
        )
        for name, modality in (("oct", Modality.OCT), ("fundus", Modality.FUNDUS))
    ]
    oct_row, fundus_row = VLMDataset(tmp_path, rows, processor)
    assert oct_row.plans == [ViewPlan(1, 3)] and oct_row.pixel_values.shape[0] == 4
    assert fundus_row.plans == [ViewPlan(2, 2)]  # 800x600 frame cropped to the 600 px disc

    # A request without modality (serving): a wide or tall image is never squared, a disc on its
    # black frame still is; a known non-fundus modality is never cropped.
    assert border_crop(_oct_bscan(), None).size == (1024, 496)
    assert border_crop(_oct_bscan().rotate(90, expand=True), "none").size == (496, 1024)
    assert border_crop(_fundus(), None).size == (300, 300)
    assert border_crop(_fundus(), Modality.SLIT_LAMP).size == (400, 300)
    assert processor.pixels([_oct_bscan()])[1] == [ViewPlan(1, 3)]
