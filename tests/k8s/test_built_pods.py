"""The pods the pipeline creates (``eyeops.kube`` builders) are admitted and reachable where the
chart installs eyeops: they pass the chart's policy checks and the CRD schemas, run as the chart's
ServiceAccounts, and the release's NetworkPolicies select them. (That both sides take their
security contexts, emptyDirs and labels from pod_settings.yaml is test_pod_settings.py.)"""

from __future__ import annotations

import copy

import pytest
import yaml
from eyeops_testing.k8s import CHAMPION, find, one

from eyeops.chart import CHART_DIR, helm_template
from eyeops.chart.policy import (
    check_labels,
    check_network_policies,
    check_no_inline_secrets,
    check_pod_security,
    pod_specs,
    selects,
)
from eyeops.config import PlatformSettings
from eyeops.kube import CONFIG_MAP, build_inference_service, build_rayjob, build_rayservice
from eyeops.kube.objects import MODEL_CACHE_SIZE, READINESS_PATH
from eyeops.kube.pods import pod_settings, tmp_volume
from eyeops.kube.schema import validate_custom
from eyeops.recipes import parse_recipe
from eyeops.refs import DatasetRef

VALUES = yaml.safe_load((CHART_DIR / "values.yaml").read_text(encoding="utf-8"))
DATASET = DatasetRef(uri="s3://eyeops/root/datasets/odir", fingerprint="f" * 64, name="odir")


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
                CHAMPION,
                namespace="eyeops",
                service_account=s.kube_model_service_account,
                release=s.kube_release,
                model_cache_size=s.kube_model_cache_size,
            )
        )
        objects.append(build_rayservice(recipe, CHAMPION, model_cache_size=s.kube_model_cache_size, **ray))
    return objects


def _with_template(objects: list[dict]) -> list[dict]:
    """``objects`` plus the RayJob inside the RayJob template ConfigMap (pods the chart defines)."""
    return objects + [
        yaml.safe_load(cm["data"]["rayjob.yaml"])
        for cm in find(objects, "ConfigMap", "eyeops-rayjob-template")
    ]


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


def test_model_cache_size_is_one_setting(prod_release):
    """values modelCacheSize reaches the chart's model pods and, through the ConfigMap's
    EYEOPS_KUBE_MODEL_CACHE_SIZE, the predictors and RayServices the pipeline deploys."""
    assert VALUES["modelCacheSize"] == MODEL_CACHE_SIZE == "20Gi"
    objects = helm_template(release="prod", namespace="ml", set_values={"modelCacheSize": "64Gi"})
    data = one(objects, "ConfigMap", CONFIG_MAP)["data"]
    assert data["EYEOPS_KUBE_MODEL_CACHE_SIZE"] == "64Gi"
    assert one(prod_release, "ConfigMap", CONFIG_MAP)["data"]["EYEOPS_KUBE_MODEL_CACHE_SIZE"] == "20Gi"
    settings = PlatformSettings(
        storage_root="s3://eyeops/root", kube_model_cache_size=data["EYEOPS_KUBE_MODEL_CACHE_SIZE"]
    )
    for obj in _built(settings):
        for where, pod in pod_specs(obj):
            (tmp,) = [v for v in pod["volumes"] if v["name"] == "tmp"]
            serving = obj["kind"] in ("InferenceService", "RayService")
            assert (tmp["emptyDir"]["sizeLimit"] == "64Gi") is serving, f"{obj['kind']} {where}"
    isvc = one(objects, "InferenceService")["spec"]["predictor"]
    assert isvc["volumes"] == [tmp_volume("64Gi")]
    with pytest.raises(ValueError, match="kube_model_cache_size"):
        PlatformSettings(storage_root="s3://eyeops/root", kube_model_cache_size="20GB")


def test_readiness_probes_are_the_charts(rendered):
    """Chart and builder probe the predictor on the same path and cadence: the gateway's /readyz,
    which `eyeops serve --backend kserve` answers (tests/serve/test_kserve.py starts it)."""
    chart = one(rendered["defaults"], "InferenceService")["spec"]["predictor"]["containers"][0]
    for built in find(_built(), "InferenceService"):
        probe = built["spec"]["predictor"]["containers"][0]["readinessProbe"]
        assert probe == chart["readinessProbe"]
        assert probe["httpGet"] == {"path": READINESS_PATH, "port": 8080}


def test_service_accounts_are_the_charts(rendered):
    """The predictor runs as the chart's model account, Ray pods (RayJob and RayService, as the
    chart's) as its Ray account; the settings' defaults are release eyeops's."""
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
    # The builders' own defaults are the same accounts (a caller passing nothing gets the chart's).
    recipe = _recipe(False)
    isvc = build_inference_service(recipe, CHAMPION, namespace="eyeops")
    assert isvc["spec"]["predictor"]["serviceAccountName"] == "eyeops-model"


