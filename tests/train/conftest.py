"""Training-room fixtures: small datasets made by the real ``prepare`` stage; one Ray per module."""

from __future__ import annotations

import os

import pytest

from eyeops.data import prepare
from eyeops.recipes import DataSpec
from eyeops.refs import DatasetRef

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")


def synthetic_dataset(out, n: int, image_size: int = 64, seed: int = 0) -> DatasetRef:
    """Procedural fundus images with ODIR labels, patient-disjoint splits (the data room's generator)."""
    return prepare(
        DataSpec(source="synthetic", n=n, image_size=image_size, seed=seed), str(out), name=f"synthetic-{n}"
    )


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the whole module: starting Ray costs ~10 s of a 2-core machine."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> DatasetRef:
    return synthetic_dataset(tmp_path_factory.mktemp("fundus") / "ds", n=40, image_size=64, seed=1)
