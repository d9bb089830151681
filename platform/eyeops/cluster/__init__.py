"""Cluster paths: KubeRay RayJob / RayService and KServe InferenceService builders, a retrying
Kubernetes API client, and the train/deploy stages that run through them."""

from eyeops.cluster.client import KubeClient
from eyeops.cluster.jobs import deploy_on_cluster, describe_rayjob, rayjob_done, train_on_cluster
from eyeops.cluster.objects import (
    CONFIG_KEYS,
    CONFIG_MAP,
    DEFAULT_CONFIG_ENV,
    DEFAULT_SECRET_ENV,
    SERVER_IMAGE,
    TRAINER_IMAGE,
    ConfigEnv,
    GpuPool,
    SecretEnv,
    Toleration,
    build_inference_service,
    build_rayjob,
    build_rayservice,
    k8s_name,
)
from eyeops.k8s.validate import find_crd_dir, validate_object

__all__ = [
    "CONFIG_KEYS",
    "CONFIG_MAP",
    "DEFAULT_CONFIG_ENV",
    "DEFAULT_SECRET_ENV",
    "SERVER_IMAGE",
    "TRAINER_IMAGE",
    "ConfigEnv",
    "GpuPool",
    "KubeClient",
    "SecretEnv",
    "Toleration",
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
