"""The chart's RayJob template and ``eyeops.kube.build_rayjob`` must not drift apart.

They serve different consumers (the ``eyeops-rayjob-template`` ConfigMap is for whoever submits
RayJobs with the platform team's settings; ``build_rayjob`` is what the pipeline's train step
submits), so neither is derived from the other. This pins the fields a training pod depends on.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from eyeops_testing.k8s import CHAMPION, container, env_of, one

from eyeops import __version__
from eyeops.chart import CHART_DIR, helm_template
from eyeops.config import PlatformSettings
from eyeops.kube import (
    CONFIG_KEYS,
    CONFIG_MAP,
    SERVER_IMAGE,
    TRAINER_IMAGE,
    GpuPool,
    Toleration,
    build_inference_service,
    build_rayjob,
    build_rayservice,
)
from eyeops.recipes import parse_recipe
from eyeops.refs import DatasetRef
from eyeops.train.job import _parser

STORAGE_ROOT = "s3://eyeops/root"  # values.yaml s3.storageRoot
RUN = "fundus-run-1"
DATASET = DatasetRef(uri=f"{STORAGE_ROOT}/datasets/odir", fingerprint="f" * 64, name="odir")
# Env both put into every Ray pod: settings the entrypoint reads, and credentials by Secret reference.
SHARED_ENV = (
    "EYEOPS_MODE",
    "EYEOPS_RAY_ADDRESS",
    "RAY_USAGE_STATS_ENABLED",
    "EYEOPS_STORAGE_ROOT",
    "EYEOPS_MLFLOW_TRACKING_URI",
    "EYEOPS_KUBE_NAMESPACE",
    "HF_HUB_OFFLINE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
)
DOCKER = Path(__file__).resolve().parents[2] / "docker"


@pytest.fixture(scope="module")
def chart_job(rendered) -> dict:
    """The template as the GPU values render it (a GPU worker group on tainted A100 nodes)."""
    cm = one(rendered["gpu"], "ConfigMap", "eyeops-rayjob-template")
    return yaml.safe_load(cm["data"]["rayjob.yaml"])


def _groups(job: dict) -> tuple[dict, dict]:
    cluster = job["spec"]["rayClusterSpec"]
    return cluster["headGroupSpec"], cluster["workerGroupSpecs"][0]


def _python_job(chart_job: dict, **overrides) -> dict:
    """``build_rayjob`` given what the chart's operator chose: its image, GPU pool and ServiceAccount."""
    _, group = _groups(chart_job)
    pod = group["template"]["spec"]
    limits = pod["containers"][0]["resources"]["limits"]
    recipe = _recipe()
    settings = PlatformSettings(storage_root=STORAGE_ROOT)
    kwargs = {
        "image": pod["containers"][0]["image"],
        "pool": GpuPool(
            accelerator="nvidia.com/gpu",
            gpus_per_worker=limits["nvidia.com/gpu"],
            node_selector=pod["nodeSelector"],
            tolerations=[Toleration(**t) for t in pod["tolerations"]],
        ),
        "service_account": pod["serviceAccountName"],
        **overrides,
    }
    return build_rayjob(
        recipe,
        DATASET,
        run_name=RUN,
        # what train_on_cluster passes
        storage_path=settings.path("runs", RUN),
        ref_out=settings.path("runs", RUN, "checkpoint_ref.json"),
        namespace="eyeops",
        **kwargs,
    )


def _recipe():
    return parse_recipe(
        {
            "name": "fundus-classifier",
            "model": {"family": "classifier"},
            "register": {"model_name": "fundus-classifier"},
            "train": {"num_workers": 2, "use_gpu": True},
        }
    )


def _argv(job: dict) -> list[str]:
    entry = job["spec"]["entrypoint"]
    # The substitution the template's comment promises its submitter.
    for placeholder, value in {
        "${RECIPE}": "fundus-classifier",
        "${DATASET_JSON}": DATASET.model_dump_json(),
        "${RUN_NAME}": RUN,
    }.items():
        entry = entry.replace(placeholder, value)
    return shlex.split(entry)


def test_same_entrypoint_module_and_checkpoint_ref_location(chart_job):
    chart, python = _argv(chart_job), _argv(_python_job(chart_job))
    assert chart[:3] == python[:3] == ["python", "-m", "eyeops.train.job"]
    chart_args, python_args = _parser().parse_args(chart[3:]), _parser().parse_args(python[3:])
    # The waiting step reads the CheckpointRef from here: both must write it to the same place.
    assert chart_args.ref_out == python_args.ref_out == f"{STORAGE_ROOT}/runs/{RUN}/checkpoint_ref.json"
    assert DatasetRef.model_validate_json(chart_args.dataset_json) == DATASET
    assert DatasetRef.model_validate_json(python_args.dataset_json) == DATASET
    assert chart_args.run_name == python_args.run_name == RUN
    assert chart_args.storage_path.startswith(STORAGE_ROOT) and python_args.storage_path.startswith(
        STORAGE_ROOT
    )


