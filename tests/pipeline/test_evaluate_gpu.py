"""The compiled evaluate task gets the GPU its recipe's evaluate.device asks for."""

from __future__ import annotations

import yaml
from kfp import compiler

from eyeops.pipeline.compile import cluster_target
from eyeops.pipeline.finetune import build_pipeline
from eyeops.recipes import load_recipe


def test_evaluate_on_cuda_lands_on_the_gpu_pool(tmp_path):
    recipe = yaml.safe_load(load_recipe("fundus-classifier").model_dump_json())
    recipe["evaluate"]["device"] = "cuda:1"
    (tmp_path / "gpu-eval.yaml").write_text(yaml.safe_dump(recipe))
    target = cluster_target(str(tmp_path / "gpu-eval.yaml"))
    assert target.evaluate_gpus == 2
    out = tmp_path / "p.yaml"
    compiler.Compiler().compile(build_pipeline(target), package_path=str(out))
    spec, platform = yaml.safe_load_all(out.read_text())
    evaluate = spec["deploymentSpec"]["executors"]["exec-evaluate"]["container"]["resources"]
    assert evaluate["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert evaluate["accelerator"]["resourceCount"] == "2"
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-evaluate"]
    assert k8s["nodeSelector"]["labels"] == {"eyeops.io/pool": "gpu"}
    assert k8s["tolerations"] == [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}]
    assert cluster_target("fundus-classifier").evaluate_gpus == 0  # auto: the CPU pod as before
