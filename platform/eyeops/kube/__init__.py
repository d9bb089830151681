"""The Kubernetes runtime: what builds objects and talks to the API server from a pipeline step or
a pod. Used by the pipeline's train/deploy steps and by the in-cluster entry points the chart runs;
needs only runtime dependencies (no helm, no kubectl, no checkout).

- builders of KubeRay RayJob / RayService and KServe InferenceService objects (``objects``; the
  eyeops server or, for ``serve.runtime: huggingface``, KServe's Hugging Face runtime), whose
  pods get the settings of ``pod_settings.yaml``, the one source the chart reads too (``pods``);
- a retrying Kubernetes API client (``client``) and the train/deploy stages over it (``jobs``);
- validation of custom resources against the vendored upstream CRDs (``schema``, ``crds/``);
- in-cluster entry points: ``python -m eyeops.kube.preflight`` (``helm test``),
  ``python -m eyeops.kube.kfp_upload`` (the pipeline upload Job) and the Ray Serve builder
  ``eyeops.kube.ray_service:app_builder`` (RayService ``serveConfigV2``).

Rendering, linting and policy-checking the chart is checkout tooling: :mod:`eyeops.chart`.
"""

from eyeops.kube.client import KubeClient
from eyeops.kube.jobs import deploy_on_cluster, describe_rayjob, rayjob_done, train_on_cluster
from eyeops.kube.objects import (
    CONFIG_KEYS,
    CONFIG_MAP,
    DEFAULT_CONFIG_ENV,
    DEFAULT_SECRET_ENV,
    HF_RUNTIME_IMAGE,
    SERVER_IMAGE,
    TRAINER_IMAGE,
    ConfigEnv,
    GpuPool,
    SecretEnv,
    Toleration,
    build_hf_inference_service,
    build_inference_service,
    build_rayjob,
    build_rayservice,
    k8s_name,
)
from eyeops.kube.schema import find_crd_dir, validate_object

__all__ = [
    "CONFIG_KEYS",
    "CONFIG_MAP",
    "DEFAULT_CONFIG_ENV",
    "DEFAULT_SECRET_ENV",
    "HF_RUNTIME_IMAGE",
    "SERVER_IMAGE",
    "TRAINER_IMAGE",
    "ConfigEnv",
    "GpuPool",
    "KubeClient",
    "SecretEnv",
    "Toleration",
    "build_hf_inference_service",
    "build_inference_service",
    "build_rayjob",
    "build_rayservice",
    "deploy_on_cluster",
    "describe_rayjob",
    "find_crd_dir",
    "k8s_name",
    "rayjob_done",
    "train_on_cluster",
    "validate_object",
]