def test_same_pods_given_the_charts_image_pool_and_service_account(chart_job, rendered):
    python_job = _python_job(chart_job)
    settings = one(rendered["gpu"], "ConfigMap", CONFIG_MAP)["data"]
    assert python_job["spec"]["shutdownAfterJobFinishes"] is chart_job["spec"]["shutdownAfterJobFinishes"]
    assert python_job["spec"]["submissionMode"] == chart_job["spec"]["submissionMode"]
    for chart_group, python_group in zip(_groups(chart_job), _groups(python_job), strict=True):
        chart_pod, python_pod = chart_group["template"]["spec"], python_group["template"]["spec"]
        (chart_c,), (python_c,) = chart_pod["containers"], python_pod["containers"]
        assert python_c["name"] == chart_c["name"] and python_c["image"] == chart_c["image"]
        assert python_pod["serviceAccountName"] == chart_pod["serviceAccountName"]
        # GPU placement: the same nodes and taints (the head has none: it schedules, never trains).
        assert python_pod.get("nodeSelector") == (chart_pod.get("nodeSelector") or None)
        assert python_pod.get("tolerations") == (chart_pod.get("tolerations") or None)
        # Resources shape: requests and limits for cpu/memory, the GPU as a limit of the same count.
        for side in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(python_c["resources"][side]) & set(chart_c["resources"][side])
        assert python_c["resources"]["limits"].get("nvidia.com/gpu") == chart_c["resources"]["limits"].get(
            "nvidia.com/gpu"
        )
        chart_env, python_env = env_of(chart_c), env_of(python_c)
        assert set(SHARED_ENV) <= set(chart_env) & set(python_env)
        for name in SHARED_ENV:
            if "value" in chart_env[name] and "value" in python_env[name]:
                assert python_env[name]["value"] == chart_env[name]["value"], name
            config_ref = python_env[name].get("valueFrom", {}).get("configMapKeyRef")
            if config_ref:  # a setting: the chart's ConfigMap holds what the chart's pods get
                assert config_ref["name"] == CONFIG_MAP, name
                assert settings[config_ref["key"]] == chart_env[name]["value"], name
            chart_secret = chart_env[name].get("valueFrom", {}).get("secretKeyRef")
            if chart_secret:  # credentials: the chart's Secret and key, never a literal
                python_secret = python_env[name]["valueFrom"]["secretKeyRef"]
                assert (python_secret["name"], python_secret["key"]) == (
                    chart_secret["name"],
                    chart_secret["key"],
                )
    assert python_job["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert chart_job["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def _chart_trainer_image(chart_job: dict) -> str:
    return _groups(chart_job)[0]["template"]["spec"]["containers"][0]["image"]


def test_default_images_are_the_ones_the_chart_runs(chart_job, rendered):
    """The pipeline's defaults name images the project builds and the chart pulls, not a third one."""
    assert _chart_trainer_image(chart_job) == TRAINER_IMAGE
    gateway = one(rendered["defaults"], "Deployment", "eyeops-gateway")["spec"]["template"]["spec"]
    assert container(gateway, "gateway")["image"] == SERVER_IMAGE
    isvc = one(rendered["defaults"], "InferenceService")["spec"]["predictor"]
    assert isvc["containers"][0]["image"] == SERVER_IMAGE
    assert _python_job(chart_job, image=TRAINER_IMAGE) == _python_job(chart_job)  # the default
    # ...and the Makefile's `images` target builds both under exactly these names.
    makefile = (DOCKER.parent / "Makefile").read_text(encoding="utf-8")
    for image in ("trainer", "server"):
        assert f"-f docker/Dockerfile.{image} " in makefile
        assert f"-t $(IMAGE_REGISTRY)/eyeops-{image}:$(VERSION) " in makefile
    assert "IMAGE_REGISTRY ?= ghcr.io/eyeops" in makefile
    assert TRAINER_IMAGE.endswith(f":{__version__}") and SERVER_IMAGE.endswith(f":{__version__}")


def _serving_objects() -> list[dict]:
    return [
        build_inference_service(_recipe(), CHAMPION, namespace="eyeops"),
        build_rayservice(_recipe(), CHAMPION, namespace="eyeops"),
    ]


def _config_refs(obj) -> list[dict]:
    """Every configMapKeyRef in an object, wherever its pods are."""
    if isinstance(obj, dict):
        found = [obj["configMapKeyRef"]] if "configMapKeyRef" in obj else []
        return found + [ref for value in obj.values() for ref in _config_refs(value)]
    if isinstance(obj, list):
        return [ref for item in obj for ref in _config_refs(item)]
    return []


@pytest.mark.parametrize("scenario", ["defaults", "gpu", "external"])
def test_chart_ships_the_settings_configmap_the_builders_read(chart_job, rendered, scenario):
    objects = rendered[scenario]
    settings = one(objects, "ConfigMap", CONFIG_MAP)["data"]
    assert set(settings) <= set(CONFIG_KEYS)
    assert {"EYEOPS_STORAGE_ROOT", "EYEOPS_MLFLOW_TRACKING_URI", "HF_HUB_OFFLINE"} <= set(settings)
    # Same values as the chart's own Ray pods (one source: values.yaml through eyeops.commonEnv).
    template = one(objects, "ConfigMap", "eyeops-rayjob-template")["data"]["rayjob.yaml"]
    ray_pod = _groups(yaml.safe_load(template))[1]["template"]["spec"]
    env = env_of(ray_pod["containers"][0])
    for key, value in settings.items():
        if key in env:
            assert env[key]["value"] == value, key
    assert settings["EYEOPS_KUBE_SERVICE_ACCOUNT"] == ray_pod["serviceAccountName"]
    # Every ConfigMap reference the builders emit names this ConfigMap and a key the chart may set.
    refs = _config_refs([_python_job(chart_job), *_serving_objects()])
    assert refs and {r["name"] for r in refs} == {CONFIG_MAP}
    assert {r["key"] for r in refs} <= set(CONFIG_KEYS)
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text(encoding="utf-8"))
    assert values["clusterConfig"]["name"] == CONFIG_MAP


