"""Shared test fixtures: every test runs against its own storage root and settings."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # what mlflow reads
os.environ.setdefault("DO_NOT_TRACK", "true")  # mlflow accepts only "true"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path, monkeypatch):
    """Point EYEOPS_STORAGE_ROOT at the test's tmp dir and drop cached settings."""
    from eyeops.config import get_settings

    monkeypatch.setenv("EYEOPS_STORAGE_ROOT", str(tmp_path / "eyeops"))
    for var in ("EYEOPS_CONFIG", "EYEOPS_MLFLOW_TRACKING_URI", "EYEOPS_RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
