"""train_on_cluster / deploy_on_cluster against the fake Kubernetes transport and a real S3 server (moto)."""

from __future__ import annotations

import pytest

from eyeops.config import get_settings
from eyeops.errors import ClusterError
from eyeops.kube import KubeClient, deploy_on_cluster, train_on_cluster
from eyeops.recipes import parse_recipe
from eyeops.refs import CheckpointRef, DatasetRef, ModelVersionRef
from eyeops.storage import write_ref

RECIPE = parse_recipe(
    {
        "name": "fundus-classifier",
        "model": {"family": "classifier"},
        "register": {"model_name": "fundus-classifier"},
        "train": {"use_gpu": True},
    }
)
DATASET = DatasetRef(uri="s3://eyeops-test/root/datasets/d1", fingerprint="d" * 64, name="d1")
CHECKPOINT = CheckpointRef(
    uri="s3://eyeops-test/root/runs/run-1/model",
    fingerprint="c" * 64,
    recipe_name="fundus-classifier",
    family="classifier",
    run_name="run-1",
    step=40,
    dataset_fingerprint="d" * 64,
)
VERSION = ModelVersionRef(
    name="fundus-classifier",
    version=3,
    alias="champion",
    run_id="r3",
    model_uri="models:/fundus-classifier/3",
    gate_passed=True,
    gate_reason="ok",
    metric="macro_auc",
    value=0.9,
)
DONE = [
    {"jobDeploymentStatus": "Initializing"},
    {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"},
    {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"},
]


@pytest.fixture
def s3(moto_endpoint, monkeypatch):
    import boto3

    monkeypatch.setenv("EYEOPS_STORAGE_ROOT", "s3://eyeops-test/root")
    monkeypatch.setenv("EYEOPS_S3_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("EYEOPS_MLFLOW_TRACKING_URI", "http://mlflow.invalid")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    get_settings.cache_clear()
    s3 = boto3.client("s3", **get_settings().s3_client_kwargs())
    s3.create_bucket(Bucket="eyeops-test")
    yield moto_endpoint
    for item in s3.list_objects_v2(Bucket="eyeops-test").get("Contents", []):
        s3.delete_object(Bucket="eyeops-test", Key=item["Key"])


def _client(api_client):
    return KubeClient(api_client, sleep=lambda s: None)


def test_train_submits_a_rayjob_waits_and_reads_the_checkpoint_back(fake_api, s3):
    api, api_client = fake_api
    write_ref("s3://eyeops-test/root/runs/run-1/checkpoint_ref.json", CHECKPOINT)  # what the job writes
    api.progress["rayjobs"] = list(DONE)
    lines: list[str] = []
    ref = train_on_cluster(
        RECIPE,
        DATASET,
        run_name="run-1",
        namespace="ml",
        client=_client(api_client),
        poll_s=0,
        on_status=lines.append,
    )
    assert ref == CHECKPOINT
    assert lines == [
        "RayJob train-run-1: Initializing",
        "RayJob train-run-1: Running · job RUNNING",
        "RayJob train-run-1: Complete · job SUCCEEDED",
    ]
    job = api.objects[("rayjobs", "ml", "train-run-1")]
    assert "--ref-out s3://eyeops-test/root/runs/run-1/checkpoint_ref.json" in job["spec"]["entrypoint"]
    assert "--storage-path s3://eyeops-test/root/runs/run-1" in job["spec"]["entrypoint"]
    # The chart's Ray ServiceAccount, not the namespace default (EYEOPS_KUBE_SERVICE_ACCOUNT unset).
    assert _service_accounts(job) == {"eyeops-ray"}


def _service_accounts(job: dict) -> set[str | None]:
    cluster = job["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return {group["template"]["spec"].get("serviceAccountName") for group in pods}


def test_ray_pods_run_as_the_configured_service_account(fake_api, s3, monkeypatch):
    """Pipeline tasks learn the account and release from the chart's ConfigMap
    (EYEOPS_KUBE_SERVICE_ACCOUNT, EYEOPS_KUBE_RELEASE); an explicit argument wins."""
    api, api_client = fake_api
    write_ref("s3://eyeops-test/root/runs/run-1/checkpoint_ref.json", CHECKPOINT)
    monkeypatch.setenv("EYEOPS_KUBE_SERVICE_ACCOUNT", "prod-eyeops-ray")
    monkeypatch.setenv("EYEOPS_KUBE_RELEASE", "prod")
    get_settings.cache_clear()
    api.progress["rayjobs"] = list(DONE)
    train_on_cluster(RECIPE, DATASET, run_name="run-1", namespace="ml", client=_client(api_client), poll_s=0)
    job = api.objects[("rayjobs", "ml", "train-run-1")]
    assert _service_accounts(job) == {"prod-eyeops-ray"}
    # ...and labelled for that release, so its NetworkPolicies (DNS first) select the pods.
    cluster = job["spec"]["rayClusterSpec"]
    templates = [job["spec"]["submitterPodTemplate"], cluster["headGroupSpec"]["template"]]
    templates += [g["template"] for g in cluster["workerGroupSpecs"]]
    assert {t["metadata"]["labels"]["app.kubernetes.io/instance"] for t in templates} == {"prod"}
    api.objects.clear()
    api.progress["rayjobs"] = list(DONE)
    train_on_cluster(
        RECIPE,
        DATASET,
        run_name="run-1",
        namespace="ml",
        service_account="trainer",
        client=_client(api_client),
        poll_s=0,
    )
    assert _service_accounts(api.objects[("rayjobs", "ml", "train-run-1")]) == {"trainer"}


def test_a_retry_replaces_a_failed_job_and_reattaches_to_a_good_one(fake_api, s3):
    api, api_client = fake_api
    write_ref("s3://eyeops-test/root/runs/run-1/checkpoint_ref.json", CHECKPOINT)
    client = _client(api_client)
    api.objects[("rayjobs", "ml", "train-run-1")] = {"metadata": {"name": "train-run-1", "generation": 1}}
    api.progress["rayjobs"] = [{"jobDeploymentStatus": "Failed", "jobStatus": "FAILED"}, *DONE]
    assert (
        train_on_cluster(RECIPE, DATASET, run_name="run-1", namespace="ml", client=client, poll_s=0)
        == CHECKPOINT
    )
    assert api.verbs()[:3] == ["GET", "DELETE", "GET"] and "POST" in api.verbs()
    # A retried KFP task whose job already succeeded attaches to it instead of training again.
    api.requests.clear()
    api.progress["rayjobs"] = [{"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}]
    assert (
        train_on_cluster(RECIPE, DATASET, run_name="run-1", namespace="ml", client=client, poll_s=0)
        == CHECKPOINT
    )
    assert "POST" not in api.verbs() and "DELETE" not in api.verbs()


def test_missing_checkpoint_ref_and_local_storage_are_clear_errors(fake_api, s3, monkeypatch):
    from eyeops.errors import NotFoundError

    api, api_client = fake_api
    api.progress["rayjobs"] = list(DONE)
    with pytest.raises(NotFoundError, match=r"checkpoint_ref\.json does not exist"):
        train_on_cluster(
            RECIPE, DATASET, run_name="run-2", namespace="ml", client=_client(api_client), poll_s=0
        )
    monkeypatch.setenv("EYEOPS_STORAGE_ROOT", "/tmp/local-root")
    get_settings.cache_clear()
    with pytest.raises(ClusterError, match="S3"):
        train_on_cluster(RECIPE, DATASET, run_name="run-3", client=_client(api_client))


def test_deploy_creates_then_patches_and_waits_for_ready(fake_api):
    api, api_client = fake_api
    client = _client(api_client)
    api.progress["inferenceservices"] = [
        {"conditions": [{"type": "Ready", "status": "False"}]},
        {"conditions": [{"type": "Ready", "status": "True"}], "url": "http://fundus.ml.example.com"},
    ]
    lines: list[str] = []
    endpoint = deploy_on_cluster(
        RECIPE, VERSION, backend="kserve", namespace="ml", client=client, poll_s=0, on_status=lines.append
    )
    assert (
        endpoint.url == "http://fundus.ml.example.com"
        and endpoint.backend == "kserve"
        and endpoint.version == 3
    )
    assert lines[-1] == "InferenceService fundus-classifier: Ready · http://fundus.ml.example.com"
    newer = VERSION.model_copy(update={"version": 4, "model_uri": "models:/fundus-classifier/4"})
    api.progress["inferenceservices"] = [
        {"conditions": [{"type": "Ready", "status": "True"}], "url": "http://fundus.ml.example.com"}
    ]
    deploy_on_cluster(RECIPE, newer, backend="kserve", namespace="ml", client=client, poll_s=0)
    live = api.objects[("inferenceservices", "ml", "fundus-classifier")]
    env = {e["name"]: e.get("value") for e in live["spec"]["predictor"]["containers"][0]["env"]}
    assert env["EYEOPS_SERVE_MODEL_URI"] == "models:/fundus-classifier/4" and "PATCH" in api.verbs()
    with pytest.raises(ClusterError, match="backend 'sagemaker'"):
        deploy_on_cluster(RECIPE, VERSION, backend="sagemaker", client=client)


def _serving_pods(live: dict) -> list[tuple[str, dict, dict]]:
    """(ServiceAccount, pod labels, pod spec) of every pod a live serving object would run."""
    if live["kind"] == "InferenceService":
        predictor = live["spec"]["predictor"]
        return [(predictor["serviceAccountName"], predictor["labels"], predictor)]
    cluster = live["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [
        (
            g["template"]["spec"]["serviceAccountName"],
            g["template"]["metadata"]["labels"],
            g["template"]["spec"],
        )
        for g in groups
    ]


@pytest.mark.parametrize(
    ("backend", "plural", "default_account", "env_account"),
    [
        ("kserve", "inferenceservices", "eyeops-model", "EYEOPS_KUBE_MODEL_SERVICE_ACCOUNT"),
        ("ray", "rayservices", "eyeops-ray", "EYEOPS_KUBE_SERVICE_ACCOUNT"),
    ],
)
def test_serving_pods_run_as_the_configured_account_and_release(
    fake_api, monkeypatch, backend, plural, default_account, env_account
):
    """Unset, the chart's account for the backend (release eyeops); pipeline tasks get the installed
    release's account and name from the ConfigMap; an explicit account wins."""
    api, api_client = fake_api
    ready = {"conditions": [{"type": "Ready", "status": "True"}], "serviceStatus": "Running"}

    def deploy(**kwargs) -> list[tuple[str, dict, dict]]:
        api.objects.clear()
        api.progress[plural] = [ready]
        deploy_on_cluster(
            RECIPE, VERSION, backend=backend, namespace="ml", client=_client(api_client), poll_s=0, **kwargs
        )
        return _serving_pods(api.objects[(plural, "ml", "fundus-classifier")])

    def tmp_size(pod: dict) -> str:
        return next(v["emptyDir"]["sizeLimit"] for v in pod["volumes"] if v["name"] == "tmp")

    for i, (account, labels, pod) in enumerate(deploy()):
        assert account == default_account and labels["app.kubernetes.io/instance"] == "eyeops"
        assert labels["app.kubernetes.io/component"] == "model"  # the chart gateway's peers
        # Only the RayService head mounts a token: KubeRay's autoscaler sidecar scales through the API.
        assert pod["automountServiceAccountToken"] is (backend == "ray" and i == 0)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert tmp_size(pod) == "20Gi"  # the model is downloaded and loaded under HOME=/tmp
    monkeypatch.setenv(env_account, f"prod-{default_account}")
    monkeypatch.setenv("EYEOPS_KUBE_RELEASE", "prod")
    monkeypatch.setenv("EYEOPS_KUBE_MODEL_CACHE_SIZE", "48Gi")
    get_settings.cache_clear()
    pods = deploy()
    assert {(a, labels["app.kubernetes.io/instance"]) for a, labels, _ in pods} == {
        (f"prod-{default_account}", "prod")
    }
    assert {tmp_size(pod) for _, _, pod in pods} == {"48Gi"}
    assert {a for a, _, _ in deploy(service_account="server")} == {"server"}


def test_pods_get_the_hf_token_secret_the_configmap_names(fake_api, s3, monkeypatch):
    """EYEOPS_KUBE_HF_TOKEN_SECRET/KEY (the chart's huggingface.tokenSecret, via its ConfigMap) put
    the token on every RayJob, InferenceService and RayService pod, as the env var hf_token_env names."""
    api, api_client = fake_api
    write_ref("s3://eyeops-test/root/runs/run-1/checkpoint_ref.json", CHECKPOINT)
    ready = {"conditions": [{"type": "Ready", "status": "True"}], "serviceStatus": "Running"}

    def pods() -> list[dict]:
        api.objects.clear()
        api.progress.update(rayjobs=list(DONE), inferenceservices=[ready], rayservices=[ready])
        client = _client(api_client)
        train_on_cluster(RECIPE, DATASET, run_name="run-1", namespace="ml", client=client, poll_s=0)
        for backend in ("kserve", "ray"):
            deploy_on_cluster(RECIPE, VERSION, backend=backend, namespace="ml", client=client, poll_s=0)
        job = api.objects[("rayjobs", "ml", "train-run-1")]["spec"]["rayClusterSpec"]
        found = [job["headGroupSpec"]["template"]["spec"], job["workerGroupSpecs"][0]["template"]["spec"]]
        found += [api.objects[("inferenceservices", "ml", "fundus-classifier")]["spec"]["predictor"]]
        service = api.objects[("rayservices", "ml", "fundus-classifier")]["spec"]["rayClusterConfig"]
        found += [service["headGroupSpec"]["template"]["spec"]]
        return [*found, service["workerGroupSpecs"][0]["template"]["spec"]]

    def token_env(pod: dict) -> list[dict]:
        env = pod["containers"][0]["env"]
        return [e for e in env if "secretKeyRef" in e.get("valueFrom", {}) and "AWS" not in e["name"]]

    assert [token_env(pod) for pod in pods()] == [[]] * 5  # no Secret named: no token
    monkeypatch.setenv("EYEOPS_KUBE_HF_TOKEN_SECRET", "hf-gated")
    monkeypatch.setenv("EYEOPS_HF_TOKEN_ENV", "HUGGING_FACE_HUB_TOKEN")
    get_settings.cache_clear()
    ref = {"secretKeyRef": {"name": "hf-gated", "key": "token", "optional": False}}
    expected = [{"name": "HUGGING_FACE_HUB_TOKEN", "valueFrom": ref}]
    assert [token_env(pod) for pod in pods()] == [expected] * 5
