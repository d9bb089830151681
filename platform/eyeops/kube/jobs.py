"""The cluster paths of the train and deploy stages.

``train_on_cluster`` submits a KubeRay RayJob running ``python -m eyeops.train.job`` and waits for
it, streaming status; the job writes its ``CheckpointRef`` to S3, where this reads it back.
``deploy_on_cluster`` creates or patches a KServe InferenceService or a RayService for a registered
version and waits until it reports Ready.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from eyeops.config import get_settings
from eyeops.errors import ClusterError, ConfigError
from eyeops.kube.client import KubeClient, StatusCallback
from eyeops.kube.objects import (
    HF_RUNTIME_IMAGE,
    SERVER_IMAGE,
    TRAINER_IMAGE,
    GpuPool,
    build_hf_inference_service,
    build_inference_service,
    build_rayjob,
    build_rayservice,
    settings_secret_env,
)
from eyeops.kube.schema import validate_object
from eyeops.recipes import Recipe
from eyeops.refs import CheckpointRef, DatasetRef, Endpoint, ModelVersionRef
from eyeops.storage import read_ref

log = logging.getLogger(__name__)

_JOB_FAILED = {"FAILED", "STOPPED"}
_DEPLOYMENT_FAILED = {"Failed", "ValidationFailed"}


def describe_rayjob(live: dict[str, Any]) -> str:
    meta, status = live.get("metadata", {}), live.get("status") or {}
    parts = [f"RayJob {meta.get('name')}: {status.get('jobDeploymentStatus') or 'Pending'}"]
    if status.get("jobStatus"):
        parts.append(f"job {status['jobStatus']}")
    if status.get("message"):
        parts.append(status["message"])
    return " · ".join(parts)


def rayjob_done(live: dict[str, Any]) -> bool:
    """True when the job succeeded; ClusterError when it failed; False while it runs."""
    status = live.get("status") or {}
    job, deployment = status.get("jobStatus"), status.get("jobDeploymentStatus")
    if job in _JOB_FAILED or deployment in _DEPLOYMENT_FAILED:
        name = live.get("metadata", {}).get("name")
        raise ClusterError(
            f"RayJob {name} failed: jobDeploymentStatus={deployment}, jobStatus={job}, "
            f"reason={status.get('reason')!r}, message={status.get('message')!r}"
        )
    return job == "SUCCEEDED"


def train_on_cluster(
    recipe: Recipe,
    dataset: DatasetRef,
    *,
    run_name: str,
    image: str = TRAINER_IMAGE,
    pool: GpuPool | None = None,
    namespace: str | None = None,
    service_account: str | None = None,
    client: KubeClient | None = None,
    timeout_s: float = 6 * 3600,
    poll_s: float = 10.0,
    on_status: StatusCallback | None = None,
) -> CheckpointRef:
    """Train on the cluster through a RayJob and return the checkpoint it produced.

    The Ray pods run as ``service_account`` (default ``EYEOPS_KUBE_SERVICE_ACCOUNT``: the chart's
    Ray account, which its ConfigMap names for pipeline tasks), not the namespace's default one, and
    are labelled for ``EYEOPS_KUBE_RELEASE``'s NetworkPolicies.
    Idempotent under KFP retries: an existing RayJob of the same run is re-attached when it is still
    running or succeeded, and replaced when it failed.
    """
    settings = get_settings()
    if settings.is_local_storage:
        raise ClusterError(
            f"cluster training needs EYEOPS_STORAGE_ROOT on S3 (pods share nothing else); "
            f"got {settings.storage_root!r}"
        )
    storage_path = settings.path("runs", run_name)
    ref_out = settings.path("runs", run_name, "checkpoint_ref.json")
    job = build_rayjob(
        recipe,
        dataset,
        run_name=run_name,
        storage_path=storage_path,
        ref_out=ref_out,
        namespace=namespace or settings.kube_namespace,
        image=image,
        pool=pool,
        service_account=service_account or settings.kube_service_account,
        release=settings.kube_release,
        secret_env=settings_secret_env(settings),
    )
    validate_object(job)
    client = client or KubeClient.from_environment()
    existing = client.get(job)
    if existing is not None:
        try:
            rayjob_done(existing)
        except ClusterError as exc:
            log.warning("replacing failed RayJob from an earlier attempt: %s", exc)
            client.delete(job, wait_s=120, poll_s=poll_s)
            existing = None
    if existing is None:
        client.create(job)
    client.wait(
        job, rayjob_done, describe=describe_rayjob, timeout_s=timeout_s, poll_s=poll_s, on_status=on_status
    )
    return read_ref(ref_out, CheckpointRef)


def _conditions_ready(status: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def _runs_model_spec(isvc: dict[str, Any]) -> bool:
    """Whether an InferenceService's predictor is a KServe runtime's ``model`` (not ``containers``)."""
    return "model" in ((isvc.get("spec") or {}).get("predictor") or {})


def deploy_on_cluster(
    recipe: Recipe,
    version: ModelVersionRef,
    *,
    backend: Literal["kserve", "ray"],
    image: str = SERVER_IMAGE,
    pool: GpuPool | None = None,
    namespace: str | None = None,
    service_account: str | None = None,
    client: KubeClient | None = None,
    timeout_s: float = 1800,
    poll_s: float = 5.0,
    on_status: StatusCallback | None = None,
    storage_uri: str | None = None,
    hf_image: str | None = None,
) -> Endpoint:
    """Create or patch the serving object for ``version`` and wait until it is Ready.

    With ``serve.runtime: huggingface`` (backend kserve) the InferenceService runs KServe's Hugging
    Face runtime (``hf_image``) on the version's merged export: ``storage_uri``, by default where
    :func:`eyeops.models.llm.export.serving_uri` finds or publishes it.

    Its pods run as ``service_account``, by default the chart's account for the backend (the KServe
    predictor: ``EYEOPS_KUBE_MODEL_SERVICE_ACCOUNT``; Ray: ``EYEOPS_KUBE_SERVICE_ACCOUNT``, as the
    chart's RayService pods), labelled for ``EYEOPS_KUBE_RELEASE``'s NetworkPolicies.
    """
    settings = get_settings()
    ns = namespace or settings.kube_namespace
    common: dict[str, Any] = {
        "namespace": ns,
        "image": image,
        "pool": pool,
        "release": settings.kube_release,
        "model_cache_size": settings.kube_model_cache_size,
    }
    if backend == "kserve" and recipe.serve.runtime == "huggingface":
        # KServe's Hugging Face runtime serves the merged export the registry logged (llm only).
        from eyeops.models.llm.export import serving_uri

        account = service_account or settings.kube_model_service_account
        obj = build_hf_inference_service(
            recipe,
            version,
            storage_uri=storage_uri or serving_uri(version),
            service_account=account,
            **{**common, "image": hf_image or HF_RUNTIME_IMAGE},
        )
    elif backend == "kserve":
        account = service_account or settings.kube_model_service_account
        obj = build_inference_service(
            recipe, version, service_account=account, secret_env=settings_secret_env(settings), **common
        )
    elif backend == "ray":
        if recipe.serve.runtime == "huggingface":
            raise ConfigError(
                f"recipe {recipe.name!r}: serve.runtime 'huggingface' is a KServe runtime; "
                "deploy it with backend 'kserve', not 'ray'"
            )
        account = service_account or settings.kube_service_account
        obj = build_rayservice(
            recipe, version, service_account=account, secret_env=settings_secret_env(settings), **common
        )
    else:
        raise ClusterError(f"deploy backend {backend!r}: expected 'kserve' or 'ray'")
    validate_object(obj)
    client = client or KubeClient.from_environment()
    existing = client.get(obj) if obj["kind"] == "InferenceService" else None
    if existing is not None and _runs_model_spec(existing) != _runs_model_spec(obj):
        # A merge patch cannot swap the runtime: it would keep the old predictor container beside
        # the new model spec. The endpoint is replaced instead (brief downtime, same name and URL).
        log.warning("replacing InferenceService %s: its runtime changes", obj["metadata"]["name"])
        client.delete(obj, wait_s=120, poll_s=poll_s)
    client.apply(obj)
    kind, name = obj["kind"], obj["metadata"]["name"]

    def describe(live: dict[str, Any]) -> str:
        status = live.get("status") or {}
        ready = "Ready" if _conditions_ready(status) else (status.get("serviceStatus") or "NotReady")
        return f"{kind} {name}: {ready}" + (f" · {status['url']}" if status.get("url") else "")

    def done(live: dict[str, Any]) -> bool:
        status = live.get("status") or {}
        # A patched object is only ready once the controller has observed this generation.
        observed = status.get("observedGeneration")
        current = (live.get("metadata") or {}).get("generation")
        fresh = observed is None or current is None or observed >= current
        return fresh and (_conditions_ready(status) or status.get("serviceStatus") == "Running")

    live = client.wait(obj, done, describe=describe, timeout_s=timeout_s, poll_s=poll_s, on_status=on_status)
    url = (live.get("status") or {}).get("url") or (
        f"http://{name}-serve-svc.{ns}.svc.cluster.local:8000"
        if backend == "ray"
        else f"http://{name}-predictor.{ns}.svc.cluster.local"
    )
    return Endpoint(url=url, backend=backend, model_name=version.name, version=version.version)
