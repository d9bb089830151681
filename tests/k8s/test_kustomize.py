"""The kustomize base and overlays: they build offline, validate like the chart, follow the same
policies, and the base is exactly what the chart renders (no drift)."""

from __future__ import annotations

import pytest
from eyeops_testing.k8s import one

from eyeops.chart import MANIFESTS_DIR, check_all, kustomize_build
from eyeops.chart.manifests import drift
from eyeops.chart.validate import validate_core
from eyeops.kube.schema import validate_custom

CUSTOM_KINDS = {"InferenceService", "RayJob", "RayCluster", "RayService"}
OVERLAYS = ("cpu-dev", "gpu")


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict]]:
    return {name: kustomize_build(MANIFESTS_DIR / "overlays" / name) for name in OVERLAYS}


def test_base_matches_the_chart():
    assert drift() == [], "run `python -m eyeops.chart.manifests` and commit manifests/base"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_and_follows_policies(built, overlay, crd_schemas):
    objs = built[overlay]
    assert {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"} == {"eyeops"}
    problems = [
        p
        for o in objs
        for p in (validate_custom(o, crd_schemas) if o["kind"] in CUSTOM_KINDS else validate_core(o))
    ]
    assert problems == []
    assert check_all(objs) == []
    ns = one(objs, "Namespace", "eyeops")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert all(o["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kustomize" for o in objs)
    assert not any(o["kind"] == "Pod" or "helm.sh/chart" in o["metadata"]["labels"] for o in objs)


def test_gpu_overlay_requests_gpus_on_the_gpu_pool(built):
    objs = built["gpu"]
    predictor = one(objs, "InferenceService", "fundus-classifier")["spec"]["predictor"]
    assert predictor["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert predictor["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    (group,) = one(objs, "RayCluster", "eyeops-training")["spec"]["workerGroupSpecs"]
    assert (
        group["groupName"] == "gpu"
        and group["template"]["metadata"]["labels"]["eyeops.io/worker-group"] == "gpu"
    )
    assert group["template"]["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert group["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    serve = one(objs, "RayService", "eye-llm")["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert serve["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    cpu = built["cpu-dev"]
    assert not any("nvidia.com/gpu" in str(o) for o in cpu)
    assert one(cpu, "HorizontalPodAutoscaler", "eyeops-gateway")["spec"]["minReplicas"] == 1
    assert one(cpu, "InferenceService")["spec"]["predictor"]["maxReplicas"] == 1
