"""The Helm chart: lint, strict validation of everything it renders, and what each values file
must produce."""

from __future__ import annotations

import json
import shlex

import pytest
import yaml
from eyeops_testing.k8s import SCENARIOS, container, env_of, find, one

from eyeops.chart import check_all, helm_lint
from eyeops.chart.validate import validate_core
from eyeops.kube.schema import validate_custom

CUSTOM_KINDS = {"InferenceService", "RayJob", "RayCluster", "RayService"}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_lint_passes(scenario, set_files):
    report = helm_lint(SCENARIOS[scenario], set_files=set_files if scenario == "evaluation" else None)
    assert "0 chart(s) failed" in report


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_core_objects_validate_strictly(rendered, scenario):
    core = [o for o in rendered[scenario] if o["kind"] not in CUSTOM_KINDS]
    assert len(core) > 15
    problems = [p for obj in core for p in validate_core(obj)]
    assert problems == []


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_custom_resources_validate_against_crds(rendered, scenario, crd_schemas):
    objects = list(rendered[scenario])
    # The RayJob template the pipeline submits is a CR too, inside a ConfigMap.
    for cm in find(objects, "ConfigMap", "eyeops-rayjob-template"):
        objects.append(yaml.safe_load(cm["data"]["rayjob.yaml"]))
    custom = [o for o in objects if o["kind"] in CUSTOM_KINDS]
    assert custom, f"{scenario} renders no custom resource"
    problems = [p for obj in custom for p in validate_custom(obj, crd_schemas)]
    assert problems == []


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_policies_hold(rendered, scenario):
    assert check_all(rendered[scenario]) == []


def test_kinds_per_scenario(rendered):
    kinds = {name: {o["kind"] for o in objs} for name, objs in rendered.items()}
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "InferenceService",
        "NetworkPolicy",
        "Role",
        "RoleBinding",
        "ServiceAccount",
        "ConfigMap",
        "Pod",
    } <= kinds["defaults"]
    assert "StatefulSet" not in kinds["defaults"] and "RayService" not in kinds["defaults"]
    assert {"RayCluster", "RayJob"} <= kinds["gpu"]
    assert "RayService" in kinds["rayservice"]
    assert "Ingress" in kinds["external"]
    assert {"StatefulSet", "Job", "RayCluster"} <= kinds["evaluation"]
    assert not any(k in ("Secret", "ClusterRole", "ClusterRoleBinding") for ks in kinds.values() for k in ks)


def test_mlflow_server_wiring(rendered):
    objs = rendered["defaults"]
    mlflow = container(one(objs, "Deployment", "eyeops-mlflow")["spec"]["template"]["spec"], "mlflow")
    args = dict(a.removeprefix("--").split("=", 1) for a in mlflow["args"] if "=" in a)
    hosts = args["allowed-hosts"].split(",")
    for host in ("eyeops-mlflow", "eyeops-mlflow.eyeops.svc", "eyeops-mlflow.eyeops.svc.cluster.local:5000"):
        assert host in hosts
    assert args["backend-store-uri"] == "$(MLFLOW_BACKEND_STORE_URI)"
    assert args["artifacts-destination"] == "s3://eyeops/mlartifacts"
    assert "--serve-artifacts" in mlflow["args"]
    ref = env_of(mlflow)["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "eyeops-mlflow-db", "key": "backend-store-uri"}
    assert env_of(mlflow)["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "eyeops-s3"


def test_external_services(rendered):
    objs = rendered["external"]
    mlflow = container(one(objs, "Deployment", "eyeops-mlflow")["spec"]["template"]["spec"], "mlflow")
    env = env_of(mlflow)
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"] == {
        "name": "rds-mlflow",
        "key": "uri",
    }
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == "http://minio.minio.svc.cluster.local:9000"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": "minio-eyeops",
        "key": "rootUser",
    }
    hosts = next(a for a in mlflow["args"] if a.startswith("--allowed-hosts=")).split("=", 1)[1].split(",")
    assert {"mlflow.example.org", "mlflow.internal.example.org"} <= set(hosts)
    predictor = one(objs, "InferenceService", "fundus-classifier")["spec"]["predictor"]
    kserve = container(predictor, "kserve-container")
    assert env_of(kserve)["STORAGE_URI"]["value"] == "s3://eyeops-prod/models/fundus-classifier/v7"
    assert "--model=/mnt/models" in kserve["args"]
    s3 = one(objs, "NetworkPolicy", "eyeops-netpol-s3-clients")["spec"]["egress"][0]
    assert s3["to"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "minio"}}}]
    assert find(objs, "StatefulSet") == []


