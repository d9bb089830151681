"""`models[]` entries with `runtime: huggingface`: the chart renders an InferenceService on KServe's
Hugging Face runtime in the shape eyeops.kube.build_hf_inference_service builds, valid against the
vendored CRD and the chart's policies (with the release's NetworkPolicies); bad values are refused."""

from __future__ import annotations

import pytest
import yaml
from eyeops_testing.k8s import one

from eyeops.chart import helm_lint, helm_template
from eyeops.chart.policy import check_all
from eyeops.chart.validate import validate_objects
from eyeops.errors import ConfigError
from eyeops.kube import HF_RUNTIME_IMAGE, build_hf_inference_service
from eyeops.recipes import parse_recipe
from eyeops.refs import ModelVersionRef

EXPORT = "s3://eyeops/mlartifacts/7/r5/artifacts/hf_model"
RESOURCES = {"requests": {"cpu": "2", "memory": "16Gi"}, "limits": {"cpu": "2", "memory": "16Gi"}}
LLM = {
    "name": "eye-llm",
    "backend": "kserve",
    "runtime": "huggingface",
    "registeredModel": "eyeops-eye-llm",
    "storageUri": EXPORT,
    "maxModelLen": 2048,
    "gpu": 2,
    "resources": RESOURCES,
    "nodeSelector": {"eyeops.io/pool": "gpu"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
}
CLASSIFIER = {
    "name": "fundus-classifier",
    "backend": "kserve",
    "registeredModel": "eyeops-fundus-classifier",
    "resources": RESOURCES,
}


def _values(tmp_path, *models: dict) -> list:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump({"models": [CLASSIFIER, *models]}))
    return [path]


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> list[dict]:
    return helm_template(_values(tmp_path_factory.mktemp("hf-values"), LLM))


def test_chart_renders_the_hf_runtime_valid_and_within_policy(release):
    assert validate_objects(release) == []
    assert check_all(release) == []  # pod security on the model spec, labels, NetworkPolicies
    predictor = one(release, "InferenceService", "eye-llm")["spec"]["predictor"]
    model = predictor["model"]
    assert "containers" not in predictor
    assert model["modelFormat"] == {"name": "huggingface"} and model["storageUri"] == EXPORT
    assert model["image"] == HF_RUNTIME_IMAGE  # values huggingfaceRuntime.image = the builder's default
    assert model["resources"]["limits"]["nvidia.com/gpu"] == 2
    # The eyeops-runtime entry beside it is untouched.
    eyeops = one(release, "InferenceService", "fundus-classifier")["spec"]["predictor"]
    assert "model" not in eyeops and eyeops["containers"][0]["command"] == ["eyeops"]


def test_chart_and_builder_render_the_same_model_spec(release):
    """Same runtime, arguments, environment, probe, mounts, security and volumes as the pipeline's
    deploy step builds from a recipe with serve.runtime: huggingface (and the same gpu count)."""
    recipe = parse_recipe(
        {
            "name": "eye-llm",
            "model": {"family": "llm", "max_seq_len": 2048},
            "register": {"model_name": "eyeops-eye-llm"},
            "serve": {"backend": "kserve", "runtime": "huggingface", "gpu": 2},
        }
    )
    version = ModelVersionRef(
        name="eye-llm",
        version=5,
        alias="champion",
        run_id="r5",
        model_uri="models:/eye-llm/5",
        gate_passed=True,
        gate_reason="ok",
        metric="mcq/accuracy",
        value=0.7,
    )
    built = build_hf_inference_service(recipe, version, storage_uri=EXPORT, namespace="eyeops")["spec"]
    chart = one(release, "InferenceService", "eye-llm")["spec"]
    chart_model, built_model = chart["predictor"]["model"], built["predictor"]["model"]
    for key in ("modelFormat", "storageUri", "name", "image", "args", "env", "ports", "readinessProbe"):
        assert chart_model[key] == built_model[key], key
    assert chart_model["securityContext"] == built_model["securityContext"]
    assert chart_model["volumeMounts"] == built_model["volumeMounts"]
    for key in ("volumes", "securityContext", "serviceAccountName", "automountServiceAccountToken"):
        assert chart["predictor"][key] == built["predictor"][key], key


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({**LLM, "runtime": "vllm"}, "models.1.runtime"),
        ({**LLM, "backend": "ray"}, "models.1.backend"),
        ({**LLM, "maxModelLen": 8}, "models.1.maxModelLen: Must be greater than or equal to 16"),
        ({**LLM, "storageUri": ""}, "models[eye-llm]: runtime huggingface serves the merged export"),
    ],
)
def test_chart_refuses_bad_hf_entries(tmp_path, entry, expected):
    with pytest.raises(ConfigError) as err:
        helm_template(_values(tmp_path, entry))
    assert expected in str(err.value)


def test_chart_with_an_hf_entry_lints(tmp_path):
    helm_lint(_values(tmp_path, LLM))
