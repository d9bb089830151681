"""Builders for the Kubernetes custom resources eyeops creates on a cluster.

``build_rayjob`` (KubeRay ``ray.io/v1`` RayJob: CPU head + GPU worker group),
``build_inference_service`` (KServe ``serving.kserve.io/v1beta1``, Standard deployment mode) and
``build_rayservice`` (KubeRay RayService running the eyeops Ray Serve app). They return plain
dicts, ready for the Kubernetes API, and are validated against the upstream CRD schemas in tests.
Credentials never appear in an object: containers read them from Secrets through ``secretKeyRef``.
Their pods are assembled by :mod:`eyeops.kube.pods`: restricted, with the chart's emptyDirs,
ServiceAccounts and NetworkPolicy labels, so the chart's namespace admits and reaches them.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from eyeops import __version__
from eyeops.config import PlatformSettings
from eyeops.errors import ClusterError
from eyeops.kube.pods import (
    RAY_MOUNTS,
    TMP_MOUNT,
    container,
    pod_labels,
    pod_spec,
    ray_autoscaler_options,
    ray_pod_template,
    ray_volumes,
    standard_labels,
    submitter_pod_template,
    tmp_volume,
    with_autoscaler,
)
from eyeops.recipes import Recipe, ServeSpec
from eyeops.refs import DatasetRef, ModelVersionRef

# The images docker/Dockerfile.{trainer,server} build and the chart runs (values image.registry,
# image.<name>.repository, tag = chart appVersion = __version__): RayJobs and pipeline tasks run
# the trainer (CUDA torch, DeepSpeed), model endpoints the server.
TRAINER_IMAGE = f"ghcr.io/eyeops/eyeops-trainer:{__version__}"
SERVER_IMAGE = f"ghcr.io/eyeops/eyeops-server:{__version__}"
RAY_GROUP, RAY_VERSION = "ray.io", "v1"
KSERVE_GROUP, KSERVE_VERSION = "serving.kserve.io", "v1beta1"
# The chart's names for release "eyeops" (the settings' defaults; pipeline tasks read the installed
# release's from the ConfigMap): the predictor runs as the model account, Ray pods (RayJob and
# RayService alike, as in the chart) as the Ray account; labels name the release so the chart's
# NetworkPolicies select the pods.
_FIELDS = PlatformSettings.model_fields
RELEASE: str = _FIELDS["kube_release"].default
RAY_SERVICE_ACCOUNT: str = _FIELDS["kube_service_account"].default
MODEL_SERVICE_ACCOUNT: str = _FIELDS["kube_model_service_account"].default
# /tmp of serving pods, where the model is downloaded and loaded (chart values modelCacheSize).
MODEL_CACHE_SIZE: str = _FIELDS["kube_model_cache_size"].default
# What the predictors' readiness probes ask (eyeops.serve.gateway's /readyz).
READINESS_PATH = "/readyz"
# KServe's Hugging Face runtime (vLLM backend) for `serve.runtime: huggingface`: pinned, like every
# image here (match it to the cluster's KServe release; chart values huggingfaceRuntime.image).
HF_RUNTIME_IMAGE = "kserve/huggingfaceserver:v0.18.0-gpu"
HF_MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts storageUri
HF_READINESS_PATH = "/v2/health/ready"  # the KServe model server's readiness route
HF_RUNTIME_ENV = {"HOME": "/tmp", "HF_HOME": "/tmp/hf", "HF_HUB_OFFLINE": "1"}


class Toleration(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    key: str
    operator: str = "Exists"
    value: str | None = None
    effect: str = "NoSchedule"

    def as_k8s(self) -> dict[str, str]:
        return self.model_dump(exclude_none=True)


class _EnvFrom(BaseModel):
    """One env var filled from a key of a named object (``valueFrom``), never from a literal."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    env: str
    key: str
    optional: bool = True

    def _value_from(self, ref: str, name: str) -> dict[str, Any]:
        return {
            "name": self.env,
            "valueFrom": {ref: {"name": name, "key": self.key, "optional": self.optional}},
        }


class SecretEnv(_EnvFrom):
    """One env var filled from a Secret key (``secretKeyRef``), never from a literal."""

    secret: str

    def as_k8s(self) -> dict[str, Any]:
        return self._value_from("secretKeyRef", self.secret)


