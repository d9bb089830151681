"""The pods the pipeline creates (``eyeops.cluster`` builders) are admitted and reachable where the
chart installs eyeops: the same security contexts, emptyDirs, ServiceAccounts and NetworkPolicy
labels as the chart's own pods, checked against what the chart renders so the two cannot drift."""

from __future__ import annotations

import copy

import pytest
import yaml
from k8s_helpers import SCENARIOS, find, one

from eyeops.cluster import CONFIG_MAP, build_inference_service, build_rayjob, build_rayservice
from eyeops.cluster.pods import (
    RAY_MOUNTS,
    TMP_MOUNT,
    container_security_context,
    pod_security_context,
    ray_autoscaler_options,
    ray_volumes,
    tmp_volume,
)
from eyeops.config import PlatformSettings
from eyeops.k8s import CHART_DIR, helm_template
from eyeops.k8s.policy import (
    check_labels,
    check_network_policies,
    check_no_inline_secrets,
    check_pod_security,
    pod_specs,
    selects,
)
from eyeops.k8s.validate import validate_custom
from eyeops.recipes import parse_recipe
from eyeops.refs import DatasetRef, ModelVersionRef

VALUES = yaml.safe_load((CHART_DIR / "values.yaml").read_text(encoding="utf-8"))
DATASET = DatasetRef(uri="s3://eyeops/root/datasets/odir", fingerprint="f" * 64, name="odir")
VERSION = ModelVersionRef(
    name="eyeops-fundus-classifier",
    version=3,
    alias="champion",
    run_id="r",
    model_uri="models:/eyeops-fundus-classifier/3",
    gate_passed=True,
    gate_reason="first version",
    metric="macro_auc",
    value=0.9,
)


def _recipe(gpu: bool):
    return parse_recipe(
        {
            "name": "fundus-classifier",
            "model": {"family": "classifier"},
            "register": {"model_name": "fundus-classifier"},
            "train": {"num_workers": 2, "use_gpu": gpu},
            "serve": {"gpu": int(gpu)},
        }
    )


def _built(settings: PlatformSettings | None = None) -> list[dict]:
    """Every variant the pipeline submits, built the way train/deploy_on_cluster build them."""
    s = settings or PlatformSettings(storage_root="s3://eyeops/root")
    ray = {"service_account": s.kube_service_account, "release": s.kube_release, "namespace": "eyeops"}
    objects = []
    for gpu in (True, False):
        recipe = _recipe(gpu)
        objects.append(
            build_rayjob(
                recipe,
                DATASET,
                run_name="run-1",
                storage_path=s.path("runs", "run-1"),
                ref_out=s.path("runs", "run-1", "checkpoint_ref.json"),
                **ray,
            )
        )
        objects.append(
            build_inference_service(
                recipe,
                VERSION,
                namespace="eyeops",
                service_account=s.kube_model_service_account,
                release=s.kube_release,
            )
        )
        objects.append(build_rayservice(recipe, VERSION, **ray))
    return objects


@pytest.fixture(scope="module")
def chart_objects(rendered) -> list[dict]:
    """Every object of every values file, the RayJob template's RayJob included."""
    objects = [o for name in SCENARIOS for o in rendered[name]]
    for cm in find(objects, "ConfigMap", "eyeops-rayjob-template"):
        objects.append(yaml.safe_load(cm["data"]["rayjob.yaml"]))
    return objects


def _pods(objects: list[dict]) -> list[tuple[dict, str, dict]]:
    return [(obj, where, pod) for obj in objects for where, pod in pod_specs(obj)]


