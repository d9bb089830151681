"""The Hugging Face token of gated repos (values huggingface.tokenSecret): every pod that loads models
reads it from the named Secret as HF_TOKEN — the chart's own pods, and through the chart's ConfigMap
the RayJobs, InferenceServices and RayServices eyeops.kube builds — and no pod has it when unset."""

from __future__ import annotations

import pytest
import yaml
from eyeops_testing.k8s import CHAMPION, CI, env_of, find, one

from eyeops.chart import helm_template
from eyeops.config import PlatformSettings
from eyeops.errors import ConfigError
from eyeops.kube import CONFIG_MAP, build_inference_service, build_rayjob, build_rayservice
from eyeops.kube.objects import DEFAULT_SECRET_ENV, settings_secret_env
from eyeops.recipes import parse_recipe
from eyeops.refs import DatasetRef

TOKEN_REF = {"secretKeyRef": {"name": "hf-gated", "key": "hf", "optional": False}}
RECIPE = parse_recipe(
    {"name": "eye-llm", "model": {"family": "llm"}, "register": {"model_name": "eyeops-eye-llm"}}
)


def _containers(obj: dict, where: str = "") -> list[tuple[str, dict]]:
    """Every container of an object, wherever its pod templates nest them, with a path to it."""
    found: list[tuple[str, dict]] = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == "containers" and isinstance(value, list):
                found += [(f"{where}/{c['name']}", c) for c in value]
            else:
                found += _containers(value, f"{where}/{key}")
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            found += _containers(value, f"{where}[{i}]")
    return found


def _model_loading_containers(objects: list[dict]) -> list[tuple[str, dict]]:
    """Containers of the gateway, the predictors, the RayService/RayCluster pods and the RayJob
    template's pods (its submitter only runs `ray job submit`)."""
    template = one(objects, "ConfigMap", "eyeops-rayjob-template")
    job = yaml.safe_load(template["data"]["rayjob.yaml"])
    pods = [("rayjob-template", job["spec"]["rayClusterSpec"])]
    pods += [(o["kind"], o) for o in objects if o["kind"] in {"InferenceService", "RayService", "RayCluster"}]
    pods.append(("gateway", one(objects, "Deployment", "eyeops-gateway")))
    return [(f"{kind}{path}", c) for kind, obj in pods for path, c in _containers(obj)]


@pytest.fixture(scope="module")
def release() -> list[dict]:
    return helm_template(
        [CI / "rayservice-values.yaml"],
        set_values={
            "huggingface.tokenSecret.name": "hf-gated",
            "huggingface.tokenSecret.key": "hf",
            "training.cluster.enabled": "true",
        },
    )


def test_every_model_loading_pod_of_the_chart_reads_the_named_secret(release):
    containers = _model_loading_containers(release)
    where = {path.split("/")[0] for path, _ in containers}
    assert where == {"rayjob-template", "InferenceService", "RayService", "RayCluster", "gateway"}
    assert len(containers) >= 8  # ray heads and workers of three clusters, predictor, gateway
    for path, c in containers:
        assert env_of(c)["HF_TOKEN"]["valueFrom"] == TOKEN_REF, path
    mlflow = one(release, "Deployment", "eyeops-mlflow")  # loads no model: no token
    assert all("HF_TOKEN" not in env_of(c) for _, c in _containers(mlflow))


def test_built_pods_get_the_token_the_chart_configmap_names(release):
    """A pipeline task reads EYEOPS_KUBE_HF_TOKEN_* from the ConfigMap into its settings; the pods it
    builds then carry exactly the chart's HF_TOKEN reference."""
    data = one(release, "ConfigMap", CONFIG_MAP)["data"]
    settings = PlatformSettings(
        storage_root="s3://eyeops/root",
        kube_hf_token_secret=data["EYEOPS_KUBE_HF_TOKEN_SECRET"],
        kube_hf_token_key=data["EYEOPS_KUBE_HF_TOKEN_KEY"],
    )
    secret_env = settings_secret_env(settings)
    dataset = DatasetRef(uri="s3://eyeops/root/datasets/d", fingerprint="f" * 64, name="d")
    built = [
        build_rayjob(
            RECIPE,
            dataset,
            run_name="r",
            storage_path="s3://eyeops/root/runs/r",
            ref_out="s3://eyeops/root/runs/r/ref.json",
            namespace="eyeops",
            secret_env=secret_env,
        ),
        build_inference_service(RECIPE, CHAMPION, namespace="eyeops", secret_env=secret_env),
        build_rayservice(RECIPE, CHAMPION, namespace="eyeops", secret_env=secret_env),
    ]
    containers = [(o["kind"] + path, c) for o in built for path, c in _containers(o)]
    submitter = [path for path, _ in containers if path.endswith("/ray-job-submitter")]
    # RayJob head, worker and submitter; the predictor; RayService head and worker.
    assert len(submitter) == 1 and len(containers) == 6
    for path, c in containers:
        if path not in submitter:
            assert env_of(c)["HF_TOKEN"]["valueFrom"] == TOKEN_REF, path


def test_no_secret_named_no_token_anywhere(rendered):
    for scenario, objects in rendered.items():
        assert "EYEOPS_KUBE_HF_TOKEN_SECRET" not in one(objects, "ConfigMap", CONFIG_MAP)["data"]
        templates = [
            yaml.safe_load(o["data"]["rayjob.yaml"])
            for o in find(objects, "ConfigMap", "eyeops-rayjob-template")
        ]
        for obj in [*objects, *templates]:
            for path, c in _containers(obj):
                assert "HF_TOKEN" not in env_of(c), (scenario, obj["kind"], path)
    assert settings_secret_env(PlatformSettings(storage_root="s3://eyeops/root")) == DEFAULT_SECRET_ENV


def test_schema_refuses_a_secret_name_kubernetes_would_refuse():
    with pytest.raises(ConfigError, match=r"huggingface\.tokenSecret\.name"):
        helm_template(set_values={"huggingface.tokenSecret.name": "HF_Token"})
