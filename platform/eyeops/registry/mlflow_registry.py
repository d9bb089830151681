"""MLflow registry: one run per training, a pyfunc LoggedModel, a gate, and champion aliases.

Aliases: ``@champion`` is what serving loads; a gated-out candidate becomes ``@challenger``; the
champion replaced by a promotion keeps ``@previous`` so :func:`rollback` can restore it. Every
decision is recorded as model-version tags (``eyeops.gate``, ``eyeops.gate_reason`` …).
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pydantic import BaseModel, ConfigDict

from eyeops import storage
from eyeops.config import get_settings
from eyeops.errors import NotFoundError, RegistryError
from eyeops.families import get_family
from eyeops.recipes import Recipe
from eyeops.refs import CheckpointRef, DatasetRef, EvalReport, ModelVersionRef
from eyeops.registry import _pyfunc
from eyeops.registry.baseline import gate_references, log_candidate
from eyeops.registry.gate import GateDecision, Reference, decide, gate_metric

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
_MODEL_NAME = "model"  # LoggedModel name inside the run
_PARAM_MAX = 6000  # MLflow 3 param value limit
_TAG_MAX = 7500  # MLflow 3 tag value limit (8000)


# --- connection -----------------------------------------------------------------------------------
def client() -> MlflowClient:
    """A client on the configured tracking store; also points the fluent API at it."""
    uri = get_settings().tracking_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextmanager
def mlflow_errors(what: str) -> Iterator[None]:
    """Turn MLflow failures into our errors, naming the operation."""
    try:
        yield
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise NotFoundError(f"{what}: {exc.message}") from None
        raise RegistryError(f"{what}: {exc.message}") from None


def experiment_id(c: MlflowClient, name: str) -> str:
    existing = c.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    settings = get_settings()
    location = None
    # A tracking server with --artifacts-destination owns artifact placement unless told otherwise.
    if settings.mlflow_artifact_root or not settings.tracking_uri.startswith(("http://", "https://")):
        root = settings.artifact_root
        location = f"{root}/{name}" if root.startswith("s3://") else (Path(root) / name).as_uri()
    try:
        return c.create_experiment(name, artifact_location=location)
    except MlflowException:  # created concurrently by another process
        found = c.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


# --- lineage --------------------------------------------------------------------------------------
def git_commit() -> str:
    """The commit of the eyeops source tree, or 'unknown' (containers carry no .git)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def lineage_tags(
    recipe: Recipe, checkpoint: CheckpointRef, dataset: DatasetRef | None, lineage: Mapping[str, str] | None
) -> dict[str, str]:
    extra = dict(lineage or {})
    tags = {
        "eyeops.recipe": recipe.name,
        "eyeops.recipe_hash": recipe.fingerprint(),
        "eyeops.family": recipe.family,
        "eyeops.run_name": checkpoint.run_name,
        "eyeops.checkpoint_fingerprint": checkpoint.fingerprint,
        "eyeops.dataset_fingerprint": (dataset.fingerprint if dataset else checkpoint.dataset_fingerprint),
        "eyeops.git_commit": extra.pop("git_commit", None) or git_commit(),
        # Whether the model runs code from its hub repo (ChatGLM): an auditable choice.
        "eyeops.trust_remote_code": str(getattr(recipe.model, "trust_remote_code", False)).lower(),
    }
    if dataset is not None and dataset.name:
        tags["eyeops.dataset_name"] = dataset.name
    if run_id := extra.pop("pipeline_run_id", None):
        tags["eyeops.pipeline_run_id"] = run_id
    tags |= {f"eyeops.{k}": str(v) for k, v in extra.items()}
    return tags