class ConfigEnv(_EnvFrom):
    """One env var filled from a ConfigMap key (``configMapKeyRef``): non-secret cluster settings."""

    config_map: str

    def as_k8s(self) -> dict[str, Any]:
        return self._value_from("configMapKeyRef", self.config_map)


class GpuPool(BaseModel):
    """Where GPU work runs: the resource name, how many per pod, and how to land on the GPU nodes."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    accelerator: str = Field("nvidia.com/gpu", description="Extended resource name requested as a limit.")
    gpus_per_worker: int = Field(1, ge=0)
    node_selector: dict[str, str] = Field(default_factory=lambda: {"eyeops.io/pool": "gpu"})
    tolerations: list[Toleration] = Field(
        default_factory=lambda: [Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")]
    )

    def placement(self) -> dict[str, Any]:
        """The pod-spec fields that land a pod on this pool's nodes."""
        return {
            "nodeSelector": dict(self.node_selector),
            "tolerations": [t.as_k8s() for t in self.tolerations],
        }


# The Secret the Helm chart names (values s3.existingSecret, keys s3.accessKeyIdKey/secretAccessKeyKey).
DEFAULT_SECRET_ENV: tuple[SecretEnv, ...] = (
    SecretEnv(env="AWS_ACCESS_KEY_ID", secret="eyeops-s3", key="AWS_ACCESS_KEY_ID"),
    SecretEnv(env="AWS_SECRET_ACCESS_KEY", secret="eyeops-s3", key="AWS_SECRET_ACCESS_KEY"),
)
# Where the cluster keeps data and tracks runs, which namespace and ServiceAccount RayJobs use, and
# whether pods may reach the Hugging Face Hub: plain settings in one ConfigMap keyed by env name.
# The chart ships it under this fixed name (values clusterConfig.name) from the values its own pods
# use; a missing key leaves the variable unset (the images default HF_HUB_OFFLINE to 1).
CONFIG_MAP = "eyeops-config"
CONFIG_KEYS = (
    "EYEOPS_STORAGE_ROOT",
    "EYEOPS_MLFLOW_TRACKING_URI",
    "EYEOPS_S3_ENDPOINT_URL",
    "EYEOPS_KUBE_NAMESPACE",
    "EYEOPS_KUBE_SERVICE_ACCOUNT",
    "EYEOPS_KUBE_MODEL_SERVICE_ACCOUNT",
    "EYEOPS_KUBE_MODEL_CACHE_SIZE",
    "EYEOPS_KUBE_RELEASE",
    "EYEOPS_KUBE_HF_TOKEN_SECRET",
    "EYEOPS_KUBE_HF_TOKEN_KEY",
    "HF_HUB_OFFLINE",
)
DEFAULT_CONFIG_ENV: tuple[ConfigEnv, ...] = tuple(
    ConfigEnv(env=name, config_map=CONFIG_MAP, key=name) for name in CONFIG_KEYS
)


# The Hugging Face token of gated repos (Llama-3.x) in the pipeline's own tasks: compiled in, so a
# fixed Secret name, optional (no Secret, no token). The pods the pipeline creates take the Secret the
# chart's huggingface.tokenSecret names instead, from its ConfigMap (:func:`settings_secret_env`).
HF_TOKEN_SECRET = SecretEnv(env=_FIELDS["hf_token_env"].default, secret="eyeops-hf-token", key="token")
# The key of the OpenAI-compatible endpoint the LLM data engine calls (data.engine.llm), for the
# pipeline's prepare task only: Secret eyeops-llm-api-key, key token, optional, as the env var that
# data.engine.llm.api_key_env names by default.
LLM_API_KEY_SECRET = SecretEnv(env="EYEOPS_LLM_API_KEY", secret="eyeops-llm-api-key", key="token")


def settings_secret_env(settings: PlatformSettings) -> tuple[SecretEnv, ...]:
    """The credentials of the pods built here: the S3 keys, and the Hugging Face token (as the env
    var ``hf_token_env`` names) when the settings name its Secret. A named Secret is required: a
    missing one stops the pod with a clear event instead of a 401 deep inside a model load."""
    if not settings.kube_hf_token_secret:
        return DEFAULT_SECRET_ENV
    token = SecretEnv(
        env=settings.hf_token_env,
        secret=settings.kube_hf_token_secret,
        key=settings.kube_hf_token_key,
        optional=False,
    )
    return (*DEFAULT_SECRET_ENV, token)


