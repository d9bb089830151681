"""One source of pod settings: ``eyeops/kube/pod_settings.yaml``. The builders read it; the chart
reads its copy ``files/pod-settings.yaml``. Checked here: the copy is current, and what the source
says is what both sides put into every pod (so editing the source changes the chart's pods)."""

from __future__ import annotations

import shutil

import pytest
import yaml
from eyeops_testing.k8s import SCENARIOS, find
from test_built_pods import _built, _pods, _with_template

from eyeops.chart import CHART_DIR, helm_template
from eyeops.chart.pod_settings import CHART_COPY, is_current, source_text
from eyeops.kube.pods import pod_settings, ray_autoscaler_options

SETTINGS = pod_settings()


def test_chart_copy_is_current(tmp_path):
    assert is_current(), "run `python -m eyeops.chart.pod_settings` and commit helm/eyeops/files"
    stale = tmp_path / "pod-settings.yaml"
    stale.write_text(source_text().replace("10001", "10002"), encoding="utf-8")
    assert not is_current(stale)


def _eyeops_pods(objects: list[dict]) -> list[tuple[str, dict]]:
    """``(where, pod spec)`` of every pod running only eyeops images (postgres runs as its own user)."""
    return [
        (f"{o['kind']}/{o['metadata']['name']} {where}", pod)
        for o, where, pod in _pods(_with_template(objects))
        if all("/eyeops-" in c["image"] for c in pod["containers"])
    ]


def _autoscaler_options(objects: list[dict]) -> list[dict]:
    clusters = [o["spec"] for o in find(objects, "RayCluster")]
    clusters += [o["spec"]["rayClusterSpec"] for o in find(objects, "RayJob")]
    clusters += [o["spec"]["rayClusterConfig"] for o in find(objects, "RayService")]
    return [c["autoscalerOptions"] for c in clusters if c.get("enableInTreeAutoscaling")]


@pytest.mark.parametrize("side", ["chart", "built"])
def test_every_pod_carries_the_settings(rendered, side):
    objects = [o for name in SCENARIOS for o in rendered[name]] if side == "chart" else _built()
    pods = _eyeops_pods(objects)
    assert len(pods) >= (10 if side == "chart" else 6)
    for where, pod in pods:
        assert pod["securityContext"] == SETTINGS["podSecurityContext"], where
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            assert c["securityContext"] == SETTINGS["containerSecurityContext"], where
    options = _autoscaler_options(_with_template(objects))
    assert options and all(o == ray_autoscaler_options() for o in options)
    assert ray_autoscaler_options()["securityContext"] == SETTINGS["containerSecurityContext"]


def test_the_chart_reads_the_source(tmp_path):
    """Edit the chart's copy: the chart's pods follow it (nothing in a template repeats a setting);
    values podSecurity / training.shmSize still override it for the chart's own pods."""
    chart = tmp_path / "eyeops"
    shutil.copytree(CHART_DIR, chart)
    edited = yaml.safe_load(source_text())
    edited["podSecurityContext"].update(runAsUser=4242, runAsGroup=4242, fsGroup=4242)
    edited["containerSecurityContext"]["capabilities"]["drop"] = ["ALL", "NET_RAW"]
    edited["volumeSizes"].update(tmp="3Gi", rayTmp="30Gi", shm="7Gi")
    edited["labels"]["clients"]["eyeops.io/extra"] = "yes"
    (chart / CHART_COPY.relative_to(CHART_DIR)).write_text(yaml.safe_dump(edited), encoding="utf-8")
    objects = helm_template(chart=chart)
    pods = _eyeops_pods(objects)
    assert pods and all(p["securityContext"]["runAsUser"] == 4242 for _, p in pods)
    assert all(
        c["securityContext"]["capabilities"]["drop"] == ["ALL", "NET_RAW"]
        for _, p in pods
        for c in p["containers"]
    )
    sizes = {v["emptyDir"].get("sizeLimit") for _, p in pods for v in p["volumes"]}
    assert {"3Gi", "30Gi", "7Gi"} <= sizes and not {"1Gi", "10Gi", "2Gi"} & sizes
    (job,) = find(_with_template(objects), "RayJob")
    (gateway,) = find(objects, "Deployment", "eyeops-gateway")
    for template in (job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"], gateway["spec"]["template"]):
        assert template["metadata"]["labels"]["eyeops.io/extra"] == "yes"
    overridden = helm_template(
        chart=chart, set_values={"podSecurity.runAsUser": "5000", "training.shmSize": "9Gi"}
    )
    pods = _eyeops_pods(overridden)
    assert all(p["securityContext"]["runAsUser"] == 5000 for _, p in pods)
    assert "9Gi" in {v["emptyDir"].get("sizeLimit") for _, p in pods for v in p["volumes"]}
