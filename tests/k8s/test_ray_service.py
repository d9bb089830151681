"""The RayService application builder: chart args -> a validated ServeSpec -> the Ray Serve app."""

from __future__ import annotations

import pytest
import yaml
from eyeops_testing.k8s import one
from ray import serve

from eyeops.errors import ConfigError
from eyeops.kube.ray_service import app_builder, parse_args


def test_args_become_the_serve_spec(rendered):
    # The args exactly as the chart renders them (test_chart pins their values).
    svc = one(rendered["rayservice"], "RayService", "eye-llm")
    (app,) = yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"]
    model, spec, cpus = parse_args(app["args"])
    assert model == "eyeops-eye-llm@champion" and cpus == 1.0
    assert (spec.backend, spec.min_replicas, spec.max_replicas, spec.gpu, spec.max_batch_size) == (
        "ray",
        1,
        4,
        1,
        8,
    )
    # the pipeline room's builder args (model_uri) are accepted too
    assert parse_args({"model_uri": "models:/m/3", "model_name": "m"})[0] == "models:/m/3"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"model": "m@champion", "replicas": 2}, "unknown key(s) ['replicas']"),
        ({"min_replicas": 1}, "'model' (NAME@alias, models:/… or a directory) is required"),
        ({"model": "m", "min_replicas": 3, "max_replicas": 2}, "serve.min_replicas 3 > max_replicas 2"),
        ({"model": "m", "num_gpus": -1}, "gpu: Input should be greater than or equal to 0 (got -1)"),
        ({"model": "m", "replica_cpus": "two"}, "replica_cpus must be a number, got 'two'"),
    ],
)
def test_bad_args_are_rejected_by_name(args, expected):
    with pytest.raises(ConfigError) as err:
        parse_args(args)
    assert expected in str(err.value)


def test_builder_returns_the_autoscaled_application():
    app = app_builder({"model": "eyeops-fundus-classifier@champion", "min_replicas": 1, "max_replicas": 3})
    assert isinstance(app, serve.Application)
