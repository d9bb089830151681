"""Bad values fail before anything reaches a cluster: values.schema.json (wrong types, unknown
keys, negative replicas, bad enums) and the chart's own `fail` checks, each with a clear message."""

from __future__ import annotations

import pytest
import yaml

from eyeops.chart import helm_lint, helm_template
from eyeops.errors import ConfigError

MODEL = {
    "name": "m",
    "backend": "kserve",
    "registeredModel": "eyeops-m",
    "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
}


def _values(tmp_path, data: dict):
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(data))
    return [path]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"gateway": {"replicas": "two"}},
            "gateway.replicas: Invalid type. Expected: integer, given: string",
        ),
        ({"mlflow": {"prot": 5000}}, "Additional property prot is not allowed"),
        ({"telemetry": True}, "Additional property telemetry is not allowed"),
        ({"gateway": {"replicas": -1}}, "gateway.replicas: Must be greater than or equal to 0"),
        (
            {"models": [{**MODEL, "minReplicas": -1}]},
            "models.0.minReplicas: Must be greater than or equal to 0",
        ),
        ({"models": [{**MODEL, "backend": "triton"}]}, "models.0.backend"),
        ({"models": [{**MODEL, "gpu": 0.5}]}, "models.0.gpu: Invalid type. Expected: integer"),
        ({"s3": {"storageRoot": "/data"}}, "s3.storageRoot: Does not match pattern"),
        # a Kubernetes quantity the pipeline's settings would refuse when they read it back
        ({"modelCacheSize": "500m"}, "modelCacheSize: Does not match pattern"),
        (
            {
                "training": {
                    "workerGroups": [
                        {
                            "name": "GPU_pool",
                            "replicas": 0,
                            "minReplicas": 0,
                            "maxReplicas": 1,
                            "gpu": 1,
                            "resources": MODEL["resources"],
                        }
                    ]
                }
            },
            "training.workerGroups.0.name: Does not match pattern",
        ),
        # null deletes a default key in Helm: a container without a memory request is refused
        (
            {"mlflow": {"resources": {"requests": {"memory": None}}}},
            "mlflow.resources.requests: memory is required",
        ),
    ],
)
def test_schema_rejects(tmp_path, values, expected):
    files = _values(tmp_path, values)
    with pytest.raises(ConfigError) as err:
        helm_template(files)
    assert expected in str(err.value)
    with pytest.raises(ConfigError) as lint_err:
        helm_lint(files)
    assert expected in str(lint_err.value)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"models": [{**MODEL, "minReplicas": 3, "maxReplicas": 2}], "gateway": {"model": "m"}},
            "models[m]: minReplicas 3 > maxReplicas 2",
        ),
        (
            {"models": [{**MODEL, "scaleMetric": "rps"}], "gateway": {"model": "m"}},
            "models[m]: scaleMetric rps needs autoscaler keda",
        ),
        (
            {"gateway": {"model": "nope"}},
            'gateway.model "nope" names no entry in models (known: fundus-classifier)',
        ),
        ({"pipeline": {"upload": {"enabled": True}}}, "pipeline.upload.enabled needs pipeline.compiled"),
        ({"training": {"job": {"enabled": True}}}, "training.job.dataset.fingerprint is required"),
        (
            {"pipeline": {"compiled": {"fundus-classifier": "just: text"}}},
            "pipeline.compiled.fundus-classifier: not a compiled KFP pipeline",
        ),
    ],
)
def test_chart_rejects_inconsistent_values(tmp_path, values, expected):
    with pytest.raises(ConfigError) as err:
        helm_template(_values(tmp_path, values))
    assert expected in str(err.value)


def test_missing_crds_fail_with_install_hint():
    with pytest.raises(ConfigError) as err:
        helm_template(api_versions=())
    message = str(err.value)
    assert "the cluster does not serve serving.kserve.io/v1beta1/InferenceService" in message
    assert "install KServe first" in message and "--api-versions" in message


def test_crd_check_can_be_waived_for_offline_rendering():
    objs = helm_template(api_versions=(), set_values={"preflight.requireCRDs": "false"})
    assert any(o["kind"] == "InferenceService" for o in objs)


def test_model_cache_size_pattern_is_the_settings_one():
    """The chart and PlatformSettings accept the same sizes: the value travels through eyeops-config."""
    import json

    from eyeops.chart import CHART_DIR
    from eyeops.config import PlatformSettings

    schema = json.loads((CHART_DIR / "values.schema.json").read_text(encoding="utf-8"))
    field = PlatformSettings.model_fields["kube_model_cache_size"]
    patterns = [m.pattern for m in field.metadata if hasattr(m, "pattern")]
    assert patterns == [schema["$defs"]["storageSize"]["pattern"]]
