"""Platform settings: where things live and how to reach the services.

Read from ``EYEOPS_*`` environment variables and, optionally, a YAML file named by
``EYEOPS_CONFIG``. Credentials are never stored here, only the *names* of the environment
variables (Kubernetes Secret keys) that hold them.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from eyeops.devices import Device
from eyeops.errors import ConfigError


class _YamlSource(PydanticBaseSettingsSource):
    """Settings from the YAML file named by ``EYEOPS_CONFIG`` (lower priority than env)."""

    def get_field_value(self, field, field_name):  # pragma: no cover - unused by pydantic here
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("EYEOPS_CONFIG")
        if not path:
            return {}
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"EYEOPS_CONFIG={path}: cannot read settings file: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"EYEOPS_CONFIG={path}: expected a mapping, got {type(data).__name__}")
        return data


class PlatformSettings(BaseSettings):
    """Where eyeops keeps data, runs and models, and how it reaches Ray, MLflow and S3."""

    model_config = SettingsConfigDict(env_prefix="EYEOPS_", extra="forbid", frozen=True)

    mode: Literal["embedded", "cluster"] = Field(
        "embedded", description="embedded: everything on this machine; cluster: KFP/KubeRay/KServe."
    )
    storage_root: str = Field(
        default_factory=lambda: str(Path.cwd() / ".eyeops"),
        description="Root for datasets, checkpoints and artifacts: a local path or s3://bucket/prefix.",
    )
    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; default sqlite:///<storage_root>/mlflow.db when local."
    )
    mlflow_artifact_root: str | None = Field(
        None, description="Artifact location for new experiments; default <storage_root>/mlartifacts."
    )
    ray_address: str | None = Field(
        None, description="None starts Ray on this machine; 'auto', 'ray://host:10001' join a cluster."
    )
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, moto).")
    s3_region: str = "us-east-1"
    s3_access_key_id_env: str = Field(
        "AWS_ACCESS_KEY_ID", description="Name of the env var holding the S3 access key id."
    )
    s3_secret_access_key_env: str = Field(
        "AWS_SECRET_ACCESS_KEY", description="Name of the env var holding the S3 secret key."
    )
    hf_token_env: str = Field(
        "HF_TOKEN",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Name of the env var holding the Hugging Face token for gated repos (Llama); "
        "the chart sets it from a Secret key (huggingface.tokenSecret). Never the token itself.",
    )
    kube_hf_token_secret: str | None = Field(
        None,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        max_length=253,
        description="Secret whose key kube_hf_token_key holds the Hugging Face token: the RayJob, "
        "InferenceService and RayService pods eyeops creates get it as the env var hf_token_env "
        "names (the chart's huggingface.tokenSecret.name, through its ConfigMap). None: no token.",
    )
    kube_hf_token_key: str = Field(
        "token",
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key of the Hugging Face token in kube_hf_token_secret (huggingface.tokenSecret.key).",
    )
    model_cache: str | None = Field(
        None,
        description="Local dir for converted/downloaded base models; default <storage_root>/cache/models "
        "(~/.cache/eyeops/models when storage_root is on S3).",
    )
    device: Device = Field(
        "auto",
        description="Where evaluation and serving load models when the recipe says auto: auto (the "
        "accelerator when present, else CPU) | cpu | cuda | cuda:N | mps (eyeops.devices).",
    )
    gpu_memory_gib: float | None = Field(
        None, gt=0, description="GPU memory per training worker for `eyeops plan` (overrides the table)."
    )
    kube_namespace: str = "eyeops"
    kube_service_account: str = Field(
        "eyeops-ray",
        description="ServiceAccount of RayJob/RayService pods: the chart's Ray account (release eyeops).",
    )
    kube_model_service_account: str = Field(
        "eyeops-model",
        description="ServiceAccount of InferenceService predictors: the chart's model account "
        "(release eyeops).",
    )
    kube_model_cache_size: str = Field(
        "20Gi",
        pattern=r"^[0-9]+(\.[0-9]+)?([KMGTPE]i|[kMGTPE])?$",
        description="Size of /tmp in the InferenceService/RayService pods eyeops deploys: models load "
        "there (HOME=/tmp). The chart's modelCacheSize.",
    )
    kube_release: str = Field(
        "eyeops",
        description="Helm release whose NetworkPolicies must select the pods eyeops creates "
        "(their app.kubernetes.io/instance label).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("storage_root")
    @classmethod
    def _normalise_root(cls, value: str) -> str:
        if value.startswith("s3://"):
            return value.rstrip("/")
        if "://" in value and not value.startswith("file://"):
            raise ConfigError(f"storage_root {value!r}: only local paths, file:// and s3:// are supported")
        return str(Path(value.removeprefix("file://")).expanduser().resolve())

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        return (init_settings, env_settings, _YamlSource(settings_cls), file_secret_settings)

    @property
    def is_local_storage(self) -> bool:
        return not self.storage_root.startswith("s3://")

    def path(self, *parts: str) -> str:
        """A location under the storage root (a local path or an s3:// URI)."""
        sep = "/" if not self.is_local_storage else os.sep
        return sep.join([self.storage_root, *parts])

    @property
    def tracking_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        if not self.is_local_storage:
            raise ConfigError("EYEOPS_MLFLOW_TRACKING_URI is required when storage_root is on S3")
        return f"sqlite:///{Path(self.storage_root) / 'mlflow.db'}"

    @property
    def artifact_root(self) -> str:
        return self.mlflow_artifact_root or self.path("mlartifacts")

    def s3_client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``boto3.client('s3', ...)``, credentials resolved from env."""
        kwargs: dict[str, Any] = {"region_name": self.s3_region}
        if self.s3_endpoint_url:
            kwargs["endpoint_url"] = self.s3_endpoint_url
        key, secret = os.environ.get(self.s3_access_key_id_env), os.environ.get(self.s3_secret_access_key_env)
        if key and secret:
            kwargs.update(aws_access_key_id=key, aws_secret_access_key=secret)
        return kwargs


@lru_cache(maxsize=1)
def get_settings() -> PlatformSettings:
    """Process-wide settings (cached; call ``get_settings.cache_clear()`` after changing env)."""
    try:
        return PlatformSettings()
    except ConfigError:
        raise
    except Exception as exc:  # pydantic ValidationError: present it as our own error
        raise ConfigError(f"invalid EYEOPS_* settings: {exc}") from exc
