"""`models[].device`: the chart loads an endpoint's model where the values say (`eyeops serve
--device`, the RayService app's `device` arg), like the builders do from a recipe's serve.device,
and refuses a device its GPUs cannot hold."""

from __future__ import annotations

import pytest
import yaml
from eyeops_testing.k8s import CHAMPION, one

from eyeops.chart import helm_template
from eyeops.errors import ConfigError
from eyeops.kube import build_inference_service
from eyeops.kube.ray_service import parse_args
from eyeops.recipes import parse_recipe

RESOURCES = {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"cpu": "1", "memory": "4Gi"}}
KSERVE = {"name": "fundus-classifier", "backend": "kserve", "registeredModel": "eyeops-fundus-classifier"}
RAY = {"name": "eye-llm", "backend": "ray", "registeredModel": "eyeops-eye-llm"}


def _render(tmp_path, *models: dict) -> list[dict]:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump({"models": [{**m, "resources": RESOURCES} for m in models]}))
    return helm_template([path])


def test_device_reaches_predictor_args_and_ray_serve_args(tmp_path):
    objects = _render(tmp_path, {**KSERVE, "device": "cuda:1", "gpu": 2}, {**RAY, "device": "cuda", "gpu": 1})
    (predictor,) = one(objects, "InferenceService", "fundus-classifier")["spec"]["predictor"]["containers"]
    assert "--device=cuda:1" in predictor["args"]
    # What the pipeline's deploy step builds from a recipe asking for the same device.
    built = build_inference_service(
        parse_recipe(
            {
                "name": "fundus-classifier",
                "model": {"family": "classifier"},
                "register": {"model_name": "eyeops-fundus-classifier"},
                "serve": {"device": "cuda:1"},
            }
        ),
        CHAMPION,
        namespace="eyeops",
    )
    args = built["spec"]["predictor"]["containers"][0]["args"]
    assert args[args.index("--device") + 1] == "cuda:1"
    (app,) = yaml.safe_load(one(objects, "RayService", "eye-llm")["spec"]["serveConfigV2"])["applications"]
    _model, spec, _cpus = parse_args(app["args"])
    assert (spec.device, spec.gpus) == ("cuda", 1)


def test_no_device_no_override(rendered):
    for name in ("defaults", "rayservice"):
        for isvc in [o for o in rendered[name] if o["kind"] == "InferenceService"]:
            for c in isvc["spec"]["predictor"].get("containers", []):
                assert not any(a.startswith("--device") for a in c["args"])
    (app,) = yaml.safe_load(one(rendered["rayservice"], "RayService")["spec"]["serveConfigV2"])[
        "applications"
    ]
    assert "device" not in app["args"]


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({**KSERVE, "device": "cuda:1", "gpu": 1}, "models[fundus-classifier]: device cuda:1 needs gpu >= 2"),
        ({**RAY, "device": "cuda"}, "models[eye-llm]: device cuda needs gpu >= 1 (GPUs per replica), got 0"),
        ({**KSERVE, "device": "cpu", "gpu": 1}, "models[fundus-classifier]: device cpu with gpu 1"),
        ({**KSERVE, "device": "mps"}, "models.0.device"),
        (
            {
                **KSERVE,
                "runtime": "huggingface",
                "storageUri": "s3://eyeops/hf_model",
                "device": "cuda",
                "gpu": 1,
            },
            "models[fundus-classifier]: device is for the eyeops runtime",
        ),
        ({**KSERVE, "device": "cuda:x"}, "models.0.device"),
    ],
)
def test_device_the_gpus_cannot_hold_is_refused(tmp_path, entry, expected):
    with pytest.raises(ConfigError) as err:
        _render(tmp_path, entry)
    assert expected in str(err.value)
