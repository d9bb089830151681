"""Settings, recipe validation and the CLI shell."""

from __future__ import annotations

import subprocess
import sys

import pytest

from eyeops.config import PlatformSettings, get_settings
from eyeops.errors import ConfigError, NotFoundError, RecipeError
from eyeops.recipes import load_recipe, parse_recipe


def test_settings_from_env_and_yaml(tmp_path, monkeypatch):
    cfg = tmp_path / "eyeops.yaml"
    cfg.write_text("ray_address: ray://head:10001\ns3_endpoint_url: http://minio:9000\n")
    monkeypatch.setenv("EYEOPS_CONFIG", str(cfg))
    monkeypatch.setenv("EYEOPS_S3_ENDPOINT_URL", "http://env-wins:9000")
    get_settings.cache_clear()
    settings = get_settings()
    assert settings.ray_address == "ray://head:10001"
    assert settings.s3_endpoint_url == "http://env-wins:9000"
    assert settings.tracking_uri.startswith("sqlite:///") and settings.tracking_uri.endswith("mlflow.db")


def test_settings_reject_unknown_scheme():
    with pytest.raises(ConfigError, match="gs://bucket"):
        PlatformSettings(storage_root="gs://bucket")


def test_s3_credentials_are_resolved_by_reference(monkeypatch):
    monkeypatch.setenv("MY_KEY", "AKIA-TEST-KEY-123")
    monkeypatch.setenv("MY_SECRET", "s3cr3t-value")
    settings = PlatformSettings(
        s3_access_key_id_env="MY_KEY",
        s3_secret_access_key_env="MY_SECRET",
        s3_endpoint_url="http://127.0.0.1:9",
    )
    kwargs = settings.s3_client_kwargs()
    assert (
        kwargs["aws_access_key_id"] == "AKIA-TEST-KEY-123" and kwargs["endpoint_url"] == "http://127.0.0.1:9"
    )
    assert "s3cr3t-value" not in repr(settings) and "AKIA-TEST-KEY-123" not in repr(settings)


def test_recipe_errors_name_the_key():
    with pytest.raises(RecipeError) as info:
        parse_recipe(
            {
                "name": "x",
                "model": {"family": "classifier", "bogus": 1},
                "register": {"model_name": "m"},
                "train": {"lr": -1},
            }
        )
    message = str(info.value)
    assert "model.classifier.bogus" in message and "train.lr" in message


def test_unknown_recipe_lists_known_ones():
    with pytest.raises(NotFoundError, match="no-such-recipe"):
        load_recipe("no-such-recipe")


def test_cli_help_and_version():
    out = subprocess.run([sys.executable, "-m", "eyeops", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "version" in out.stdout
    out = subprocess.run([sys.executable, "-m", "eyeops", "version"], capture_output=True, text=True)
    assert out.returncode == 0 and "torch" in out.stdout
