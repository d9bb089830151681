"""Storage: Parquet round-trip, manifest hashes, output-dir safety, and S3 against a real moto server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from eyeops.config import get_settings
from eyeops.data import load_dataset, load_samples, prepare, read_manifest
from eyeops.data.schema import Message, Sample, Task
from eyeops.data.store import samples_to_table, sha256_file, table_to_samples
from eyeops.errors import NotFoundError, StorageError
from eyeops.recipes import DataSpec


def test_parquet_round_trip_keeps_every_field():
    sample = Sample(
        id="x",
        patient_id="p-1",
        eye="OS",
        modality="oct",
        images=["images/a.png", "images/b.png"],
        task=Task.DIALOGUE,
        messages=[Message(role="user", content="<image>\n<image>\n视网膜？")],
        answer="是",
        options=["A", "B"],
        labels=[0, 1],
        source="s",
        license="l",
        split="val",
        meta={"k": "値"},
    )
    bare = Sample(id="y", task=Task.TEXT_QA, answer="a")
    assert table_to_samples(samples_to_table([sample, bare])) == [sample, bare]


def test_manifest_hashes_every_file_and_output_dir_is_safe(tmp_path):
    ref = prepare(DataSpec(n=6, image_size=64), str(tmp_path / "ds"), name="m")
    manifest = read_manifest(ref.uri)
    assert {f.path for f in manifest.files} == {
        "samples.parquet",
        "quality.html",
        "quality.json",
        *(f"images/{p.name}" for p in (tmp_path / "ds" / "images").iterdir()),
    }
    for entry in manifest.files:
        assert sha256_file(tmp_path / "ds" / entry.path) == entry.sha256
    assert manifest.fingerprint == ref.fingerprint and manifest.counts == {
        k: v for k, v in manifest.counts.items() if k.startswith("classify/fundus/")
    }
    again = prepare(DataSpec(n=4, image_size=64), str(tmp_path / "ds"), name="m")  # replaces a dataset
    assert again.num_samples == 4 and len(load_samples(again.uri)) == 4
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.txt").write_text("do not delete")
    with pytest.raises(StorageError, match="refusing to overwrite"):
        prepare(DataSpec(n=2, image_size=64), str(tmp_path / "precious"), name="x")
    with pytest.raises(NotFoundError, match="no dataset"):
        read_manifest(tmp_path / "precious")


@pytest.mark.integration
def test_s3_round_trip_against_moto_server(moto_endpoint, tmp_path, monkeypatch):
    import boto3

    monkeypatch.setenv("EYEOPS_S3_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    get_settings.cache_clear()
    boto3.client("s3", **get_settings().s3_client_kwargs()).create_bucket(Bucket="eyeops-data")

    uri = "s3://eyeops-data/datasets/syn"
    ref = prepare(DataSpec(n=6, image_size=64, tasks=["classify", "report"]), uri, name="syn")
    assert ref.uri == uri and ref.num_samples == 12
    manifest = read_manifest(uri)
    assert manifest.fingerprint == ref.fingerprint
    keys = {
        o["Key"]
        for o in boto3.client("s3", **get_settings().s3_client_kwargs()).list_objects_v2(
            Bucket="eyeops-data", Prefix="datasets/syn/"
        )["Contents"]
    }
    assert keys == {f"datasets/syn/{f.path}" for f in manifest.files} | {"datasets/syn/manifest.json"}

    samples, local = load_dataset(uri)
    assert local.is_relative_to(Path(os.environ["EYEOPS_STORAGE_ROOT"]))  # cached under storage_root
    assert len(samples) == 12 and all((local / p).is_file() for s in samples for p in s.images)
    frame, _ = load_dataset(uri, as_frame=True)
    assert sorted(frame["id"]) == sorted(s.id for s in samples)
    assert load_samples(uri, split="train") == [s for s in samples if s.split == "train"]
    with pytest.raises(NotFoundError):
        read_manifest("s3://eyeops-data/datasets/none")