def test_kserve_endpoint_defaults(rendered):
    isvc = one(rendered["defaults"], "InferenceService", "fundus-classifier")
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "hpa"
    predictor = isvc["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"], predictor["scaleMetric"]) == (1, 3, "cpu")
    kserve = container(predictor, "kserve-container")
    assert kserve["args"] == [
        "serve",
        "--backend=kserve",
        "--model=eyeops-fundus-classifier@champion",
        "--port=8080",
    ]
    assert "nvidia.com/gpu" not in kserve["resources"]["limits"]
    assert env_of(kserve)["EYEOPS_API_KEYS"]["valueFrom"]["secretKeyRef"]["name"] == "eyeops-api-keys"


def test_gpu_node_pools(rendered):
    objs = rendered["gpu"]
    isvc = one(objs, "InferenceService", "fundus-classifier")
    assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "keda"
    predictor = isvc["spec"]["predictor"]
    res = container(predictor, "kserve-container")["resources"]
    assert res["limits"]["nvidia.com/gpu"] == 1 and res["requests"]["nvidia.com/gpu"] == 1
    assert predictor["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert predictor["tolerations"][0]["key"] == "nvidia.com/gpu"
    for cr in (one(objs, "RayCluster")["spec"], one(objs, "RayJob")["spec"]["rayClusterSpec"]):
        head = cr["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert "nvidia.com/gpu" not in head["resources"]["limits"]  # the head only schedules
        (group,) = cr["workerGroupSpecs"]
        assert (group["groupName"], group["minReplicas"], group["maxReplicas"]) == ("gpu-a100", 0, 8)
        pod = group["template"]["spec"]
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 4
        assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
        assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        shm = next(v for v in pod["volumes"] if v["name"] == "shm")
        assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "32Gi"}
    job = one(objs, "RayJob")["spec"]
    fingerprint = "9f2c4e1a7b3d5f6e8a0c2e4f6a8b0d2f4a6c8e0b2d4f6a8c0e2a4c6e8f0b2d4c"
    assert shlex.split(job["entrypoint"]) == [
        "python",
        "-m",
        "eyeops.train.job",
        "--recipe",
        "fundus-classifier",
        "--dataset-json",
        json.dumps(
            {"fingerprint": fingerprint, "uri": "s3://eyeops/root/datasets/odir"}, separators=(",", ":")
        ),
        "--run-name",
        "eyeops-fundus-classifier",
        "--storage-path",
        "s3://eyeops/root/ray",
        "--ref-out",
        "s3://eyeops/root/runs/eyeops-fundus-classifier/checkpoint_ref.json",
    ]
    assert job["shutdownAfterJobFinishes"] is True


def test_rayjob_template_for_the_pipeline(rendered):
    cm = one(rendered["defaults"], "ConfigMap", "eyeops-rayjob-template")
    job = yaml.safe_load(cm["data"]["rayjob.yaml"])
    assert job["kind"] == "RayJob"
    assert shlex.split(job["spec"]["entrypoint"])[3:9] == [
        "--recipe",
        "${RECIPE}",
        "--dataset-json",
        "${DATASET_JSON}",
        "--run-name",
        "${RUN_NAME}",
    ]
    assert (
        env_of(job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0])[
            "EYEOPS_RAY_ADDRESS"
        ]["value"]
        == "auto"
    )
    worker = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert env_of(worker)["EYEOPS_MLFLOW_TRACKING_URI"]["value"] == "http://eyeops-mlflow.eyeops.svc:5000"


def test_rayservice_variant(rendered):
    objs = rendered["rayservice"]
    svc = one(objs, "RayService", "eye-llm")
    (app,) = yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"]
    assert app["args"] == {
        "model": "eyeops-eye-llm@champion",
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 2,
        "max_batch_size": 8,
        "num_gpus": 1,
    }
    cluster = svc["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    (group,) = cluster["workerGroupSpecs"]
    assert group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "EYEOPS_API_KEYS" in env_of(group["template"]["spec"]["containers"][0])
    gateway = container(one(objs, "Deployment", "eyeops-gateway")["spec"]["template"]["spec"], "gateway")
    assert gateway["args"] == [
        "serve",
        "--backend=local",
        "--model=eyeops-eye-llm@champion",
        "--host=0.0.0.0",
        "--port=8080",
    ]
    assert app["import_path"] == "eyeops.kube.ray_service:app_builder"
    test_pod = one(objs, "Pod", "eyeops-test")["spec"]["containers"][0]
    assert "--require-api=ray.io/v1=rayjobs,rayservices" not in test_pod["args"]
    assert {
        "--require-api=ray.io/v1=rayservices",
        "--require-api=serving.kserve.io/v1beta1=inferenceservices",
    } <= set(test_pod["args"])


def test_gateway_auth_and_helm_test_hook(rendered):
    objs = rendered["defaults"]
    gateway = container(one(objs, "Deployment", "eyeops-gateway")["spec"]["template"]["spec"], "gateway")
    keys = env_of(gateway)["EYEOPS_API_KEYS"]["valueFrom"]["secretKeyRef"]
    assert keys == {"name": "eyeops-api-keys", "key": "api-keys"}
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    hpa = one(objs, "HorizontalPodAutoscaler", "eyeops-gateway")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 6)
    test = one(objs, "Pod", "eyeops-test")
    assert test["metadata"]["annotations"]["helm.sh/hook"] == "test"
    args = test["spec"]["containers"][0]["args"]
    assert "--url=http://eyeops-gateway.eyeops.svc:80/readyz" in args
    assert "--require-api=serving.kserve.io/v1beta1=inferenceservices" in args