# What KubeRay's own per-cluster autoscaler Role grants (ray-operator common.BuildRole), plus the
# list/watch on rayclusters newer autoscalers use.
AUTOSCALER_NEEDS = {
    *(("", "pods", verb) for verb in ("get", "list", "watch", "patch")),
    ("", "pods/resize", "patch"),
    *(("ray.io", "rayclusters", verb) for verb in ("get", "list", "watch", "patch")),
}


def _grants(objects: list[dict], account: str, namespace: str) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) the release's RoleBindings grant ServiceAccount ``account``."""
    roles = {r["metadata"]["name"]: r for r in find(objects, "Role")}
    subject = {"kind": "ServiceAccount", "name": account, "namespace": namespace}
    return {
        (group, resource, verb)
        for binding in find(objects, "RoleBinding")
        if subject in binding["subjects"] and binding["roleRef"]["kind"] == "Role"
        for rule in roles[binding["roleRef"]["name"]]["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def _ray_groups(obj: dict) -> list[tuple[bool, bool, dict]]:
    """``(is head, cluster autoscales, pod template)`` for the Ray pods of ``obj``."""
    spec = obj.get("spec") or {}
    cluster = {
        "RayCluster": spec,
        "RayJob": spec.get("rayClusterSpec"),
        "RayService": spec.get("rayClusterConfig"),
    }
    cluster_spec = cluster.get(obj["kind"])
    if not cluster_spec:
        return []
    autoscales = bool(cluster_spec.get("enableInTreeAutoscaling"))
    return [(True, autoscales, cluster_spec["headGroupSpec"]["template"])] + [
        (False, autoscales, g["template"]) for g in cluster_spec["workerGroupSpecs"]
    ]


def test_only_autoscaling_heads_mount_a_token_and_their_account_may_scale(rendered):
    """KubeRay's in-tree autoscaler sidecar lists, watches and patches pods and patches the
    RayCluster with the head pod's token. Every autoscaling head, the chart's and the built
    RayService's, mounts it, runs as an account a RoleBinding grants what the autoscaler needs,
    and is selected by the NetworkPolicy opening the API server; every other pod has no token
    (the chart's pipeline and helm-test pods get their accounts')."""
    autoscaling_heads = 0
    for scenario, objects in [*rendered.items(), ("built", _built())]:
        release = rendered["defaults"] if scenario == "built" else objects
        api = one(release, "NetworkPolicy", "eyeops-netpol-ray-autoscaler")["spec"]
        assert api["policyTypes"] == ["Egress"]
        assert {p["port"] for p in api["egress"][0]["ports"]} == set(
            VALUES["networkPolicy"]["kubeApi"]["ports"]
        )
        for obj in _with_template(objects):
            for head, autoscales, template in _ray_groups(obj):
                pod, labels = template["spec"], template["metadata"]["labels"]
                at = f"{scenario}: {obj['kind']}/{obj['metadata']['name']} head={head}"
                token = head and autoscales
                assert pod["automountServiceAccountToken"] is token, at
                assert selects(api["podSelector"], labels) is token, at
                if token:
                    autoscaling_heads += 1
                    grants = _grants(release, pod["serviceAccountName"], "eyeops")
                    assert grants >= AUTOSCALER_NEEDS, f"{at}: missing {AUTOSCALER_NEEDS - grants}"
                    assert not any(r in ("secrets", "roles", "rolebindings") for _, r, _ in grants), at
            for where, pod in pod_specs(obj):
                if "headGroupSpec" not in where or not pod.get("automountServiceAccountToken"):
                    assert pod.get("automountServiceAccountToken", None) in (False, None), where
                    if "automountServiceAccountToken" not in pod:  # the account decides
                        account = one(release, "ServiceAccount", pod["serviceAccountName"])
                        assert pod["serviceAccountName"] in ("eyeops-pipeline", "eyeops-test"), account
    # RayCluster, RayJob, the RayJob template, the chart's RayService and the built RayServices.
    assert autoscaling_heads >= 8
    # The built RayJob does not autoscale (fixed worker count): its head keeps no token.
    job_head = find(_built(), "RayJob")[0]["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    assert job_head["spec"]["automountServiceAccountToken"] is False
    assert not pod_settings()["labels"]["autoscaler"].items() <= job_head["metadata"]["labels"].items()
    # The check can fail: the model account (predictors) holds no such grant.
    assert _grants(rendered["defaults"], "eyeops-model", "eyeops") == set()


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
        if labels.get("eyeops.io/ray-autoscaler") == "true":  # the sidecar reaches the API server
            need.add(f"{p}ray-autoscaler")
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
    # The Ray account read from the ConfigMap is the one that release lets autoscale.
    assert _grants(prod_release, settings.kube_service_account, "ml") >= AUTOSCALER_NEEDS
    dns = one(prod_release, "NetworkPolicy", "prod-eyeops-netpol-dns")["spec"]["podSelector"]
    assert not any(selects(dns, labels) for obj in _built() for _, labels in _pod_label_sets(obj))
