"""The five KFP components: typed interfaces, ``.python_func`` calls, and a kfp.local run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kfp import dsl

from eyeops.errors import ConfigError
from eyeops.pipeline.components import deploy, evaluate, prepare_data, register, train

TINY = "synthetic:12"
OVERRIDES = json.dumps({"data.image_size": 64})


def _types(component, direction):
    spec = getattr(component.component_spec, direction) or {}
    return {name: getattr(io, "type", None) for name, io in spec.items()}


def test_interfaces_are_typed_artifacts():
    assert _types(prepare_data.op, "outputs")["dataset"] == "system.Dataset@0.0.1"
    assert _types(train.op, "inputs")["dataset"] == "system.Dataset@0.0.1"
    assert _types(train.op, "outputs")["checkpoint"] == "system.Model@0.0.1"
    outputs = _types(evaluate.op, "outputs")
    assert outputs["metrics"] == "system.Metrics@0.0.1" and outputs["summary"] == "system.Markdown@0.0.1"
    assert _types(register.op, "outputs")["model"] == "system.Model@0.0.1"
    assert _types(register.op, "outputs")["Output"] == "Boolean"  # the gate decision guards deploy
    assert _types(deploy.op, "inputs")["model"] == "system.Model@0.0.1"


def test_base_image_parameter_names_the_image():
    for module in (prepare_data, train, evaluate, register, deploy):
        comp = module.component("registry.example/eyeops:test")
        assert comp.python_func is module.op.python_func
        assert comp.component_spec.implementation.container.image == "registry.example/eyeops:test"


def test_prepare_data_python_func_writes_the_ref(tmp_path):
    out = dsl.Dataset(name="dataset", uri=str(tmp_path / "dataset"), metadata={})
    prepare_data.op.python_func(
        recipe="fundus-classifier",
        data_source=TINY,
        overrides=OVERRIDES,
        pipeline_run_id="unit-1",
        dataset=out,
    )
    ref = json.loads((tmp_path / "dataset").read_text())
    assert ref["num_samples"] >= 12 and ref["fingerprint"] == out.metadata["fingerprint"]
    assert ref["uri"].endswith("fundus-classifier-unit1")


def test_steps_reject_bad_inputs_before_any_work(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"uri": "/nowhere"}')
    missing = dsl.Dataset(name="dataset", uri=str(tmp_path / "absent"), metadata={})
    ckpt = dsl.Model(name="checkpoint", uri=str(tmp_path / "ckpt"), metadata={})
    with pytest.raises(ConfigError, match=r"train.dataset: cannot read input artifact"):
        train.op.python_func(
            recipe="fundus-classifier",
            dataset=missing,
            overrides="{}",
            target="local",
            run_name="r",
            image="",
            gpu_pool="",
            checkpoint=ckpt,
        )
    dataset = dsl.Dataset(name="dataset", uri=str(bad), metadata={})
    with pytest.raises(ConfigError, match=r"train target 'mars'"):
        train.op.python_func(
            recipe="fundus-classifier",
            dataset=dataset,
            overrides="{}",
            target="mars",
            run_name="r",
            image="",
            gpu_pool="",
            checkpoint=ckpt,
        )
    model = dsl.Model(name="model", uri=str(bad), metadata={})
    endpoint = dsl.Artifact(name="endpoint", uri=str(tmp_path / "ep"), metadata={})
    with pytest.raises(ConfigError, match=r"deploy.version: not a valid ModelVersionRef"):
        deploy.op.python_func(
            recipe="fundus-classifier",
            model=model,
            overrides="{}",
            backend="local",
            image="",
            endpoint=endpoint,
        )


@pytest.mark.integration
@pytest.mark.filterwarnings("ignore:.*non-Python base image:RuntimeWarning")
def test_prepare_data_under_kfp_local(tmp_path):
    from kfp import local

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    task = prepare_data.op(
        recipe="fundus-classifier", data_source=TINY, overrides=OVERRIDES, pipeline_run_id="local-7"
    )
    artifact = task.outputs["dataset"]
    ref = json.loads(Path(artifact.path).read_text())
    assert artifact.metadata["fingerprint"] == ref["fingerprint"]
    assert ref["uri"].startswith(str(tmp_path / "eyeops" / "datasets"))  # the test's storage root reached it


def test_checkout_folders_re_export_the_package():
    """components/ and pipelines/ at the repository root are the package's objects, not copies."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    code = (
        "import components, pipelines.finetune as f, eyeops.pipeline.components as c, "
        "eyeops.pipeline.finetune as p\n"
        "assert all(getattr(components, n).op is getattr(c, n).op for n in c.__all__)\n"
        "assert f.build_pipeline is p.build_pipeline and f.ClusterTarget is p.ClusterTarget"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
