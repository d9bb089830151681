"""What each KFP component calls: decode the component's plain inputs, run one stage, write outputs.

Components stay a few lines of typed interface; decoding JSON refs, resolving the recipe (name +
overrides + data source), choosing the local or cluster path and writing output files live here,
where they are unit-tested without KFP. Every step is journalled (see :mod:`eyeops.pipeline.journal`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from eyeops import storage
from eyeops.config import get_settings
from eyeops.errors import ConfigError, NotFoundError, RecipeError, StorageError
from eyeops.pipeline import journal
from eyeops.recipes import Recipe, load_recipe
from eyeops.refs import CheckpointRef, DatasetRef, Endpoint, EvalReport, ModelVersionRef
from eyeops.storage import decode_ref as decode
from eyeops.storage import write_ref as write_ref_file

RefT = TypeVar("RefT", bound=BaseModel)
PIPELINE_NAME = "eyeops-finetune"
_TRAIN_HEADLINES = ("loss", "train_loss", "train_samples_per_s")


def parse_data_source(data_source: str) -> dict[str, Any]:
    """``""`` (the recipe's own), ``synthetic``, ``synthetic:N`` or ``SOURCE:PATH`` → recipe overrides."""
    text = data_source.strip()
    if not text:
        return {}
    source, _, arg = text.partition(":")
    if source == "synthetic" and arg:
        if not arg.isdigit():
            raise RecipeError(f"data source {data_source!r}: synthetic:N needs an integer N, got {arg!r}")
        return {"data.source": "synthetic", "data.n": int(arg)}
    return {"data.source": source, "data.path": arg or None}


def resolve_recipe(recipe: str, overrides: str | dict[str, Any] = "{}", data_source: str = "") -> Recipe:
    """The recipe a pipeline run trains: ``recipes/<recipe>.yaml`` + data source + overrides."""
    try:
        extra = json.loads(overrides) if isinstance(overrides, str) else dict(overrides)
    except json.JSONDecodeError as exc:
        raise RecipeError(f"overrides {overrides!r} are not valid JSON: {exc}") from None
    if not isinstance(extra, dict):
        raise RecipeError(f"overrides must be a JSON object of dotted keys, got {overrides!r}")
    merged = {**parse_data_source(data_source), **extra}
    if merged.get("data.source") not in (None, "mix"):  # one source given: it replaces a recipe's mix
        merged.setdefault("data.mix", [])
    base = load_recipe(recipe)
    return base.with_overrides(merged) if merged else base


def read_ref_file(path: str, cls: type[RefT], what: str) -> RefT:
    try:
        text = storage.read_text(path)
    except (NotFoundError, StorageError) as exc:
        raise ConfigError(f"{what}: cannot read input artifact {path}: {exc}") from None
    return decode(text, cls, what)


def _run_tag(pipeline_run_id: str) -> str:
    # kfp.local job ids are digits; cluster ids are UUIDs. Keep names short and path-safe.
    tag = "".join(ch for ch in pipeline_run_id if ch.isalnum())[:12]
    return tag or "manual"


# --- the five steps -------------------------------------------------------------------------------
def prepare_step(
    recipe: str, *, data_source: str, overrides: str, pipeline_run_id: str, out_path: str
) -> DatasetRef:
    """``eyeops.data.prepare`` into ``<storage_root>/datasets/<recipe>-<run>``; ref JSON to ``out_path``."""
    with journal.stage("prepare") as rec:
        from eyeops.data import prepare

        resolved = resolve_recipe(recipe, overrides, data_source)
        name = f"{resolved.name}-{_run_tag(pipeline_run_id)}"
        ref = prepare(resolved.data, get_settings().path("datasets", name), name=name)
        write_ref_file(out_path, ref)
        rec.metric, rec.value = "samples", float(ref.num_samples)
        rec.artifacts, rec.ref = {"dataset": ref.uri}, ref.model_dump(mode="json")
        return ref


def train_step(
    recipe: str,
    *,
    dataset_path: str,
    overrides: str,
    target: str,
    run_name: str,
    out_path: str,
    image: str = "",
    gpu_pool: str = "",
) -> CheckpointRef:
    """Train locally (``eyeops.train.train``) or through a KubeRay RayJob (``target='rayjob'``)."""
    with journal.stage("train") as rec:
        if target not in ("local", "rayjob"):
            raise ConfigError(f"train target {target!r}: expected 'local' or 'rayjob'")
        resolved = resolve_recipe(recipe, overrides)
        dataset = read_ref_file(dataset_path, DatasetRef, "train.dataset")
        from eyeops.plan import preflight

        preflight(resolved)  # a GPU plan that cannot fit the pool fails here, before any pod starts
        if target == "local":
            from eyeops.train import train

            checkpoint = train(resolved, dataset, run_name=run_name)
        else:
            from eyeops.kube import TRAINER_IMAGE, GpuPool, train_on_cluster

            pool = GpuPool.model_validate_json(gpu_pool) if gpu_pool else None
            checkpoint = train_on_cluster(
                resolved, dataset, run_name=run_name, image=image or TRAINER_IMAGE, pool=pool, on_status=print
            )
        write_ref_file(out_path, checkpoint)
        # The headline the trainer reported, best first; the step count when it reported none.
        key = next((k for k in _TRAIN_HEADLINES if k in checkpoint.metrics), None)
        rec.metric, rec.value = (key, float(checkpoint.metrics[key])) if key else ("steps", checkpoint.step)
        rec.artifacts, rec.ref = {"checkpoint": checkpoint.uri}, checkpoint.model_dump(mode="json")
        return checkpoint


def evaluate_step(
    recipe: str, *, checkpoint_path: str, dataset_path: str, overrides: str, out_path: str, markdown_path: str
) -> EvalReport:
    """``eyeops.evaluate.evaluate``; the report JSON and a Markdown summary are the step's outputs."""
    with journal.stage("evaluate") as rec:
        from eyeops.evaluate import evaluate

        resolved = resolve_recipe(recipe, overrides)
        checkpoint = read_ref_file(checkpoint_path, CheckpointRef, "evaluate.checkpoint")
        dataset = read_ref_file(dataset_path, DatasetRef, "evaluate.dataset")
        out_dir = str(Path(checkpoint.uri).parent / "eval") if "://" not in checkpoint.uri else None
        report = evaluate(resolved, checkpoint, dataset, out_dir=out_dir)
        if resolved.register.gate.baseline:
            from eyeops.registry.baseline import ensure_baseline

            # Measured here, where evaluate.device's GPU is; the register step reads it from MLflow.
            ensure_baseline(resolved, dataset)
        write_ref_file(out_path, report)
        Path(markdown_path).write_text(report_markdown(report, resolved), encoding="utf-8")
        rec.metric, rec.value = report.primary_metric, float(report.primary_value)
        rec.artifacts, rec.ref = {"report": report.uri}, report.model_dump(mode="json")
        return report


def register_step(
    recipe: str,
    *,
    checkpoint_path: str,
    report_path: str,
    dataset_path: str,
    overrides: str,
    pipeline_run_id: str,
    pipeline_run_name: str,
    out_path: str,
) -> ModelVersionRef:
    """``eyeops.registry.register`` with the pipeline's lineage; the gate decides the alias."""
    with journal.stage("register") as rec:
        from eyeops.registry import register

        resolved = resolve_recipe(recipe, overrides)
        checkpoint = read_ref_file(checkpoint_path, CheckpointRef, "register.checkpoint")
        report = read_ref_file(report_path, EvalReport, "register.report")
        dataset = read_ref_file(dataset_path, DatasetRef, "register.dataset")
        lineage = {
            "pipeline": PIPELINE_NAME,
            "pipeline_run_id": pipeline_run_id,
            "pipeline_run_name": pipeline_run_name,
            "train_run_name": checkpoint.run_name,
            "dataset_fingerprint": dataset.fingerprint,
        }
        version = register(resolved, checkpoint, report, dataset=dataset, lineage=lineage)
        write_ref_file(out_path, version)
        rec.metric, rec.value = version.metric, float(version.value)
        rec.artifacts, rec.ref = {"model": version.model_uri}, version.model_dump(mode="json")
        return version


def deploy_step(
    recipe: str, *, version_path: str, overrides: str, backend: str, out_path: str, image: str = ""
) -> Endpoint:
    """Serve the gated version: a local serving process, or a KServe/Ray Serve object on the cluster."""
    with journal.stage("deploy") as rec:
        resolved = resolve_recipe(recipe, overrides)
        backend = backend or resolved.serve.backend
        if backend not in ("local", "kserve", "ray"):
            raise ConfigError(f"deploy backend {backend!r}: expected 'local', 'kserve' or 'ray'")
        version = read_ref_file(version_path, ModelVersionRef, "deploy.version")
        if backend == "local":
            from eyeops.serve.local import deploy

            endpoint = deploy(resolved, version, backend="local")
        else:
            from eyeops.kube import SERVER_IMAGE, deploy_on_cluster

            endpoint = deploy_on_cluster(
                resolved, version, backend=backend, image=image or SERVER_IMAGE, on_status=print
            )
        write_ref_file(out_path, endpoint)
        rec.artifacts, rec.ref = {"endpoint": endpoint.url}, endpoint.model_dump(mode="json")
        return endpoint


def report_markdown(report: EvalReport, recipe: Recipe) -> str:
    """A short Markdown view of an evaluation for the KFP UI: headline metric, then every metric."""
    lines = [
        f"# {recipe.name}: evaluation on {report.split} ({report.num_samples} samples)",
        "",
        f"**{report.primary_metric}: {report.primary_value:.4f}**",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {name} | {value:.4f} |" for name, value in sorted(report.metrics.items())]
    return "\n".join(lines) + "\n"


__all__ = [
    "decode",
    "deploy_step",
    "evaluate_step",
    "parse_data_source",
    "prepare_step",
    "register_step",
    "report_markdown",
    "resolve_recipe",
    "train_step",
]
