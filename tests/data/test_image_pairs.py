"""Generation samples with target images: the synthetic pairs, prepare storing targets, the
VL-Health-style importer reading them (and quarantining a missing one), older tables still read."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from eyeops.data import prepare
from eyeops.data.image_pairs import GENERATION_TASKS, SR_FACTOR, angiogram, generation_records
from eyeops.data.importers import llava_json
from eyeops.data.records import ImageInput, RawRecord
from eyeops.data.schema import Eye, Task
from eyeops.data.store import PARQUET, load_samples, read_manifest
from eyeops.data.synthetic import generate
from eyeops.recipes import DataSpec


def test_one_record_per_generation_task():
    item = next(generate(1, seed=3, size=128))
    record = RawRecord(
        key="k",
        task=Task.CLASSIFY,
        where="w",
        images=(ImageInput(ref="r", array=item.image),),
        eye=Eye.OS,
        labels=item.labels,
        findings=item.findings,
    )
    out = {r.meta["generation"]: r for r in generation_records(record)}
    assert list(out) == list(GENERATION_TASKS)
    assert all(
        r.task == Task.GENERATE_IMAGE and r.target is not None and r.answer is None for r in out.values()
    )
    assert out["reconstruction"].images[0] is out["reconstruction"].target  # the photograph itself
    small = out["super_resolution"].images[0].array
    assert small.shape[:2] == (128 // SR_FACTOR, 128 // SR_FACTOR)
    assert out["super_resolution"].target.array is item.image
    ffa = out["modality_conversion"].target.array
    assert ffa.shape == item.image.shape and (ffa[..., 0] == ffa[..., 1]).all()  # grey
    assert out["modality_conversion"].meta["target_modality"] == "ffa"
    assert not out["text_to_image"].images and "<image>" not in out["text_to_image"].messages[0].content
    assert "a left eye" in out["text_to_image"].messages[0].content
    assert item.findings[0].description in out["text_to_image"].messages[0].content


def test_angiogram_lights_vessels_on_a_dark_field():
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[8:56, 8:56] = (190, 90, 40)  # fundus
    rgb[30:33, 8:56] = (120, 30, 20)  # a dark vessel
    grey = angiogram(rgb)[..., 0].astype(int)
    assert grey[31, 32] > grey[20, 32] > grey[0, 0] == 0


def test_prepare_stores_targets_and_quarantines_a_missing_one(tmp_path):
    Image.new("RGB", (64, 64), (180, 80, 40)).save(tmp_path / "ct.png")
    Image.new("RGB", (64, 64), (40, 40, 40)).save(tmp_path / "mri.png")

    def row(ask: str, **keys: str) -> dict:
        turns = [{"from": "human", "value": f"<image>\n{ask}"}, {"from": "gpt", "value": "<image>"}]
        return {"image": "ct.png", "conversations": turns, **keys}

    rows = [
        row(
            "Convert this CT to MRI.",
            target_image="mri.png",
            generation="modality_conversion",
            target_modality="mri",
            modality="ct",
        ),
        row("Reconstruct it.", target_image="gone.png"),
        row("Draw.", task="generate_image"),
    ]
    src = tmp_path / "vl-health.json"
    src.write_text(json.dumps(rows))
    imported = llava_json.load(str(src))
    assert [q.path for q in imported.quarantine] == [f"{src.name} row 3 field 'target_image'"]
    assert "needs the target image" in imported.quarantine[0].reason
    ref = prepare(DataSpec(source="llava", path=str(src), image_size=64), str(tmp_path / "out"), name="pairs")
    (sample,) = load_samples(ref.uri)
    assert sample.task == Task.GENERATE_IMAGE and sample.answer is None
    assert sample.meta == {"generation": "modality_conversion", "target_modality": "mri"}
    assert sample.target_image != sample.images[0] and (tmp_path / "out" / sample.target_image).is_file()
    manifest = read_manifest(ref.uri)
    assert sample.target_image in {f.path for f in manifest.files}
    assert any(":target" in q.reason and q.reason.endswith("file not found") for q in manifest.quarantine)
    # A table written before target_image existed still reads (the column is optional).
    table = pq.read_table(tmp_path / "out" / PARQUET).drop(["target_image"])
    pq.write_table(table, tmp_path / "out" / PARQUET)
    assert load_samples(tmp_path / "out")[0].target_image is None
