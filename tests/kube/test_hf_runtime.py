"""``serve.runtime: huggingface``: an InferenceService on KServe's Hugging Face runtime (vLLM) serving
an llm model's merged export, built like the eyeops predictor's pods and checked against the CRD and
the chart's policies; deploy_on_cluster picks it from the recipe (fake Kubernetes transport)."""

from __future__ import annotations

import copy
import re

import pytest

from eyeops.chart.policy import check_labels, check_no_inline_secrets, check_pod_security
from eyeops.errors import ClusterError, ConfigError, RecipeError
from eyeops.kube import (
    HF_RUNTIME_IMAGE,
    KubeClient,
    build_hf_inference_service,
    build_inference_service,
    deploy_on_cluster,
    validate_object,
)
from eyeops.kube.pods import container_security_context, pod_security_context
from eyeops.recipes import parse_recipe
from eyeops.refs import ModelVersionRef

EXPORT = "s3://eyeops/mlartifacts/7/r5/artifacts/hf_model"
VERSION = ModelVersionRef(
    name="eyeops-eye-llm",
    version=5,
    alias="champion",
    run_id="r5",
    model_uri="models:/eyeops-eye-llm/5",
    gate_passed=True,
    gate_reason="ok",
    metric="mcq/accuracy",
    value=0.7,
)


def _recipe(runtime: str = "huggingface", **serve) -> object:
    return parse_recipe(
        {
            "name": "eye-llm",
            "model": {"family": "llm", "max_seq_len": 2048},
            "register": {"model_name": "eyeops-eye-llm"},
            "serve": {"backend": "kserve", "runtime": runtime, **serve},
        }
    )


def test_hf_inference_service_shape_crd_and_policies():
    isvc = build_hf_inference_service(_recipe(gpu=2), VERSION, storage_uri=EXPORT, namespace="ml")
    validate_object(isvc)
    assert check_pod_security(isvc) + check_labels(isvc) + check_no_inline_secrets(isvc) == []
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    assert "containers" not in predictor
    assert model["modelFormat"] == {"name": "huggingface"} and model["storageUri"] == EXPORT
    assert model["image"] == HF_RUNTIME_IMAGE
    assert model["args"] == [
        "--model_name=eyeops-eye-llm",
        "--model_dir=/mnt/models",
        "--max_model_len=2048",  # model.max_seq_len unless serve.max_model_len says otherwise
        "--tensor_parallel_size=2",
    ]
    assert model["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert predictor["nodeSelector"] == {"eyeops.io/pool": "gpu"} and predictor["tolerations"]
    # The pod settings, account and labels of the eyeops predictor (pod_settings.yaml via pods).
    eyeops = build_inference_service(_recipe("eyeops", gpu=2), VERSION, namespace="ml")["spec"]["predictor"]
    for key in ("labels", "serviceAccountName", "automountServiceAccountToken", "securityContext"):
        assert predictor[key] == eyeops[key], key
    assert predictor["securityContext"] == pod_security_context()
    assert model["securityContext"] == container_security_context()
    assert isvc["metadata"] == build_inference_service(_recipe("eyeops"), VERSION, namespace="ml")["metadata"]
    tmp = next(v for v in predictor["volumes"] if v["name"] == "tmp")
    assert tmp == next(v for v in eyeops["volumes"] if v["name"] == "tmp")  # modelCacheSize
    assert {m["mountPath"] for m in model["volumeMounts"]} == {"/tmp", "/dev/shm"}
    # The policy check reads the model spec: a model container without its context is refused.
    bare = copy.deepcopy(isvc)
    del bare["spec"]["predictor"]["model"]["securityContext"]
    assert "readOnlyRootFilesystem is not true" in " ".join(check_pod_security(bare))


def test_hf_inference_service_on_one_gpu_and_a_set_context():
    isvc = build_hf_inference_service(
        _recipe(gpu=1, max_model_len=8192), VERSION, storage_uri=EXPORT, namespace="ml"
    )
    model = isvc["spec"]["predictor"]["model"]
    assert "--max_model_len=8192" in model["args"]
    assert not [a for a in model["args"] if a.startswith("--tensor_parallel_size")]


def test_hf_runtime_is_refused_where_it_cannot_serve():
    with pytest.raises(RecipeError, match=re.escape("model.family 'llm' only; model.family is 'classifier'")):
        parse_recipe(
            {
                "name": "fundus",
                "model": {"family": "classifier"},
                "register": {"model_name": "fundus"},
                "serve": {"backend": "kserve", "runtime": "huggingface"},
            }
        )
    with pytest.raises(RecipeError, match=re.escape("use serve.backend kserve, not ray")):
        _recipe(backend="ray")
    with pytest.raises(
        RecipeError, match=re.escape("serve.runtime: Input should be 'eyeops' or 'huggingface'")
    ):
        _recipe("vllm")
    with pytest.raises(ClusterError, match=re.escape("downloads the export from S3; got '/tmp/hf_model'")):
        build_hf_inference_service(_recipe(), VERSION, storage_uri="/tmp/hf_model", namespace="ml")
    with pytest.raises(ClusterError, match=re.escape("serve.runtime is 'eyeops'")):
        build_hf_inference_service(_recipe("eyeops"), VERSION, storage_uri=EXPORT, namespace="ml")


READY = [{"conditions": [{"type": "Ready", "status": "True"}], "url": "http://eye-llm.ml.example.com"}]


@pytest.mark.timeout(60)
def test_deploy_picks_the_runtime_from_the_recipe_and_replaces_on_a_switch(fake_api):
    api, api_client = fake_api
    client = KubeClient(api_client, sleep=lambda s: None)
    key = ("inferenceservices", "ml", "eyeops-eye-llm")
    api.progress["inferenceservices"] = list(READY)
    deploy_on_cluster(_recipe("eyeops"), VERSION, backend="kserve", namespace="ml", client=client, poll_s=0)
    assert "containers" in api.objects[key]["spec"]["predictor"]

    # One status for the GET that finds the eyeops-runtime object, one for the replacement.
    api.progress["inferenceservices"] = READY * 2
    endpoint = deploy_on_cluster(
        _recipe(), VERSION, backend="kserve", namespace="ml", client=client, poll_s=0, storage_uri=EXPORT
    )
    live = api.objects[key]["spec"]["predictor"]
    assert endpoint.url == "http://eye-llm.ml.example.com" and endpoint.backend == "kserve"
    assert "containers" not in live and live["model"]["storageUri"] == EXPORT
    assert "DELETE" in api.verbs()  # a merge patch cannot swap the runtime: replaced
    with pytest.raises(ConfigError, match=re.escape("deploy it with backend 'kserve', not 'ray'")):
        deploy_on_cluster(_recipe(), VERSION, backend="ray", namespace="ml", client=client, poll_s=0)
