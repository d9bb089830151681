"""RayJob / InferenceService / RayService builders, checked against the upstream CRD schemas."""

from __future__ import annotations

import json
import shlex

import pytest
import yaml

from eyeops.errors import ClusterError, ConfigError
from eyeops.kube import (
    GpuPool,
    Toleration,
    build_inference_service,
    build_rayjob,
    build_rayservice,
    find_crd_dir,
    k8s_name,
    validate_object,
)
from eyeops.kube.schema import CRD_DIR
from eyeops.recipes import parse_recipe
from eyeops.refs import DatasetRef, ModelVersionRef
from eyeops.train.job import _parser

CRDS = find_crd_dir()  # the vendored upstream CRDs: present in every checkout and install


def _recipe(**train):
    return parse_recipe(
        {
            "name": "fundus-classifier",
            "model": {"family": "classifier"},
            "register": {"model_name": "fundus-classifier"},
            "train": {"num_workers": 3, "use_gpu": True, **train},
            "serve": {"gpu": 1},
        }
    )


DATASET = DatasetRef(uri="s3://bucket/eyeops/datasets/fundus", fingerprint="f" * 64, name="fundus")
VERSION = ModelVersionRef(
    name="fundus-classifier",
    version=7,
    alias="champion",
    run_id="abc",
    model_uri="models:/fundus-classifier/7",
    gate_passed=True,
    gate_reason="beats champion",
    metric="macro_auc",
    value=0.91,
)
POOL = GpuPool(
    accelerator="nvidia.com/gpu",
    gpus_per_worker=2,
    node_selector={"pool": "a100"},
    tolerations=[Toleration(key="dedicated", operator="Equal", value="gpu")],
)


def _rayjob(recipe=None):
    return build_rayjob(
        recipe or _recipe(),
        DATASET,
        run_name="Fundus_Run 42",
        storage_path="s3://bucket/runs",
        ref_out="s3://bucket/runs/ref.json",
        namespace="ml",
        image="img:1",
        pool=POOL,
    )


