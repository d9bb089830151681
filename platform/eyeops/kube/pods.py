"""What every pod eyeops.kube builds needs to be admitted and reachable where the chart runs.

The chart's namespace enforces the ``restricted`` Pod Security Standard and default-deny
NetworkPolicies, so a pod the pipeline submits must carry the same security contexts, writable
emptyDirs and policy labels as the chart's own pods. Those settings live in one file,
``pod_settings.yaml`` (package data, read here once); the chart's helpers read its copy
``helm/eyeops/files/pod-settings.yaml``, which tests/k8s/test_pod_settings.py keeps current.
"""

from __future__ import annotations

import copy
from functools import cache
from importlib import resources
from typing import Any, Literal

import yaml

from eyeops import __version__

RayNode = Literal["head", "worker", "submitter"]
TMP_MOUNT = {"name": "tmp", "mountPath": "/tmp"}
RAY_MOUNTS = [TMP_MOUNT, {"name": "shm", "mountPath": "/dev/shm"}]


@cache
def _settings() -> dict[str, Any]:
    text = resources.files("eyeops.kube").joinpath("pod_settings.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def pod_settings() -> dict[str, Any]:
    """A copy of ``pod_settings.yaml``: the pod settings the chart and the builders share."""
    return copy.deepcopy(_settings())


def pod_security_context() -> dict[str, Any]:
    """Pod-level ``securityContext`` of the restricted profile (chart: eyeops.podSecurityContext)."""
    return pod_settings()["podSecurityContext"]


def container_security_context() -> dict[str, Any]:
    """Container ``securityContext`` (chart: eyeops.containerSecurityContext); the root filesystem
    is read-only, so every writable path is an emptyDir mount."""
    return pod_settings()["containerSecurityContext"]


def tmp_volume(size: str | None = None) -> dict[str, Any]:
    """The ``tmp`` emptyDir, of the settings' ``tmp`` size unless ``size`` (a model cache) is given."""
    return {"name": "tmp", "emptyDir": {"sizeLimit": size or _settings()["volumeSizes"]["tmp"]}}


def ray_volumes(tmp_size: str | None = None) -> list[dict[str, Any]]:
    """Ray writes sessions and logs to /tmp and keeps its object store in an in-memory /dev/shm;
    serving pods also load their model into /tmp (``tmp_size``: the chart's modelCacheSize)."""
    sizes = _settings()["volumeSizes"]
    return [
        tmp_volume(tmp_size or sizes["rayTmp"]),
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": sizes["shm"]}},
    ]


def selector_labels(component: str, release: str) -> dict[str, str]:
    """The chart's selector labels (eyeops.selectorLabels): the DNS policy selects the instance, the
    gateway/model policies the component ``model``."""
    return {
        "app.kubernetes.io/name": "eyeops",
        "app.kubernetes.io/instance": release,
        "app.kubernetes.io/component": component,
    }


def standard_labels(component: str, release: str) -> dict[str, str]:
    """Selector labels plus the ``app.kubernetes.io/*`` labels every eyeops object carries."""
    return {
        **selector_labels(component, release),
        "app.kubernetes.io/part-of": "eyeops",
        "app.kubernetes.io/version": __version__,
    }


def pod_labels(component: str, release: str, *, ray_node: RayNode | None = None) -> dict[str, str]:
    """Labels of a pod the pipeline creates: it resolves DNS, reaches MLflow and S3, and (Ray) its
    own cluster's nodes, under the chart's default-deny NetworkPolicies."""
    settings = _settings()["labels"]
    labels = {**standard_labels(component, release)}
    if ray_node is not None:
        labels[settings["rayNode"]] = ray_node
    if ray_node != "submitter":  # the submitter only talks to the head's job API
        labels.update(settings["clients"])
    return labels


def ray_autoscaler_options() -> dict[str, Any]:
    """KubeRay injects the autoscaler sidecar into the head pod: without a restricted
    securityContext of its own the whole head pod is refused (chart: eyeops.rayAutoscalerOptions)."""
    return {**pod_settings()["rayAutoscalerOptions"], "securityContext": container_security_context()}


def container(
    name: str,
    image: str,
    env: list[dict[str, Any]],
    resources: dict[str, Any],
    mounts: list[dict[str, Any]],
    **extra: Any,
) -> dict[str, Any]:
    """One container, restricted, with ``mounts`` (its writable paths)."""
    return {
        "name": name,
        "image": image,
        "env": env,
        "resources": resources,
        **extra,
        "securityContext": container_security_context(),
        "volumeMounts": [dict(m) for m in mounts],
    }


def pod_spec(
    main: dict[str, Any],
    volumes: list[dict[str, Any]],
    *,
    service_account: str,
    placement: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Pod-spec fields of every pod built here: restricted security, the writable emptyDirs, an
    account whose token is not mounted (their own containers never call the Kubernetes API; see
    :func:`with_autoscaler` for the one exception)."""
    spec: dict[str, Any] = {
        "serviceAccountName": service_account,
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(),
        "containers": [main],
        "volumes": volumes,
    }
    spec.update(placement or {})
    return spec


def ray_pod_template(
    main: dict[str, Any],
    *,
    component: str,
    release: str,
    ray_node: RayNode,
    service_account: str,
    placement: dict[str, Any] | None = None,
    restart_policy: str = "Never",
    tmp_size: str | None = None,
) -> dict[str, Any]:
    """A Ray head or worker pod template (chart: eyeops.rayPodTemplate)."""
    volumes = ray_volumes(tmp_size)
    spec = pod_spec(main, volumes, service_account=service_account, placement=placement)
    return {
        "metadata": {"labels": pod_labels(component, release, ray_node=ray_node)},
        "spec": {**spec, "restartPolicy": restart_policy},
    }


def with_autoscaler(head_template: dict[str, Any]) -> dict[str, Any]:
    """The head of a cluster with KubeRay's in-tree autoscaler: the sidecar KubeRay injects lists,
    watches and patches pods and patches the RayCluster with this pod's ServiceAccount token, so the
    token is mounted here (only here) and the label opens the API server to it under default-deny
    (chart: eyeops.rayPodTemplate "autoscaler"; rbac.yaml's ray-autoscaler Role grants the account)."""
    template = copy.deepcopy(head_template)
    template["metadata"]["labels"].update(_settings()["labels"]["autoscaler"])
    template["spec"]["automountServiceAccountToken"] = True
    return template


def submitter_pod_template(image: str, *, service_account: str, release: str) -> dict[str, Any]:
    """The pod KubeRay runs ``ray job submit`` in (K8sJobMode; it fills in the command). Without
    this template KubeRay's default pod has no securityContext and the restricted namespace
    refuses it, so the job never starts."""
    submitter = container(
        "ray-job-submitter",
        image,
        [{"name": "HOME", "value": "/tmp"}],
        pod_settings()["submitterResources"],
        [TMP_MOUNT],
    )
    spec = pod_spec(submitter, [tmp_volume()], service_account=service_account)
    return {
        "metadata": {"labels": pod_labels("training", release, ray_node="submitter")},
        "spec": {**spec, "restartPolicy": "Never"},
    }
