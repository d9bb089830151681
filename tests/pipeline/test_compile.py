"""Compiling for the cluster: deterministic IR with the GPU pool, tolerations, retries and secrets."""

from __future__ import annotations

import yaml

from eyeops.kube import SERVER_IMAGE, TRAINER_IMAGE
from eyeops.pipeline import compile_pipeline
from eyeops.pipeline.compile import COMPILED_DIR
from eyeops.recipes import list_recipes


def test_compile_is_deterministic_and_carries_cluster_settings(tmp_path):
    first = compile_pipeline("fundus-classifier", tmp_path / "a")
    second = compile_pipeline("fundus-classifier", tmp_path / "b")
    text = first.read_text()
    assert text == second.read_text()
    spec, platform = yaml.safe_load_all(text)  # the KFP IR, then the kubernetes platform config
    train = spec["deploymentSpec"]["executors"]["exec-train"]["container"]
    assert train["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert train["resources"]["accelerator"]["resourceCount"] == "1"
    # Every task runs the trainer image the chart's Ray pods run; deploy creates server endpoints.
    executors = spec["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {TRAINER_IMAGE}
    gated = spec["components"]["comp-condition-1"]["dag"]["tasks"]["deploy"]["inputs"]["parameters"]
    assert gated["image"]["runtimeValue"]["constant"] == SERVER_IMAGE
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert k8s["exec-train"]["nodeSelector"]["labels"] == {"eyeops.io/pool": "gpu"}
    assert k8s["exec-train"]["tolerations"] == [
        {"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}
    ]
    for executor in ("exec-prepare-data", "exec-train", "exec-evaluate", "exec-register", "exec-deploy"):
        secrets = {
            s["secretName"]: {k["envVar"] for k in s["keyToEnv"]} for s in k8s[executor]["secretAsEnv"]
        }
        # The S3 keys, and the Hugging Face token of gated repos where Secret eyeops-hf-token exists.
        # The prepare task also gets the LLM data engine's endpoint key (data.engine.llm).
        llm_key = {"eyeops-llm-api-key": {"EYEOPS_LLM_API_KEY"}} if executor == "exec-prepare-data" else {}
        assert secrets == {
            "eyeops-s3": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
            "eyeops-hf-token": {"HF_TOKEN"},
            **llm_key,
        }
        assert {s["secretName"]: s["optional"] for s in k8s[executor]["secretAsEnv"]}["eyeops-hf-token"]
        maps = {
            m["configMapName"]: {k["envVar"] for k in m["keyToEnv"]} for m in k8s[executor]["configMapAsEnv"]
        }
        assert {"EYEOPS_STORAGE_ROOT", "EYEOPS_MLFLOW_TRACKING_URI"} <= maps["eyeops-config"]
    assert "nodeSelector" not in k8s["exec-evaluate"]  # only train lands on the GPU pool
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["train"]["retryPolicy"]["maxRetryCount"] == 2
    assert spec["root"]["inputDefinitions"]["parameters"]["recipe"]["defaultValue"] == "fundus-classifier"
    gate = tasks["condition-1"]["triggerPolicy"]["condition"]
    assert (
        "pipelinechannel--register-Output" in gate
        and "deploy" in spec["components"]["comp-condition-1"]["dag"]["tasks"]
    )


def test_checked_in_yaml_is_current(tmp_path):
    """`make pipelines` output is committed: compiling again reproduces every checked-in file."""
    checked_in = sorted(COMPILED_DIR.glob("*.yaml"))
    assert COMPILED_DIR / "fundus-classifier.yaml" in checked_in, "run `make pipelines`"
    known = set(list_recipes())
    for path in checked_in:
        assert path.stem in known, f"{path} has no recipes/{path.stem}.yaml: delete it"
        fresh = compile_pipeline(path.stem, tmp_path).read_text()
        assert path.read_text() == fresh, f"{path} is stale: run `make pipelines`"
