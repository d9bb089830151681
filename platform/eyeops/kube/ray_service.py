"""The Ray Serve application builder a RayService names in ``serveConfigV2``:
``import_path: eyeops.kube.ray_service:app_builder`` with ``args`` from the chart's ``models`` entry.

Ray Serve calls it with the ``args`` mapping; it validates them into a
:class:`~eyeops.recipes.ServeSpec` and returns :func:`eyeops.serve.ray_app.build_app`'s
application, so the cluster runs exactly the autoscaled, batched app ``eyeops serve --backend ray``
runs locally.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from eyeops.errors import ConfigError
from eyeops.recipes import ServeSpec

# args key -> ServeSpec field ("model"/"model_uri" and "replica_cpus" are handled apart)
_SPEC_KEYS = {
    "min_replicas": "min_replicas",
    "max_replicas": "max_replicas",
    "target_ongoing_requests": "target_ongoing_requests",
    "max_batch_size": "max_batch_size",
    "batch_wait_timeout_s": "batch_wait_timeout_s",
    "num_gpus": "gpu",
    "device": "device",
    "upscale_delay_s": "upscale_delay_s",
    "downscale_delay_s": "downscale_delay_s",
}
_OTHER_KEYS = {"model", "model_uri", "model_name", "replica_cpus"}


def parse_args(args: dict[str, Any]) -> tuple[str, ServeSpec, float]:
    """``(model reference, serve spec, CPUs per replica)`` from serveConfigV2 ``args``."""
    unknown = sorted(set(args) - set(_SPEC_KEYS) - _OTHER_KEYS)
    if unknown:
        raise ConfigError(
            f"RayService args: unknown key(s) {unknown} (known: {sorted({*_SPEC_KEYS, *_OTHER_KEYS})})"
        )
    model = args.get("model") or args.get("model_uri")
    if not model or not isinstance(model, str):
        raise ConfigError(
            f"RayService args: 'model' (NAME@alias, models:/… or a directory) is required, got {model!r}"
        )
    fields = {_SPEC_KEYS[key]: value for key, value in args.items() if key in _SPEC_KEYS}
    try:
        spec = ServeSpec(backend="ray", **fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "<args>"
        raise ConfigError(f"RayService args: {where}: {err['msg']} (got {err.get('input')!r})") from None
    try:
        cpus = float(args.get("replica_cpus", 1.0))
    except (TypeError, ValueError):
        raise ConfigError(
            f"RayService args: replica_cpus must be a number, got {args['replica_cpus']!r}"
        ) from None
    return model, spec, cpus


def app_builder(args: dict[str, Any]):
    """Ray Serve application builder (see module docstring)."""
    from eyeops.serve.ray_app import build_app

    model, spec, cpus = parse_args(dict(args))
    return build_app(model, spec, replica_cpus=cpus)
