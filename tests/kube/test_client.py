"""KubeClient retries, apply and wait, through the real kubernetes client against a fake transport."""

from __future__ import annotations

import pytest

from eyeops.errors import ClusterError
from eyeops.kube import KubeClient, describe_rayjob, rayjob_done

OBJ = {
    "apiVersion": "ray.io/v1",
    "kind": "RayJob",
    "metadata": {"name": "train-x", "namespace": "ml"},
    "spec": {"entrypoint": "python -m eyeops.train.job", "shutdownAfterJobFinishes": True},
}


def _client(api_client, **kw):
    sleeps: list[float] = []
    return KubeClient(api_client, sleep=sleeps.append, backoff_s=0.5, **kw), sleeps


def test_transient_failures_are_retried_with_backoff(fake_api):
    api, api_client = fake_api
    api.fail_next = [(503, {}), (429, {"Retry-After": "3"}), (500, {})]
    client, sleeps = _client(api_client)
    created = client.create(OBJ)
    assert created["metadata"]["name"] == "train-x"
    assert api.verbs() == ["POST"] * 4
    assert sleeps == [0.5, 3.0, 2.0]  # exponential, but Retry-After wins for 429


def test_retries_exhausted_and_permanent_errors_are_clear(fake_api):
    api, api_client = fake_api
    api.fail_next = [(503, {})] * 3
    client, _ = _client(api_client, retries=2)
    with pytest.raises(ClusterError, match=r"create rayjobs/train-x in namespace ml: HTTP 503"):
        client.create(OBJ)
    api.fail_next = [(422, {})]
    with pytest.raises(ClusterError, match="HTTP 422 injected failure"):
        client.create(OBJ)
    assert api.verbs().count("POST") == 4  # 422 is not retried


def test_apply_creates_then_patches(fake_api):
    api, api_client = fake_api
    client, _ = _client(api_client)
    client.apply(OBJ)
    changed = {**OBJ, "spec": {**OBJ["spec"], "entrypoint": "python -m eyeops.train.job --v2"}}
    live = client.apply(changed)
    assert api.verbs() == ["POST", "POST", "PATCH"]
    assert live["spec"]["entrypoint"].endswith("--v2") and live["metadata"]["generation"] == 2
    client.delete(OBJ, wait_s=5, poll_s=0)
    assert client.get(OBJ) is None


def test_wait_streams_each_status_change_and_succeeds(fake_api):
    api, api_client = fake_api
    client, _ = _client(api_client)
    client.create(OBJ)
    api.progress["rayjobs"] = [
        {"jobDeploymentStatus": "Initializing"},
        {"jobDeploymentStatus": "Initializing"},
        {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"},
        {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"},
    ]
    lines: list[str] = []
    client.wait(OBJ, rayjob_done, describe=describe_rayjob, timeout_s=30, poll_s=0, on_status=lines.append)
    assert lines == [
        "RayJob train-x: Initializing",
        "RayJob train-x: Running · job RUNNING",
        "RayJob train-x: Complete · job SUCCEEDED",
    ]


def test_wait_reports_failure_and_timeout(fake_api):
    api, api_client = fake_api
    client, _ = _client(api_client)
    client.create(OBJ)
    api.progress["rayjobs"] = [
        {
            "jobDeploymentStatus": "Failed",
            "jobStatus": "FAILED",
            "reason": "AppFailed",
            "message": "loss is NaN",
        }
    ]
    with pytest.raises(ClusterError, match=r"RayJob train-x failed.*AppFailed.*loss is NaN"):
        client.wait(OBJ, rayjob_done, describe=describe_rayjob, timeout_s=30, poll_s=0)
    api.progress["rayjobs"] = [{"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}]
    with pytest.raises(ClusterError, match="not done after 0s"):
        client.wait(OBJ, rayjob_done, describe=describe_rayjob, timeout_s=0, poll_s=0)


def test_unreachable_api_is_a_cluster_error():
    from kubernetes import client as k8s

    config = k8s.Configuration(host="http://127.0.0.1:9")  # discard port: connection refused
    config.retries = 0
    client = KubeClient(k8s.ApiClient(config), retries=1, sleep=lambda s: None)
    with pytest.raises(ClusterError, match="unreachable"):
        client.get(OBJ)