def test_built_pods_pass_the_policies_the_chart_passes():
    """The restricted Pod Security Standard (what the namespace enforces at admission), read-only
    root filesystems, pinned images, requests+limits, credentials by reference, standard labels."""
    built = _built()
    for obj in built:
        assert check_pod_security(obj) + check_no_inline_secrets(obj) + check_labels(obj) == []
    # Every pod KubeRay/KServe create from them is checked: the RayJob's submitter too.
    wheres = {f"{o['kind']} {w}" for o, w, _ in _pods(built)}
    assert "RayJob spec.submitterPodTemplate" in wheres and "InferenceService spec.predictor" in wheres
    # The check can fail: a pod without the contexts is what the API server used to refuse.
    bare = copy.deepcopy(built[0])
    head = bare["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    del head["securityContext"], head["containers"][0]["securityContext"]
    assert "runAsNonRoot is not true" in " ".join(check_pod_security(bare))


def test_built_objects_validate_against_the_crds(crd_schemas):
    for obj in _built():
        assert validate_custom(obj, crd_schemas) == []


def test_security_contexts_are_the_charts(chart_objects):
    """One definition: every container the chart renders, and every pod running an eyeops image,
    has exactly the contexts the builders use, and the Ray autoscaler sidecar the same settings."""
    pods = _pods(chart_objects)
    assert len(pods) > 10
    for obj, where, pod in pods:
        at = f"{obj['kind']}/{obj['metadata']['name']} {where}"
        # The eyeops images' user; other images (postgres) run as their own.
        if all("/eyeops-" in c["image"] for c in pod["containers"]):
            assert pod["securityContext"] == pod_security_context(), at
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            assert c["securityContext"] == container_security_context(), f"{at} {c['name']}"
    assert pod_security_context()["runAsUser"] == VALUES["podSecurity"]["runAsUser"]
    ray_clusters = [o["spec"] for o in find(chart_objects, "RayCluster")]
    for kind, field in (("RayJob", "rayClusterSpec"), ("RayService", "rayClusterConfig")):
        ray_clusters += [o["spec"][field] for o in find(chart_objects, kind)]
    options = [c["autoscalerOptions"] for c in ray_clusters if c.get("enableInTreeAutoscaling")]
    assert options and all(o == ray_autoscaler_options() for o in options)
    rayservice = find(_built(), "RayService")[0]["spec"]["rayClusterConfig"]
    assert rayservice["enableInTreeAutoscaling"] is True
    assert rayservice["autoscalerOptions"] == ray_autoscaler_options()


def _volumes_and_mounts(pod: dict) -> tuple[list, list]:
    (c,) = pod["containers"]
    return pod["volumes"], c["volumeMounts"]


def test_writable_paths_are_the_charts(chart_objects):
    """Read-only root filesystems: Ray pods get /tmp and an in-memory /dev/shm (the object store),
    the predictor and the job submitter /tmp, the same emptyDirs as the chart gives its pods."""
    assert ray_volumes()[1]["emptyDir"]["sizeLimit"] == VALUES["training"]["shmSize"]
    chart = {(o["kind"], w.split("[")[0].rsplit(".", 1)[-1]): p for o, w, p in _pods(chart_objects)}
    built = {(o["kind"], w.split("[")[0].rsplit(".", 1)[-1]): p for o, w, p in _pods(_built())}
    ray = [(kind, group) for kind, group in built if group in ("headGroupSpec", "workerGroupSpecs")]
    assert len(ray) == 4
    for key in ray:
        assert (
            _volumes_and_mounts(built[key]) == _volumes_and_mounts(chart[key]) == (ray_volumes(), RAY_MOUNTS)
        )
    for key in (("InferenceService", "predictor"), ("RayJob", "submitterPodTemplate")):
        assert (
            _volumes_and_mounts(built[key])
            == _volumes_and_mounts(chart[key])
            == ([tmp_volume()], [TMP_MOUNT])
        )


def test_service_accounts_are_the_charts(rendered):
    """The predictor runs as the chart's model account, Ray pods (RayJob and RayService, as the
    chart's) as its Ray account, neither with a token; the settings' defaults are release eyeops's."""
    settings = one(rendered["defaults"], "ConfigMap", CONFIG_MAP)["data"]
    defaults = PlatformSettings(storage_root="s3://eyeops/root")
    assert (
        defaults.kube_model_service_account == settings["EYEOPS_KUBE_MODEL_SERVICE_ACCOUNT"] == "eyeops-model"
    )
    assert defaults.kube_service_account == settings["EYEOPS_KUBE_SERVICE_ACCOUNT"] == "eyeops-ray"
    assert defaults.kube_release == settings["EYEOPS_KUBE_RELEASE"] == "eyeops"
    chart = {o["kind"]: o for o in [*rendered["defaults"], *rendered["rayservice"]] if o["kind"] != "RayJob"}
    built = _built()
    for kind in ("InferenceService", "RayService"):
        chart_pods = {p["serviceAccountName"] for _, _, p in _pods([chart[kind]])}
        built_pods = {p["serviceAccountName"] for _, _, p in _pods(find(built, kind))}
        assert built_pods == chart_pods and len(built_pods) == 1, kind
        assert {p["automountServiceAccountToken"] for _, _, p in _pods(find(built, kind))} == {False}
    # The builders' own defaults are the same accounts (a caller passing nothing gets the chart's).
    recipe = _recipe(False)
    isvc = build_inference_service(recipe, VERSION, namespace="eyeops")
    assert isvc["spec"]["predictor"]["serviceAccountName"] == "eyeops-model"


def _pod_label_sets(obj: dict) -> list[tuple[str, dict]]:
    out = []
    for where, _ in pod_specs(obj):
        spec = obj["spec"]
        if obj["kind"] == "InferenceService":
            labels = spec["predictor"]["labels"]
        elif where == "spec.submitterPodTemplate":
            labels = spec["submitterPodTemplate"]["metadata"]["labels"]
        else:
            cluster = spec.get("rayClusterSpec") or spec["rayClusterConfig"]
            group = cluster["headGroupSpec"] if "headGroupSpec" in where else cluster["workerGroupSpecs"][0]
            labels = group["template"]["metadata"]["labels"]
        out.append((f"{obj['kind']} {where}", labels))
    return out


def _selecting(netpols: list[dict], labels: dict) -> set[str]:
    return {
        p["metadata"]["name"]
        for p in netpols
        if p["spec"]["podSelector"] and selects(p["spec"]["podSelector"], labels)
    }


def _peers(netpols: list[dict], name: str, direction: str) -> list[dict]:
    rules = one(netpols, "NetworkPolicy", name)["spec"][direction]
    key = "from" if direction == "ingress" else "to"
    return [peer["podSelector"] for rule in rules for peer in rule[key] if "podSelector" in peer]


def _assert_reachable(objects: list[dict], built: list[dict], fullname: str) -> None:
    """Under the release's default-deny, every built pod resolves DNS and reaches MLflow and S3,
    Ray pods reach their own cluster, and model pods are the gateway's peers."""
    netpols = find(objects, "NetworkPolicy")
    p = f"{fullname}-netpol-"
    mlflow_in = _peers(netpols, f"{p}mlflow", "ingress")
    gateway_out = _peers(netpols, f"{p}gateway", "egress")
    for where, labels in [pair for obj in built for pair in _pod_label_sets(obj)]:
        chosen = _selecting(netpols, labels)
        need = {f"{p}dns"}
        if "submitter" not in where:
            need |= {f"{p}mlflow-clients", f"{p}s3-clients"}
            assert any(selects(peer, labels) for peer in mlflow_in), where
        if where.startswith("Ray"):  # head, workers and the job submitter
            need.add(f"{p}ray")
        if where.startswith(("InferenceService", "RayService")):
            need.add(f"{p}model")
            assert any(selects(peer, labels) for peer in gateway_out), where
        assert need <= chosen, f"{where}: selected by {sorted(chosen)}, needs {sorted(need - chosen)}"
    assert check_network_policies([*netpols, *built]) == []


def test_release_network_policies_select_the_built_pods(rendered):
    _assert_reachable(rendered["defaults"], _built(), "eyeops")


@pytest.fixture(scope="module")
def prod_release() -> list[dict]:
    return helm_template(release="prod", namespace="ml")


def test_another_release_reaches_its_pods_through_the_configmap(prod_release):
    """Pipeline tasks read the release and accounts from the chart's ConfigMap: pods built from
    those settings are that release's; built with the defaults, its DNS policy would drop them."""
    data = one(prod_release, "ConfigMap", CONFIG_MAP)["data"]
    settings = PlatformSettings(
        storage_root=data["EYEOPS_STORAGE_ROOT"],
        kube_release=data["EYEOPS_KUBE_RELEASE"],
        kube_service_account=data["EYEOPS_KUBE_SERVICE_ACCOUNT"],
        kube_model_service_account=data["EYEOPS_KUBE_MODEL_SERVICE_ACCOUNT"],
    )
    for account in (settings.kube_service_account, settings.kube_model_service_account):
        assert one(prod_release, "ServiceAccount", account)
    _assert_reachable(prod_release, _built(settings), "prod-eyeops")
    dns = one(prod_release, "NetworkPolicy", "prod-eyeops-netpol-dns")["spec"]["podSelector"]
    assert not any(selects(dns, labels) for obj in _built() for _, labels in _pod_label_sets(obj))