def _flat_params(data: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(data, dict) and data:
        out: dict[str, str] = {}
        for key, value in data.items():
            out |= _flat_params(value, f"{prefix}{key}.")
        return out
    text = data if isinstance(data, str) else json.dumps(data)
    return {prefix.rstrip("."): text[:_PARAM_MAX]}


# --- register + gate ------------------------------------------------------------------------------
def register(
    recipe: Recipe,
    checkpoint: CheckpointRef,
    report: EvalReport,
    *,
    dataset: DatasetRef | None = None,
    lineage: Mapping[str, str] | None = None,
) -> ModelVersionRef:
    """Log the training run and the model, register a version, and apply the promotion gate.

    ``lineage`` adds tags; ``pipeline_run_id`` and ``git_commit`` keys are recognised.
    """
    if checkpoint.family != recipe.family:
        raise RegistryError(
            f"checkpoint family {checkpoint.family!r} differs from recipe family {recipe.family!r}"
        )
    _check_report_dir(report)
    name = recipe.register.model_name
    c = client()
    tags = lineage_tags(recipe, checkpoint, dataset, lineage)
    # Chance and the base model first: a baseline that cannot be measured registers nothing.
    metric = gate_metric(recipe)
    references = gate_references(recipe, metric, report, dataset) if metric in report.metrics else []
    with mlflow_errors(f"registering {name!r}"):
        experiment = experiment_id(c, recipe.register.experiment or recipe.name)
        # Reuse a run already opened for this training (e.g. one the train loop streamed into).
        runs = c.search_runs([experiment], f"tags.`eyeops.run_name` = '{checkpoint.run_name}'", max_results=1)
        run_id = runs[0].info.run_id if runs else None
        with mlflow.start_run(
            run_id=run_id, experiment_id=experiment, run_name=checkpoint.run_name, tags=tags
        ) as run:
            run_id = run.info.run_id
            if not runs:
                mlflow.log_params(_flat_params(recipe.model_dump(mode="json")))
            mlflow.log_metrics({f"train/{k}": v for k, v in checkpoint.metrics.items()}, step=checkpoint.step)
            mlflow.log_metrics({_eval_key(k): v for k, v in report.metrics.items()}, step=checkpoint.step)
            if Path(report.uri).is_dir():
                mlflow.log_artifacts(report.uri, artifact_path="evaluation")
            mlflow.log_dict(checkpoint.model_dump(mode="json"), "lineage/checkpoint.json")
            mlflow.log_dict(report.model_dump(mode="json"), "lineage/eval_report.json")
            if dataset is not None:
                mlflow.log_dict(dataset.model_dump(mode="json"), "lineage/dataset.json")
            task, labels = _task_of(recipe)
            model_dir = storage.local_copy(checkpoint.uri)
            if recipe.family == "llm":
                _log_hf_export(model_dir)
            info = mlflow.pyfunc.log_model(
                name=_MODEL_NAME,
                python_model=_pyfunc.EyeopsPyfunc(),
                artifacts={"model_dir": str(model_dir)},
                model_config={"family": recipe.family, "task": task, "labels": labels},
                signature=_pyfunc.classify_signature(labels) if labels else _pyfunc.chat_signature(),
                input_example=_pyfunc.example_input() if labels else _pyfunc.chat_example_input(),
                registered_model_name=name,
                tags=tags,
                pip_requirements=_pyfunc.pip_requirements(),
            )
        version = int(info.registered_model_version)
        for key, value in tags.items():
            c.set_model_version_tag(name, str(version), key, value)
        decision = _gate(c, recipe, name, version, report.metrics, references)
        _apply_decision(c, name, version, decision)
    if dataset is not None and recipe.register.gate.baseline:
        log_candidate(recipe, checkpoint, report, dataset, model_uri=f"models:/{name}/{version}")
    return ModelVersionRef(
        name=name,
        version=version,
        alias=CHAMPION if decision.passed else CHALLENGER,
        run_id=run_id,
        model_uri=f"models:/{name}/{version}",
        gate_passed=decision.passed,
        gate_reason=decision.reason,
        metric=decision.metric,
        value=decision.value if decision.value is not None else float("nan"),
        champion_value=decision.champion_value,
    )


def _log_hf_export(model_dir: Path) -> None:
    """The merged Hugging Face checkpoint as run artifact ``hf_model/``, for standard LLM servers
    (KServe's Hugging Face runtime, vLLM): ``eyeops.models.llm.export``."""
    from eyeops.models.llm.export import HF_ARTIFACT, export_merged

    with tempfile.TemporaryDirectory(prefix="eyeops-hf-export-") as tmp:
        mlflow.log_artifacts(str(export_merged(model_dir, Path(tmp) / HF_ARTIFACT)), HF_ARTIFACT)


def safe_key(name: str) -> str:
    """An MLflow metric key for any metric name; breakdown groups (topics, sources) may hold any text."""
    return re.sub(r"[^\w\-. :/]", "_", name)


def _eval_key(name: str) -> str:
    return "eval/" + safe_key(name)


def _check_report_dir(report: EvalReport) -> None:
    """Copying a report dir that contains the artifact store would copy the store into itself."""
    root = get_settings().artifact_root.removeprefix("file://")
    if "://" in root or not Path(report.uri).is_dir():
        return
    if Path(root).resolve().is_relative_to(Path(report.uri).resolve()):
        raise RegistryError(
            f"report directory {report.uri} contains the MLflow artifact root {root}; "
            "write evaluation reports elsewhere"
        )


def _task_of(recipe: Recipe) -> tuple[str, list[str]]:
    """The pyfunc interface the family declares, with the labels a classify interface returns."""
    family = get_family(recipe.family)
    return family.pyfunc_task, family.labels(recipe) if family.pyfunc_task == "classify" else []


def _alias_version(c: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return c.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def _gate(
    c: MlflowClient,
    recipe: Recipe,
    name: str,
    version: int,
    metrics: Mapping[str, float],
    references: Sequence[Reference],
) -> GateDecision:
    metric = gate_metric(recipe)
    champion = _alias_version(c, name, CHAMPION)
    champion_value = champion_version = None
    if champion is not None and int(champion.version) != version:
        champion_version = int(champion.version)
        run_metrics = c.get_run(champion.run_id).data.metrics
        if _eval_key(metric) not in run_metrics:
            return GateDecision(
                passed=False,
                metric=metric,
                value=metrics.get(metric),
                champion_version=champion_version,
                reason=f"champion v{champion_version} has no {metric!r} to compare with; "
                "promote manually if intended",
                failed=["champion"],
            )
        champion_value = run_metrics[_eval_key(metric)]
    return decide(
        recipe.register.gate,
        metric,
        metrics,
        champion_value=champion_value,
        champion_version=champion_version,
        references=references,
    )


def _set_champion(c: MlflowClient, name: str, version: int) -> None:
    current = _alias_version(c, name, CHAMPION)
    if current is not None and int(current.version) != version:
        c.set_registered_model_alias(name, PREVIOUS, current.version)
    c.set_registered_model_alias(name, CHAMPION, str(version))
    challenger = _alias_version(c, name, CHALLENGER)
    if challenger is not None and int(challenger.version) == version:
        c.delete_registered_model_alias(name, CHALLENGER)


def _checks_tag(decision: GateDecision) -> str:
    """Every check as JSON within MLflow's tag limit, always valid JSON: when too long the checks
    lose their ``detail`` (the reason tag has the words), then the last ones give way to a count."""
    checks = [check.model_dump(exclude_none=True) for check in decision.checks]
    text = json.dumps(checks)
    if len(text) <= _TAG_MAX:
        return text
    checks = [{k: v for k, v in check.items() if k != "detail"} for check in checks]
    for kept in range(len(checks), -1, -1):
        omitted = [{"omitted": len(checks) - kept}] if kept < len(checks) else []
        text = json.dumps(checks[:kept] + omitted)
        if len(text) <= _TAG_MAX:
            break
    return text


def _apply_decision(c: MlflowClient, name: str, version: int, decision: GateDecision) -> None:
    v = str(version)
    c.set_model_version_tag(name, v, "eyeops.gate", "passed" if decision.passed else "failed")
    c.set_model_version_tag(name, v, "eyeops.gate_reason", decision.reason)
    c.set_model_version_tag(name, v, "eyeops.gate_metric", decision.metric)
    if decision.value is not None:
        c.set_model_version_tag(name, v, "eyeops.gate_value", repr(decision.value))
    if decision.failed:
        c.set_model_version_tag(name, v, "eyeops.gate_failed", ",".join(decision.failed))
    c.set_model_version_tag(name, v, "eyeops.gate_checks", _checks_tag(decision))
    if decision.champion_value is not None:
        c.set_model_version_tag(name, v, "eyeops.champion_value", repr(decision.champion_value))
        c.set_model_version_tag(name, v, "eyeops.champion_version", str(decision.champion_version))
    if decision.passed:
        _set_champion(c, name, version)
    else:
        c.set_registered_model_alias(name, CHALLENGER, v)


# --- operations: promote, rollback, show ----------------------------------------------------------
class VersionInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    version: int
    aliases: list[str]
    run_id: str
    gate: str
    gate_reason: str
    gate_failed: list[str] = []
    metric: str
    value: float | None
    created: int


class RegisteredModelView(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    aliases: dict[str, int]
    versions: list[VersionInfo]


def _version_info(mv: ModelVersion, aliases: Mapping[str, int] | None = None) -> VersionInfo:
    tags = mv.tags or {}
    value = tags.get("eyeops.gate_value")
    # search_model_versions leaves ModelVersion.aliases empty: take them from the registered model.
    held = [a for a, v in aliases.items() if v == int(mv.version)] if aliases is not None else mv.aliases
    return VersionInfo(
        version=int(mv.version),
        aliases=sorted(held or []),
        run_id=mv.run_id or "",
        gate=tags.get("eyeops.gate", "unknown"),
        gate_reason=tags.get("eyeops.gate_reason", ""),
        gate_failed=[f for f in tags.get("eyeops.gate_failed", "").split(",") if f],
        metric=tags.get("eyeops.gate_metric", ""),
        value=float(value) if value else None,
        created=int(mv.creation_timestamp or 0),
    )


def _ref(mv: ModelVersion, name: str, alias: str, reason: str) -> ModelVersionRef:
    info = _version_info(mv)
    return ModelVersionRef(
        name=name,
        version=info.version,
        alias=alias,
        run_id=info.run_id,
        model_uri=f"models:/{name}/{info.version}",
        gate_passed=alias == CHAMPION,
        gate_reason=reason,
        metric=info.metric,
        value=info.value if info.value is not None else float("nan"),
    )


def _get_version(c: MlflowClient, name: str, version: int) -> ModelVersion:
    with mlflow_errors(f"model {name!r} version {version}"):
        return c.get_model_version(name, str(version))


def promote(name: str, version: int) -> ModelVersionRef:
    """Make ``version`` the champion by hand (the old champion keeps ``@previous``)."""
    c = client()
    _get_version(c, name, version)
    with mlflow_errors(f"promoting {name!r} v{version}"):
        _set_champion(c, name, version)
        c.set_model_version_tag(name, str(version), "eyeops.promoted", "manual")
    return _ref(_get_version(c, name, version), name, CHAMPION, "promoted manually")


def rollback(name: str) -> ModelVersionRef:
    """Restore ``@previous`` as champion; the demoted version is tagged and loses its alias."""
    c = client()
    with mlflow_errors(f"rolling back {name!r}"):
        c.get_registered_model(name)
        previous = _alias_version(c, name, PREVIOUS)
        if previous is None:
            raise RegistryError(f"model {name!r} has no @previous version to roll back to")
        current = _alias_version(c, name, CHAMPION)
        c.set_registered_model_alias(name, CHAMPION, previous.version)
        c.delete_registered_model_alias(name, PREVIOUS)
        if current is not None and current.version != previous.version:
            c.set_model_version_tag(name, current.version, "eyeops.rolled_back", "true")
    reason = f"rolled back from v{current.version}" if current is not None else "rolled back"
    return _ref(_get_version(c, name, int(previous.version)), name, CHAMPION, reason)


def show(name: str) -> RegisteredModelView:
    """Aliases and every version with its gate decision."""
    c = client()
    with mlflow_errors(f"model {name!r}"):
        model = c.get_registered_model(name)
        versions = c.search_model_versions(f"name = '{name}'")
    aliases = {alias: int(v) for alias, v in (model.aliases or {}).items()}
    return RegisteredModelView(
        name=name,
        aliases=aliases,
        versions=sorted((_version_info(v, aliases) for v in versions), key=lambda v: v.version),
    )


# --- loading for serving --------------------------------------------------------------------------
class ResolvedModel(NamedTuple):
    model_uri: str
    version: int | None
    model_dir: Path


_MODELS_URI = re.compile(
    r"^(?:models:/)?(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)(?:(?:@(?P<alias>[\w-]+))|"
    r"(?:/(?P<version>\d+)))?$"
)


def resolve(name_or_uri: str) -> ResolvedModel:
    """``name`` (= ``@champion``), ``name@alias``, ``name/3``, ``models:/…`` or a local directory →
    a pinned ``models:/name/N`` URI, its version, and a local family model directory."""
    path = Path(name_or_uri.removeprefix("file://"))
    if path.is_dir():
        return ResolvedModel(str(path), None, _family_dir(path))
    match = _MODELS_URI.match(name_or_uri)
    if not match:
        raise NotFoundError(
            f"{name_or_uri!r} is neither a directory nor a model reference "
            "(name, name@alias, name/N, models:/name@alias)"
        )
    name, alias, version = match["name"], match["alias"], match["version"]
    c = client()
    if version is None:
        alias = alias or CHAMPION
        with mlflow_errors(f"model {name!r}"):
            mv = _alias_version(c, name, alias)
        if mv is None:
            raise NotFoundError(f"model {name!r} has no @{alias} version")
        version = mv.version
    uri = f"models:/{name}/{int(version)}"
    return ResolvedModel(uri, int(version), load_model_dir(uri))


def _family_dir(mlflow_model_dir: Path) -> Path:
    """The family's directory inside a downloaded pyfunc model (or the dir itself if it is one)."""
    if not (mlflow_model_dir / "MLmodel").is_file():
        return mlflow_model_dir
    from mlflow.models import Model

    flavor = Model.load(str(mlflow_model_dir)).flavors.get("python_function", {})
    rel = (flavor.get("artifacts") or {}).get("model_dir", {}).get("path")
    if not rel:
        raise RegistryError(
            f"{mlflow_model_dir}: logged model has no 'model_dir' artifact (not an eyeops model)"
        )
    return mlflow_model_dir / rel


def load_model_dir(model_uri: str) -> Path:
    """Download a logged model and return the local family model directory inside it.

    Pinned ``models:/name/N`` URIs are cached under the storage root (a version never changes).
    """
    settings = get_settings()
    client()
    pinned = re.fullmatch(r"models:/([^/@]+)/(\d+)", model_uri)
    if pinned and settings.is_local_storage:
        target = storage.cache_dir("models") / pinned[1] / pinned[2]
        target.parent.mkdir(parents=True, exist_ok=True)
        local = storage.fill_once(target, lambda staging: _download(model_uri, staging))
    else:
        local = Path(tempfile.mkdtemp(prefix="eyeops-model-"))
        _download(model_uri, local)
    return _family_dir(local)


def _download(model_uri: str, dest: Path) -> None:
    with mlflow_errors(f"downloading {model_uri}"):
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dest)))
    if local.resolve() != dest.resolve():
        raise RegistryError(f"downloading {model_uri}: MLflow wrote it to {local}, not into {dest}")
