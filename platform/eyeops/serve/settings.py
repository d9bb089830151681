"""Serving settings: auth, limits and batching, read from ``EYEOPS_*`` environment variables.

Kept apart from :class:`eyeops.config.PlatformSettings` because only serving processes need them
and because the API keys must never end up in a settings dump that other stages log.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from eyeops.errors import ConfigError
from eyeops.recipes import ServeSpec

# One default for batching, written once in the recipe's declaration (ServeSpec). A recipe's
# ``serve:`` section reaches these settings as EYEOPS_* env (eyeops.serve.local, ray_app.build_app)
# unless the operator's environment already sets them.
_RECIPE = ServeSpec.model_fields


class ServeSettings(BaseSettings):
    """How a gateway authenticates, limits and batches requests."""

    model_config = SettingsConfigDict(env_prefix="EYEOPS_", extra="ignore", frozen=True)

    api_keys: SecretStr | None = Field(
        None, description="API keys with scopes: 'KEY:scope,scope;KEY2:scope' (or one entry a line)."
    )
    api_keys_file: str | None = Field(
        None, description="A mounted Secret file in the same format as api_keys (both may be given)."
    )
    auth_disabled: bool = Field(
        False, description="Serve without authentication. Local development only; never the default."
    )
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="Largest request body accepted.")
    max_image_pixels: int = Field(
        40_000_000, ge=64, description="Largest width×height decoded (decompression-bomb guard)."
    )
    max_images: int = Field(8, ge=1, description="Most images in one request.")
    request_timeout_s: float = Field(60.0, gt=0, description="Model time allowed per request (504 after).")
    max_batch_size: int = Field(
        _RECIPE["max_batch_size"].default,
        ge=1,
        description="Dynamic batching: most images or chat requests per model call.",
    )
    batch_wait_timeout_s: float = Field(
        _RECIPE["batch_wait_timeout_s"].default,
        ge=0,
        description="Dynamic batching: how long a partial batch waits for company.",
    )
    inference_threads: int = Field(
        1,
        ge=1,
        description="Threads running model calls: 1 is the process's compute thread (eyeops.compute); "
        "more give torch one OpenMP team each, which contend for the same cores.",
    )

    @model_validator(mode="after")
    def _auth_is_configured(self) -> ServeSettings:
        if not self.auth_disabled and self.api_keys is None and not self.api_keys_file:
            raise ValueError(
                "no API keys configured: set EYEOPS_API_KEYS or EYEOPS_API_KEYS_FILE, or disable "
                "auth explicitly for local development (--insecure-no-auth / EYEOPS_AUTH_DISABLED=true)"
            )
        return self


def load_serve_settings(**overrides: object) -> ServeSettings:
    """Settings from env with explicit overrides; invalid values become a :class:`ConfigError`."""
    try:
        return ServeSettings(**overrides)
    except Exception as exc:  # pydantic ValidationError: present it as our own error
        raise ConfigError(f"invalid serving settings: {exc}") from exc
