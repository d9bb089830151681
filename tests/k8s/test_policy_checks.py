"""The validators and policy checks themselves catch what they claim to (so the chart tests
passing means something)."""

from __future__ import annotations

import copy

import pytest
from eyeops_testing.k8s import one

from eyeops.chart import check_no_inline_secrets, check_objects, check_pod_security, helm_template
from eyeops.chart.policy import check_network_policies, check_rbac_namespaced
from eyeops.chart.validate import validate_core
from eyeops.errors import ClusterError
from eyeops.kube.schema import strict_schema, validate_custom


@pytest.fixture(scope="module")
def objects():
    return helm_template(["helm/eyeops/ci/gpu-values.yaml"])


def test_pod_security_violations_are_named(objects):
    deploy = copy.deepcopy(one(objects, "Deployment", "eyeops-gateway"))
    c = deploy["spec"]["template"]["spec"]["containers"][0]
    c["securityContext"].update(
        readOnlyRootFilesystem=False,
        allowPrivilegeEscalation=True,
        capabilities={"add": ["SYS_ADMIN"]},
        runAsUser=0,
    )
    del c["resources"]["limits"]
    c["image"] = "ghcr.io/eyeops/eyeops-server:latest"
    problems = "\n".join(check_pod_security(deploy))
    for expected in (
        "readOnlyRootFilesystem is not true",
        "allowPrivilegeEscalation is not false",
        "capabilities.drop lacks ALL",
        "adds capabilities ['SYS_ADMIN']",
        "runAsUser is 0",
        "resources.limits lacks ['cpu', 'memory']",
        "is not pinned",
    ):
        assert expected in problems
    assert "Deployment/eyeops-gateway" in problems and "container 'gateway'" in problems


def test_pod_security_reaches_ray_and_kserve_pods(objects):
    cluster = copy.deepcopy(one(objects, "RayCluster"))
    del cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["securityContext"]["seccompProfile"]
    del cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["securityContext"][
        "seccompProfile"
    ]
    assert check_pod_security(cluster) == [
        "RayCluster/eyeops-training spec.workerGroupSpecs[gpu-a100] container 'ray-worker': "
        "seccompProfile is None, not RuntimeDefault"
    ]
    isvc = copy.deepcopy(one(objects, "InferenceService"))
    isvc["spec"]["predictor"]["securityContext"]["runAsNonRoot"] = False
    del isvc["spec"]["predictor"]["containers"][0]["securityContext"]["runAsNonRoot"]
    assert any("runAsNonRoot is not true" in p for p in check_pod_security(isvc))


def test_inline_secrets_are_found():
    bad = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "c",
                            "env": [
                                {"name": "POSTGRES_PASSWORD", "value": "hunter2"},
                                {"name": "DB", "value": "postgresql://mlflow:hunter2@db:5432/mlflow"},
                            ],
                        }
                    ]
                }
            }
        },
    }
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"k": "v"}}
    problems = check_no_inline_secrets(bad) + check_no_inline_secrets(secret)
    assert len(problems) == 3
    assert "env POSTGRES_PASSWORD has an inline value" in problems[0]
    assert "a URL with an inline password" in problems[1]


def test_network_and_rbac_checks(objects):
    without_deny = [o for o in objects if not o["metadata"]["name"].endswith("netpol-default-deny")]
    assert "no default-deny NetworkPolicy" in check_network_policies(without_deny)[0]
    only_deny = [
        o for o in objects if o["kind"] != "NetworkPolicy" or o["metadata"]["name"].endswith("default-deny")
    ]
    assert any("selected by no allow NetworkPolicy" in p for p in check_network_policies(only_deny))
    role = copy.deepcopy(one(objects, "Role", "eyeops-pipeline"))
    role["rules"][0]["verbs"] = ["*"]
    cluster_role = {**role, "kind": "ClusterRole"}
    assert check_rbac_namespaced([role, cluster_role]) == [
        "Role/eyeops-pipeline rules[0].verbs: wildcard",
        "ClusterRole/eyeops-pipeline: cluster-wide RBAC",
    ]


def test_core_validation_is_strict(objects):
    svc = copy.deepcopy(one(objects, "Service", "eyeops-gateway"))
    svc["spec"]["ports"][0]["prot"] = 80
    svc["spec"]["type"] = 3
    problems = "\n".join(validate_core(svc))
    assert "prot" in problems and "spec.type" in problems
    with pytest.raises(ClusterError, match="Service/eyeops-gateway"):
        check_objects([svc])


def test_custom_resource_typos_fail(objects, crd_schemas):
    isvc = copy.deepcopy(one(objects, "InferenceService"))
    isvc["spec"]["predictor"]["minReplica"] = 1  # typo: the API server would silently prune it
    isvc["spec"]["predictor"]["scaleMetric"] = "gpu"
    job = copy.deepcopy(one(objects, "RayJob"))
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplicas"] = "many"
    problems = validate_custom(isvc, crd_schemas) + validate_custom(job, crd_schemas)
    text = "\n".join(problems)
    assert "'minReplica' was unexpected" in text
    assert "spec.predictor.scaleMetric: 'gpu' is not one of" in text
    assert "spec.rayClusterSpec.workerGroupSpecs.0.maxReplicas: 'many' is not of type 'integer'" in text
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert "no CRD schema" in validate_custom(unknown, crd_schemas)[0]


def test_strict_schema_closes_objects_but_keeps_open_ones_open():
    schema = strict_schema(
        {
            "type": "object",
            "properties": {
                "a": {"type": "string", "nullable": True},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {}},
                "map": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        }
    )
    assert schema["additionalProperties"] is False
    assert schema["properties"]["a"]["type"] == ["string", "null"]
    assert "additionalProperties" not in schema["properties"]["free"]
    assert schema["properties"]["map"]["additionalProperties"] == {"type": "string"}
