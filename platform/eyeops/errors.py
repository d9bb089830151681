"""The eyeops exception hierarchy.

Every error a user can cause is an :class:`EyeopsError` carrying a message that names the bad
value. HTTP faces map them to status codes once, through ``http_status``; the CLI prints the
message and exits non-zero. Nothing else should be raised across a public boundary.
"""

from __future__ import annotations


class EyeopsError(Exception):
    """Base class of every error eyeops raises on purpose."""

    http_status: int = 500
    code: str = "internal_error"


class ConfigError(EyeopsError):
    """Settings or a recipe are invalid."""

    http_status = 400
    code = "invalid_config"


class RecipeError(ConfigError):
    """A recipe file is missing, unreadable or fails validation."""

    code = "invalid_recipe"


class DataError(EyeopsError):
    """Input data is unusable: missing columns, wrong types, unreadable files, unknown labels."""

    http_status = 400
    code = "invalid_data"

    def __init__(
        self, message: str, *, file: str | None = None, row: int | None = None, field: str | None = None
    ) -> None:
        where = ", ".join(
            part
            for part in (
                f"file {file}" if file else "",
                f"row {row}" if row is not None else "",
                f"field {field!r}" if field else "",
            )
            if part
        )
        super().__init__(f"{where}: {message}" if where else message)
        self.file, self.row, self.field = file, row, field


class StorageError(EyeopsError):
    """Reading or writing a local path or an s3:// URI failed."""

    code = "storage_error"


class NotFoundError(EyeopsError):
    """A dataset, checkpoint, recipe, model or version does not exist."""

    http_status = 404
    code = "not_found"


class TrainingError(EyeopsError):
    """Training could not start or did not finish."""

    code = "training_failed"


class RegistryError(EyeopsError):
    """The MLflow registry rejected an operation."""

    code = "registry_error"


class ClusterError(EyeopsError):
    """The Kubernetes API rejected an object or a job failed on the cluster."""

    code = "cluster_error"


# --- serving: client mistakes (4xx) -------------------------------------------------------------
class InvalidRequest(EyeopsError):
    """The request is malformed or names something the model cannot do."""

    http_status = 400
    code = "invalid_request"


class Unauthorized(EyeopsError):
    http_status = 401
    code = "unauthorized"


class Forbidden(EyeopsError):
    http_status = 403
    code = "forbidden"


class PayloadTooLarge(InvalidRequest):
    http_status = 413
    code = "payload_too_large"


class UnsupportedMediaType(InvalidRequest):
    http_status = 415
    code = "unsupported_media_type"


class ModelNotReady(EyeopsError):
    http_status = 503
    code = "model_not_ready"


class InferenceTimeout(EyeopsError):
    """The model did not answer within the request timeout (the only serving 5xx besides not-ready)."""

    http_status = 504
    code = "inference_timeout"