def k8s_name(*parts: str, max_len: int = 63) -> str:
    """A DNS-1123 label from free text (lowercase, '-', ≤ 63 chars, alphanumeric at both ends)."""
    name = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")
    name = re.sub(r"-{2,}", "-", name)[:max_len].strip("-")
    if not name:
        raise ClusterError(f"cannot derive a Kubernetes name from {parts!r}")
    return name


def _env(
    secret_env: tuple[SecretEnv, ...],
    plain: dict[str, str] | None = None,
    config_env: tuple[ConfigEnv, ...] = DEFAULT_CONFIG_ENV,
) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted((plain or {}).items())]
    return env + [ref.as_k8s() for ref in (*secret_env, *config_env)]


def _labels(component: str, recipe: Recipe, release: str) -> dict[str, str]:
    return {**standard_labels(component, release), "eyeops.io/recipe": recipe.name}


def _metadata(name: str, namespace: str, labels: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": labels, **extra}


def _ray_cluster(
    ray_version: str | None,
    head_template: dict[str, Any],
    *,
    group: str,
    replicas: int,
    min_replicas: int,
    max_replicas: int,
    worker_template: dict[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    """A KubeRay cluster spec: a head that schedules (num-cpus 0, never trains/serves) and one
    worker group. In-tree autoscaling brings ``autoscalerOptions`` (the sidecar must be restricted
    too) and the head's token and API access (the sidecar scales through the Kubernetes API)."""
    import ray

    if extra.get("enableInTreeAutoscaling"):
        extra = {**extra, "autoscalerOptions": ray_autoscaler_options()}
        head_template = with_autoscaler(head_template)
    return {
        "rayVersion": ray_version or ray.__version__,
        **extra,
        "headGroupSpec": {"rayStartParams": {"num-cpus": "0"}, "template": head_template},
        "workerGroupSpecs": [
            {
                "groupName": group,
                "replicas": replicas,
                "minReplicas": min_replicas,
                "maxReplicas": max_replicas,
                "rayStartParams": {},
                "template": worker_template,
            }
        ],
    }


def _ray_head(image: str, env: list[dict[str, Any]], ports: list[dict[str, Any]]) -> dict[str, Any]:
    """The head container: small (it schedules, ``num-cpus 0``), exposing ``ports``."""
    return container("ray-head", image, env, _resources("1", "4Gi"), RAY_MOUNTS, ports=ports)


def _ray_worker(image: str, env: list[dict[str, Any]], resources: dict[str, Any]) -> dict[str, Any]:
    return container("ray-worker", image, env, resources, RAY_MOUNTS)


def _resources(cpu: str, memory: str, gpus: int = 0, accelerator: str = "nvidia.com/gpu") -> dict[str, Any]:
    limits: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if gpus:
        limits[accelerator] = gpus
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": limits}


def rayjob_entrypoint(
    recipe: Recipe, dataset: DatasetRef, *, run_name: str, storage_path: str, ref_out: str
) -> str:
    """The shell command the RayJob runs: ``python -m eyeops.train.job`` with the resolved recipe."""
    recipe_json = json.dumps(recipe.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return shlex.join(
        [
            "python",
            "-m",
            "eyeops.train.job",
            "--recipe-json",
            recipe_json,
            "--dataset-json",
            dataset.model_dump_json(),
            "--run-name",
            run_name,
            "--storage-path",
            storage_path,
            "--ref-out",
            ref_out,
        ]
    )


def build_rayjob(
    recipe: Recipe,
    dataset: DatasetRef,
    *,
    run_name: str,
    storage_path: str,
    ref_out: str,
    namespace: str,
    image: str = TRAINER_IMAGE,
    pool: GpuPool | None = None,
    secret_env: tuple[SecretEnv, ...] = DEFAULT_SECRET_ENV,
    ray_version: str | None = None,
    ttl_seconds: int = 600,
    active_deadline_seconds: int | None = None,
    service_account: str = RAY_SERVICE_ACCOUNT,
    release: str = RELEASE,
) -> dict[str, Any]:
    """A KubeRay RayJob training ``recipe`` on ``dataset``: CPU head, one worker per Ray Train worker.

    Workers request ``pool.gpus_per_worker`` GPUs and carry the pool's nodeSelector/tolerations when
    the recipe trains on GPU; the cluster is torn down when the job ends
    (``shutdownAfterJobFinishes``). Checkpoints and the resulting ``CheckpointRef`` go to S3.
    Every pod, the submitter KubeRay starts included, passes the ``restricted`` Pod Security
    Standard and carries the labels ``release``'s NetworkPolicies select.
    """
    if not storage_path.startswith("s3://") or not ref_out.startswith("s3://"):
        raise ClusterError(
            f"RayJob storage must be on S3 so every pod sees it; got storage_path="
            f"{storage_path!r}, ref_out={ref_out!r}"
        )
    use_gpu = recipe.train.use_gpu
    pool = pool or GpuPool()
    workers = recipe.train.num_workers
    # EYEOPS_RAY_ADDRESS=auto: the entrypoint joins the cluster KubeRay made instead of starting one.
    env = _env(
        secret_env,
        {
            "EYEOPS_MODE": "cluster",
            "EYEOPS_RAY_ADDRESS": "auto",
            "RAY_USAGE_STATS_ENABLED": "0",
        },
    )
    head = _ray_head(
        image,
        env,
        [
            {"containerPort": 6379, "name": "gcs"},
            {"containerPort": 8265, "name": "dashboard"},
            {"containerPort": 10001, "name": "client"},
        ],
    )
    cpus = str(max(1, int(recipe.train.resources_per_worker.get("CPU", 1))))
    worker = _ray_worker(
        image, env, _resources(cpus, "8Gi", pool.gpus_per_worker if use_gpu else 0, pool.accelerator)
    )
    ray_pod = {"component": "training", "release": release, "service_account": service_account}
    spec: dict[str, Any] = {
        "entrypoint": rayjob_entrypoint(
            recipe, dataset, run_name=run_name, storage_path=storage_path, ref_out=ref_out
        ),
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": ttl_seconds,
        "submissionMode": "K8sJobMode",
        # Ray Train's FailureConfig already retries workers; a failed job is not resubmitted blindly.
        "backoffLimit": 0,
        "submitterPodTemplate": submitter_pod_template(
            image, service_account=service_account, release=release
        ),
        "rayClusterSpec": _ray_cluster(
            ray_version,
            ray_pod_template(head, ray_node="head", **ray_pod),
            group="gpu-workers" if use_gpu else "cpu-workers",
            replicas=workers,
            min_replicas=workers,
            max_replicas=workers,
            worker_template=ray_pod_template(
                worker, ray_node="worker", placement=pool.placement() if use_gpu else None, **ray_pod
            ),
        ),
    }
    if active_deadline_seconds:
        spec["activeDeadlineSeconds"] = active_deadline_seconds
    return {
        "apiVersion": f"{RAY_GROUP}/{RAY_VERSION}",
        "kind": "RayJob",
        "metadata": _metadata(k8s_name("train", run_name), namespace, _labels("training", recipe, release)),
        "spec": spec,
    }


def _serving_labels(recipe: Recipe, version: ModelVersionRef, release: str) -> dict[str, str]:
    # component "model": the chart's gateway may reach these pods, and they take no other ingress.
    return {**_labels("model", recipe, release), "eyeops.io/model-version": str(version.version)}


def _serving_env(version: ModelVersionRef) -> dict[str, str]:
    # Serve the exact registered version the pipeline just gated, not whatever @champion is later.
    return {
        "EYEOPS_MODE": "cluster",
        "EYEOPS_SERVE_MODEL_URI": version.model_uri,
        "EYEOPS_SERVE_MODEL_NAME": version.name,
    }


def device_args(serve: ServeSpec) -> list[str]:
    """``--device`` of ``eyeops serve`` for ``serve.device``; none for auto (the saved recipe, then
    the pod's EYEOPS_DEVICE, decide)."""
    return [] if serve.device == "auto" else ["--device", serve.device]


def build_inference_service(
    recipe: Recipe,
    version: ModelVersionRef,
    *,
    namespace: str,
    image: str = SERVER_IMAGE,
    pool: GpuPool | None = None,
    secret_env: tuple[SecretEnv, ...] = DEFAULT_SECRET_ENV,
    service_account: str = MODEL_SERVICE_ACCOUNT,
    release: str = RELEASE,
    model_cache_size: str = MODEL_CACHE_SIZE,
) -> dict[str, Any]:
    """A KServe InferenceService (Standard deployment mode, HPA on concurrency) for ``version``;
    its predictor pods are restricted and labelled like the chart's (MLflow/S3 clients, gateway peers)
    and load the model into a /tmp of ``model_cache_size``, on ``serve.device`` unless it is auto."""
    serve = recipe.serve
    pool = pool or GpuPool()
    predictor_container = container(
        "kserve-container",
        image,
        _env(secret_env, _serving_env(version)),
        _resources("1", "4Gi", serve.gpu, pool.accelerator),
        [TMP_MOUNT],
        # The KServe face of `eyeops serve` (kserve.ModelServer: v1 :predict and v2 /infer).
        command=["eyeops", "serve"],
        args=[
            *("--backend", "kserve", "--host", "0.0.0.0", "--port", "8080", "--model", version.model_uri),
            *device_args(serve),
        ],
        ports=[{"containerPort": 8080, "protocol": "TCP"}],
        # The gateway's /readyz, which every face of `eyeops serve` answers: 503 until the model is
        # loaded, no API key needed (the chart's predictor probes the same).
        readinessProbe={"httpGet": {"path": READINESS_PATH, "port": 8080}, "periodSeconds": 5},
    )
    pod = pod_spec(
        predictor_container,
        [tmp_volume(model_cache_size)],
        service_account=service_account,
        placement=pool.placement() if serve.gpu else None,
    )
    return _inference_service(recipe, version, namespace, release, pod)


def _inference_service(
    recipe: Recipe, version: ModelVersionRef, namespace: str, release: str, pod: dict[str, Any]
) -> dict[str, Any]:
    """The InferenceService around a predictor ``pod`` (Standard mode, concurrency autoscaling),
    labelled so the chart's NetworkPolicies admit its pods as model pods."""
    serve = recipe.serve
    labels = {**pod_labels("model", release), "eyeops.io/model": k8s_name(version.name, max_len=45)}
    predictor: dict[str, Any] = {
        "minReplicas": serve.min_replicas,
        "maxReplicas": serve.max_replicas,
        "scaleMetric": "concurrency",
        "scaleTarget": max(1, int(serve.target_ongoing_requests)),
        "labels": labels,
        **pod,
    }
    return {
        "apiVersion": f"{KSERVE_GROUP}/{KSERVE_VERSION}",
        "kind": "InferenceService",
        "metadata": _metadata(
            k8s_name(version.name, max_len=45),
            namespace,
            _serving_labels(recipe, version, release),
            annotations={"serving.kserve.io/deploymentMode": "Standard"},
        ),
        "spec": {"predictor": predictor},
    }


def hf_runtime_args(model_name: str, max_model_len: int, gpus: int) -> list[str]:
    """Arguments of KServe's Hugging Face server (vLLM backend) for a downloaded export."""
    args = [f"--model_name={model_name}", f"--model_dir={HF_MODEL_DIR}", f"--max_model_len={max_model_len}"]
    if gpus > 1:
        args.append(f"--tensor_parallel_size={gpus}")
    return args


def build_hf_inference_service(
    recipe: Recipe,
    version: ModelVersionRef,
    *,
    storage_uri: str,
    namespace: str,
    image: str = HF_RUNTIME_IMAGE,
    pool: GpuPool | None = None,
    service_account: str = MODEL_SERVICE_ACCOUNT,
    release: str = RELEASE,
    model_cache_size: str = MODEL_CACHE_SIZE,
) -> dict[str, Any]:
    """An InferenceService on KServe's Hugging Face runtime (``modelFormat: huggingface``, vLLM
    backend, OpenAI-compatible routes) serving ``version``'s merged export at ``storage_uri``
    (``eyeops.models.llm.export.serving_uri``), which KServe's storage initializer downloads to
    /mnt/models. Pods, labels and autoscaling are those of :func:`build_inference_service`; the
    recipe's ``serve.gpu`` GPUs go to the model container (``--tensor_parallel_size`` above 1)."""
    serve = recipe.serve
    if serve.runtime != "huggingface":
        raise ClusterError(f"recipe {recipe.name!r}: serve.runtime is {serve.runtime!r}, not 'huggingface'")
    if not storage_uri.startswith("s3://"):
        raise ClusterError(f"the Hugging Face runtime downloads the export from S3; got {storage_uri!r}")
    pool = pool or GpuPool()
    max_model_len = serve.max_model_len or int(getattr(recipe.model, "max_seq_len", 0) or 0)
    # HOME and the HF/vLLM caches on the writable /tmp (read-only root); the export is local.
    env = [{"name": k, "value": v} for k, v in sorted(HF_RUNTIME_ENV.items())]
    model = container(
        "kserve-container",
        image,
        env,
        _resources("2", "16Gi", serve.gpu, pool.accelerator),
        RAY_MOUNTS,  # /tmp and an in-memory /dev/shm (vLLM's tensor-parallel workers share it)
        args=hf_runtime_args(k8s_name(version.name, max_len=45), max_model_len, serve.gpu),
        ports=[{"containerPort": 8080, "protocol": "TCP"}],
        readinessProbe={"httpGet": {"path": HF_READINESS_PATH, "port": 8080}, "periodSeconds": 10},
    )
    pod = pod_spec(
        {"modelFormat": {"name": "huggingface"}, "storageUri": storage_uri, **model},
        ray_volumes(model_cache_size),
        service_account=service_account,
        placement=pool.placement() if serve.gpu else None,
    )
    pod["model"] = pod.pop("containers")[0]
    return _inference_service(recipe, version, namespace, release, pod)


def build_rayservice(
    recipe: Recipe,
    version: ModelVersionRef,
    *,
    namespace: str,
    image: str = SERVER_IMAGE,
    pool: GpuPool | None = None,
    secret_env: tuple[SecretEnv, ...] = DEFAULT_SECRET_ENV,
    ray_version: str | None = None,
    service_account: str = RAY_SERVICE_ACCOUNT,
    release: str = RELEASE,
    model_cache_size: str = MODEL_CACHE_SIZE,
) -> dict[str, Any]:
    """A KubeRay RayService running the eyeops Ray Serve app with the recipe's autoscaling; its Ray
    pods are restricted, run as the Ray account and are labelled like the chart's RayService pods.
    Its head mounts the account's token for KubeRay's autoscaler sidecar (the chart's
    ray-autoscaler Role grants the Ray account what it needs; another account needs the same)."""
    serve = recipe.serve
    pool = pool or GpuPool()
    serve_config = {
        "applications": [
            {
                "name": k8s_name(version.name),
                "route_prefix": "/",
                "import_path": "eyeops.kube.ray_service:app_builder",
                "args": {
                    "model_uri": version.model_uri,
                    "model_name": version.name,
                    # serve.device: a deployment may load elsewhere than the model was saved for.
                    **({} if serve.device == "auto" else {"device": serve.device}),
                },
                "deployments": [
                    {
                        "name": "EyeopsModel",
                        "autoscaling_config": {
                            "min_replicas": serve.min_replicas,
                            "max_replicas": serve.max_replicas,
                            "target_ongoing_requests": serve.target_ongoing_requests,
                        },
                        "ray_actor_options": {"num_gpus": serve.gpu},
                    }
                ],
            }
        ]
    }
    env = _env(secret_env, _serving_env(version))
    head = _ray_head(
        image, env, [{"containerPort": 8000, "name": "serve"}, {"containerPort": 8265, "name": "dashboard"}]
    )
    worker = _ray_worker(image, env, _resources("2", "8Gi", serve.gpu, pool.accelerator))
    ray_pod = {
        "component": "model",
        "release": release,
        "service_account": service_account,
        "tmp_size": model_cache_size,
    }
    return {
        "apiVersion": f"{RAY_GROUP}/{RAY_VERSION}",
        "kind": "RayService",
        "metadata": _metadata(
            k8s_name(version.name, max_len=45), namespace, _serving_labels(recipe, version, release)
        ),
        "spec": {
            # sort_keys: the same version always renders the same string, so patches are no-ops.
            "serveConfigV2": yaml.safe_dump(serve_config, sort_keys=True),
            "rayClusterConfig": _ray_cluster(
                ray_version,
                ray_pod_template(head, ray_node="head", restart_policy="Always", **ray_pod),
                group="serve-workers",
                replicas=max(1, serve.min_replicas),
                min_replicas=max(1, serve.min_replicas),
                max_replicas=serve.max_replicas,
                worker_template=ray_pod_template(
                    worker,
                    ray_node="worker",
                    placement=pool.placement() if serve.gpu else None,
                    restart_policy="Always",
                    **ray_pod,
                ),
                enableInTreeAutoscaling=True,
            ),
        },
    }