def test_evaluation_install(rendered, compiled_pipeline):
    objs = rendered["evaluation"]
    pg = one(objs, "StatefulSet", "eyeops-postgres")
    assert pg["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 70
    mlflow = container(one(objs, "Deployment", "eyeops-mlflow")["spec"]["template"]["spec"], "mlflow")
    assert (
        env_of(mlflow)["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["name"] == "eyeops-postgres"
    )
    cm = one(objs, "ConfigMap", "eyeops-pipelines")
    shipped = list(yaml.safe_load_all(cm["data"]["fundus-classifier.yaml"]))
    assert shipped == list(yaml.safe_load_all(compiled_pipeline.read_text()))
    job = one(objs, "Job", "eyeops-pipeline-upload")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "python",
        "-m",
        "eyeops.kube.kfp_upload",
    ]
    assert one(objs, "NetworkPolicy", "eyeops-netpol-postgres")["spec"]["ingress"][0]["ports"] == [
        {"port": 5432, "protocol": "TCP"}
    ]


def test_rbac_is_least_privilege(rendered):
    for objs in rendered.values():
        role = one(objs, "Role", "eyeops-pipeline")
        grants = {
            (g, r, v)
            for rule in role["rules"]
            for g in rule["apiGroups"]
            for r in rule["resources"]
            for v in rule["verbs"]
        }
        assert ("ray.io", "rayjobs", "create") in grants
        assert ("serving.kserve.io", "inferenceservices", "patch") in grants
        assert ("serving.kserve.io", "inferenceservices", "create") not in grants
        assert ("serving.kserve.io", "inferenceservices", "delete") not in grants
        assert not any(r in ("secrets", "roles", "rolebindings") for _, r, _ in grants)
        accounts = {o["metadata"]["name"]: o for o in find(objs, "ServiceAccount")}
        assert [n for n, sa in accounts.items() if sa["automountServiceAccountToken"]] == [
            "eyeops-pipeline",
            "eyeops-test",
        ]
    binding = one(rendered["external"], "RoleBinding", "eyeops-pipeline")
    assert {"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"} in binding[
        "subjects"
    ]


def test_network_policies_only_allow_the_documented_paths(rendered):
    objs = rendered["defaults"]
    gateway = one(objs, "NetworkPolicy", "eyeops-netpol-gateway")["spec"]
    assert gateway["egress"] == [
        {
            "to": [
                {
                    "podSelector": {
                        "matchLabels": {
                            "app.kubernetes.io/name": "eyeops",
                            "app.kubernetes.io/instance": "eyeops",
                            "app.kubernetes.io/component": "model",
                        }
                    }
                }
            ],
            "ports": [{"port": 8080, "protocol": "TCP"}, {"port": 8000, "protocol": "TCP"}],
        }
    ]
    model = one(objs, "NetworkPolicy", "eyeops-netpol-model")["spec"]
    assert (
        model["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        == "gateway"
    )
    mlflow_in = one(objs, "NetworkPolicy", "eyeops-netpol-mlflow")["spec"]["ingress"][0]["from"]
    assert {"podSelector": {"matchLabels": {"eyeops.io/mlflow-client": "true"}}} in mlflow_in
    # the gateway and the endpoints load models: MLflow and S3 clients; MLflow itself is not
    gw_labels = one(objs, "Deployment", "eyeops-gateway")["spec"]["template"]["metadata"]["labels"]
    assert gw_labels["eyeops.io/mlflow-client"] == "true" and gw_labels["eyeops.io/s3-client"] == "true"
    ml_labels = one(objs, "Deployment", "eyeops-mlflow")["spec"]["template"]["metadata"]["labels"]
    assert "eyeops.io/mlflow-client" not in ml_labels
    isvc_labels = one(objs, "InferenceService")["spec"]["predictor"]["labels"]
    assert isvc_labels["eyeops.io/mlflow-client"] == "true" and isvc_labels["eyeops.io/s3-client"] == "true"