def test_settings_follow_the_release_and_values():
    """Another release name and namespace: the ConfigMap keeps the name the code knows and points
    pipeline tasks at that release's namespace and Ray ServiceAccount; hfHubOffline=false reaches
    the chart's pods and the ConfigMap alike."""
    objects = helm_template(
        release="prod",
        namespace="ml",
        set_values={"hfHubOffline": "false", "s3.endpoint": "http://minio:9000"},
    )
    settings = one(objects, "ConfigMap", CONFIG_MAP)["data"]
    assert settings["EYEOPS_KUBE_NAMESPACE"] == "ml"
    assert settings["EYEOPS_KUBE_SERVICE_ACCOUNT"] == "prod-eyeops-ray"
    assert one(objects, "ServiceAccount", "prod-eyeops-ray")
    assert settings["EYEOPS_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert settings["HF_HUB_OFFLINE"] == "0"
    gateway = one(objects, "Deployment", "prod-eyeops-gateway")["spec"]["template"]["spec"]
    assert env_of(container(gateway, "gateway"))["HF_HUB_OFFLINE"]["value"] == "0"


def test_pods_are_hub_offline_by_default_on_both_sides(chart_job, rendered):
    """One setting (values hfHubOffline, default true): the chart's Ray pods get it literally, the
    pipeline's by reference to the ConfigMap; without that key the images' own ENV keeps them offline."""
    assert yaml.safe_load((CHART_DIR / "values.yaml").read_text(encoding="utf-8"))["hfHubOffline"] is True
    for group in _groups(chart_job):
        assert env_of(group["template"]["spec"]["containers"][0])["HF_HUB_OFFLINE"]["value"] == "1"
    assert one(rendered["gpu"], "ConfigMap", CONFIG_MAP)["data"]["HF_HUB_OFFLINE"] == "1"
    for obj in [_python_job(chart_job), *_serving_objects()]:
        hub = [r for r in _config_refs(obj) if r["key"] == "HF_HUB_OFFLINE"]
        assert hub and all(r["name"] == CONFIG_MAP for r in hub)
    for image in ("trainer", "server"):
        dockerfile = (DOCKER / f"Dockerfile.{image}").read_text(encoding="utf-8")
        assert re.search(r"^\s*HF_HUB_OFFLINE=1\b", dockerfile, re.M), image


def test_pipeline_ray_pods_run_as_the_charts_ray_service_account(chart_job):
    chart_account = _groups(chart_job)[0]["template"]["spec"]["serviceAccountName"]
    assert PlatformSettings(storage_root=STORAGE_ROOT).kube_service_account == chart_account
