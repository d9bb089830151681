"""``train(recipe, dataset) -> CheckpointRef``: run the shared loop on Ray Train (V2 ``TorchTrainer``).

Local mode starts Ray on this machine (CPU workers, gloo); ``EYEOPS_RAY_ADDRESS`` (``auto`` or
``ray://host:10001``) joins a cluster instead. Checkpoints go to ``<storage>/<run_name>`` (a local
path or s3://); retries after a worker failure and a second run under the same name resume from
the newest checkpoint. The returned ref points at the model directory ``family.save`` wrote.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

import pyarrow.fs
import ray
import ray.train
from ray.train.torch import TorchConfig, TorchTrainer

from eyeops.config import PlatformSettings, get_settings
from eyeops.data import local_dataset_dir
from eyeops.errors import ConfigError, TrainingError
from eyeops.families import get_family
from eyeops.recipes import Recipe
from eyeops.refs import CheckpointRef, DatasetRef
from eyeops.storage import arrow_s3_filesystem, parse
from eyeops.train.loop import MODEL_DIR, train_loop_per_worker


def train(
    recipe: Recipe,
    dataset: DatasetRef,
    *,
    run_name: str | None = None,
    storage_path: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> CheckpointRef:
    """Train ``recipe`` on a prepared dataset with Ray Train; returns the final model checkpoint.

    ``run_name`` defaults to ``<recipe>-<UTC timestamp>``; running again with an existing name
    resumes that run from its newest checkpoint. ``storage_path`` defaults to
    ``<storage_root>/runs``. ``overrides`` are dotted recipe keys (``{"train.max_steps": 5}``).
    """
    if overrides:
        recipe = recipe.with_overrides(overrides)
    get_family(recipe.family)  # unknown family: fail here, not inside a worker
    if not recipe.train.use_gpu and recipe.train.mixed_precision == "fp16":
        raise ConfigError(
            "train.mixed_precision 'fp16' needs train.use_gpu: true (use bf16, auto or no on CPU)"
        )
    settings = get_settings()
    data_dir = local_dataset_dir(dataset.uri)  # s3 datasets are downloaded (and verified) once
    run_name = run_name or f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    storage = storage_path or settings.path("runs")
    cfg = recipe.train
    started_ray = _ensure_ray(settings, cfg.num_workers, cfg.resources_per_worker)
    try:
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={
                "recipe": recipe.model_dump(mode="json"),
                "data_dir": str(data_dir),
                "dataset_uri": dataset.uri,
                "run_name": run_name,
            },
            scaling_config=ray.train.ScalingConfig(
                num_workers=cfg.num_workers,
                use_gpu=cfg.use_gpu,
                resources_per_worker=dict(cfg.resources_per_worker),
                accelerator_type=cfg.accelerator_type,
            ),
            torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
            run_config=ray.train.RunConfig(
                name=run_name,
                **_storage_kwargs(storage),
                failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.checkpoints_to_keep),
            ),
        )
        try:
            result = trainer.fit()
        except ray.train.TrainingFailedError as exc:
            raise TrainingError(
                f"run {run_name!r} failed after {cfg.max_failures} retries: {_root_cause(exc)}"
            ) from None
    finally:
        if started_ray:
            ray.shutdown()
    if result.checkpoint is None:
        raise TrainingError(f"run {run_name!r} finished without a checkpoint")
    metrics = {k: float(v) for k, v in (result.metrics or {}).items() if isinstance(v, int | float)}
    model_path = f"{result.checkpoint.path.rstrip('/')}/{MODEL_DIR}"
    resumed = metrics.get("resumed_from_step")
    return CheckpointRef(
        uri=_as_uri(model_path, storage),
        fingerprint=_fingerprint(result.checkpoint.filesystem, model_path),
        recipe_name=recipe.name,
        family=recipe.family,
        run_name=run_name,
        step=int(metrics.get("step", 0)),
        resumed_from_step=None if resumed is None else int(resumed),
        metrics=metrics,
        dataset_fingerprint=dataset.fingerprint,
        ray_checkpoint_uri=_as_uri(result.checkpoint.path, storage),
    )


def _ensure_ray(settings: PlatformSettings, num_workers: int, per_worker: dict[str, float]) -> bool:
    """Connect to (or start) Ray; returns True when this call started it (and must shut it down)."""
    if ray.is_initialized():
        return False
    address = settings.ray_address
    if address is None:
        # Enough logical CPUs for the worker group even on a small machine: the workers share cores.
        cpus = max(os.cpu_count() or 1, int(num_workers * per_worker.get("CPU", 1)))
        ray.init(num_cpus=cpus, include_dashboard=False)
        return True
    try:
        ray.init(address=address)  # 'auto', 'ray://head:10001' or 'head:6379'
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"EYEOPS_RAY_ADDRESS {address!r}: cannot join the Ray cluster: {exc}") from None
    return True


def _storage_kwargs(storage: str) -> dict[str, Any]:
    location = parse(storage)
    if location.path is not None:
        local = location.path.resolve()
        local.mkdir(parents=True, exist_ok=True)
        return {"storage_path": str(local)}
    # With an explicit filesystem, Ray wants the path without its scheme.
    return {"storage_path": storage.removeprefix("s3://"), "storage_filesystem": arrow_s3_filesystem()}


def _as_uri(path: str, storage: str) -> str:
    if storage.startswith("s3://") and not path.startswith("s3://"):
        return f"s3://{path.lstrip('/')}"
    return path


def _fingerprint(fs: pyarrow.fs.FileSystem, directory: str) -> str:
    """sha256 over (relative path, sha256 of content) of every file in the model directory."""
    infos = fs.get_file_info(pyarrow.fs.FileSelector(directory.removeprefix("s3://"), recursive=True))
    files = sorted(i.path for i in infos if i.type == pyarrow.fs.FileType.File)
    if not files:
        raise TrainingError(f"{directory}: the final checkpoint holds no model files")
    outer = hashlib.sha256()
    for name in files:
        inner = hashlib.sha256()
        with fs.open_input_stream(name) as stream:
            while chunk := stream.read(1 << 20):
                inner.update(chunk)
        outer.update(
            f"{os.path.relpath(name, directory.removeprefix('s3://'))}\0{inner.hexdigest()}\n".encode()
        )
    return outer.hexdigest()


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {exc}"[:2000]