def test_rayjob_shape_gpu_workers_and_forwarded_pool():
    job = _rayjob()
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["metadata"]["name"] == "train-fundus-run-42"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    head = spec["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert "nodeSelector" not in head["template"]["spec"]  # the head stays on the CPU pool
    (group,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 3
    pod = group["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "a100"}
    assert pod["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}
    ]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    # credentials only by reference (the chart's Secret), settings from the ConfigMap, never literals
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "eyeops-s3",
        "key": "AWS_SECRET_ACCESS_KEY",
        "optional": True,
    }
    assert "value" not in env["AWS_SECRET_ACCESS_KEY"]
    assert env["EYEOPS_STORAGE_ROOT"]["valueFrom"]["configMapKeyRef"]["name"] == "eyeops-config"
    assert env["EYEOPS_RAY_ADDRESS"]["value"] == "auto"  # join the KubeRay cluster, never start one


def test_cpu_recipe_gets_no_gpu_or_pool():
    pod = _rayjob(_recipe(use_gpu=False))["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert "nodeSelector" not in pod and "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]


def test_entrypoint_round_trips_through_the_job_module():
    recipe = _recipe(max_steps=5)
    argv = shlex.split(_rayjob(recipe)["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "eyeops.train.job"]
    args = _parser().parse_args(argv[3:])
    assert parse_recipe(json.loads(args.recipe_json)) == recipe
    assert DatasetRef.model_validate_json(args.dataset_json) == DATASET
    assert args.ref_out == "s3://bucket/runs/ref.json" and args.run_name == "Fundus_Run 42"


def test_rayjob_refuses_local_storage():
    with pytest.raises(ClusterError, match="S3"):
        build_rayjob(
            _recipe(),
            DATASET,
            run_name="r",
            storage_path="/tmp/runs",
            ref_out="s3://b/r.json",
            namespace="ml",
        )


def test_inference_service_standard_mode_and_version_pinned():
    isvc = build_inference_service(_recipe(), VERSION, namespace="ml", image="img:1", pool=POOL)
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    predictor = isvc["spec"]["predictor"]
    env = {e["name"]: e.get("value") for e in predictor["containers"][0]["env"]}
    assert env["EYEOPS_SERVE_MODEL_URI"] == "models:/fundus-classifier/7"
    assert predictor["nodeSelector"] == {"pool": "a100"} and predictor["maxReplicas"] == 2


def test_rayservice_carries_autoscaling():
    svc = build_rayservice(_recipe(), VERSION, namespace="ml", image="img:1")
    assert "target_ongoing_requests" in svc["spec"]["serveConfigV2"]
    assert svc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] == 2


def test_objects_validate_against_upstream_crds():
    for obj in (
        _rayjob(),
        _rayjob(_recipe(use_gpu=False)),
        build_inference_service(_recipe(), VERSION, namespace="ml"),
        build_rayservice(_recipe(), VERSION, namespace="ml"),
    ):
        validate_object(obj, CRDS)


def test_schema_violation_names_the_path():
    job = _rayjob()
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "three"
    with pytest.raises(ClusterError, match=r"workerGroupSpecs\.0\.replicas.*'three'"):
        validate_object(job, CRDS)
    job = _rayjob()
    job["apiVersion"] = "ray.io/v9"
    with pytest.raises(ClusterError, match="v9"):
        validate_object(job, CRDS)


def test_unknown_field_fails_instead_of_being_pruned():
    # The API server would drop the typo silently; the shared strict validator refuses it.
    job = _rayjob()
    job["spec"]["shutdownAfterJobFinish"] = True
    with pytest.raises(ClusterError, match="shutdownAfterJobFinish"):
        validate_object(job, CRDS)


def test_runtime_imports_without_dev_only_validators_or_chart_tooling():
    """The images install no dev extras and hold no chart: eyeops.kube must import without
    kubernetes-validate, and without the checkout-only eyeops.chart."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['kubernetes_validate'] = None; import eyeops.kube; "
        "assert 'eyeops.chart' not in sys.modules, 'eyeops.kube imported eyeops.chart'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


def test_crds_are_vendored_and_an_override_must_exist(tmp_path, monkeypatch):
    """Validation never skips: the default is the packaged copy; EYEOPS_CRD_DIR (another
    KServe/KubeRay release's CRDs) replaces it, and a wrong one is an error, not a silent skip."""
    assert CRDS == CRD_DIR and sorted(p.name for p in CRDS.glob("*.yaml")) == [
        "ray.io_rayclusters.yaml",
        "ray.io_rayjobs.yaml",
        "ray.io_rayservices.yaml",
        "serving.kserve.io_inferenceservices.yaml",
        "serving.kserve.io_servingruntimes.yaml",
    ]
    monkeypatch.setenv("EYEOPS_CRD_DIR", str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match="EYEOPS_CRD_DIR"):
        validate_object(_rayjob())
    monkeypatch.setenv("EYEOPS_CRD_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="no CustomResourceDefinition"):
        validate_object(_rayjob())


def test_k8s_names():
    assert k8s_name("Fundus_Classifier", "RUN.1") == "fundus-classifier-run-1"
    assert len(k8s_name("x" * 100)) == 63
    with pytest.raises(ClusterError):
        k8s_name("___")


def test_job_entrypoint_reports_bad_input_in_one_line(capsys, tmp_path):
    from eyeops.train.job import main

    rc = main(
        ["--recipe", "fundus-classifier", "--dataset-json", '{"uri": "/d"}', "--ref-out", str(tmp_path / "r")]
    )
    assert rc == 2 and "--dataset-json is not a DatasetRef" in capsys.readouterr().err
    rc = main(["--recipe-json", "{not json", "--dataset-json", DATASET.model_dump_json(), "--ref-out", "x"])
    assert rc == 2 and "not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_rayservice_import_path_and_args_are_accepted_by_the_app_builder():
    """The serveConfigV2 entry must name a real builder that accepts the args we generate."""
    import importlib

    from eyeops.kube.ray_service import parse_args

    app = build_rayservice(_recipe(), VERSION, namespace="ml", image="img:1")["spec"]["serveConfigV2"]
    application = yaml.safe_load(app)["applications"][0] if isinstance(app, str) else app["applications"][0]
    module_name, attr = application["import_path"].split(":")
    assert callable(getattr(importlib.import_module(module_name), attr))
    model, _spec, _cpus = parse_args(application["args"])
    assert model == VERSION.model_uri


def _serving_recipe(**serve):
    return parse_recipe(
        {"name": "eye-llm", "model": {"family": "llm"}, "register": {"model_name": "eye-llm"}, "serve": serve}
    )


@pytest.mark.parametrize(("serve", "device", "gpus"), [({}, None, 0), ({"device": "cuda:1"}, "cuda:1", 2)])
def test_serve_device_reaches_the_predictor_and_the_ray_serve_app(serve, device, gpus):
    """serve.device overrides where the model was saved to load (auto: no override); its GPUs follow."""
    from eyeops.kube.ray_service import parse_args

    recipe = _serving_recipe(**serve)
    (predictor,) = build_inference_service(recipe, VERSION, namespace="ml")["spec"]["predictor"]["containers"]
    args = predictor["args"]
    assert (args[args.index("--device") + 1] if "--device" in args else None) == device
    assert predictor["resources"]["limits"].get("nvidia.com/gpu", 0) == gpus
    service = build_rayservice(recipe, VERSION, namespace="ml")
    (app,) = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    assert (
        app["args"].get("device") == device and app["deployments"][0]["ray_actor_options"]["num_gpus"] == gpus
    )
    _model, spec, _cpus = parse_args(app["args"])
    assert (spec.device, spec.gpus) == (device or "auto", gpus)
    validate_object(service)


def test_ray_serve_args_refuse_a_device_without_its_gpus():
    from eyeops.kube.ray_service import parse_args

    with pytest.raises(ConfigError, match=r"serve.device 'cuda:1' needs at least 2 GPU\(s\) per pod; 1"):
        parse_args({"model": "m@champion", "device": "cuda:1", "num_gpus": 1})
    with pytest.raises(ConfigError, match=r"RayService args: .*serve.device 'tpu': not a device"):
        parse_args({"model": "m@champion", "device": "tpu"})
