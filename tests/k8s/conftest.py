"""Render the chart once per values file per session; everything else reads those objects."""

# No `from __future__ import annotations`: KFP reads the component's real annotations.
from pathlib import Path

import pytest
from eyeops_testing.k8s import SCENARIOS

from eyeops.chart import helm_template
from eyeops.kube.schema import load_crd_schemas

COMPILED = Path(__file__).resolve().parents[2] / "pipelines" / "compiled"


@pytest.fixture(scope="session")
def compiled_pipeline(tmp_path_factory) -> Path:
    """A compiled KFP pipeline: the project's own when `make pipelines` has run, else a tiny one
    compiled here with the real KFP compiler."""
    shipped = sorted(COMPILED.glob("*.yaml")) if COMPILED.is_dir() else []
    if shipped:
        return shipped[0]
    from kfp import compiler, dsl

    @dsl.component(base_image="python:3.11-slim")
    def hello(name: str) -> str:
        return f"hello {name}"

    @dsl.pipeline(name="eyeops-k8s-test")
    def pipe(name: str = "eyeops"):
        hello(name=name)

    out = tmp_path_factory.mktemp("pipelines") / "fundus-classifier.yaml"
    compiler.Compiler().compile(pipe, str(out))
    return out


@pytest.fixture(scope="session")
def set_files(compiled_pipeline) -> dict[str, Path]:
    return {"pipeline.compiled.fundus-classifier": compiled_pipeline}


@pytest.fixture(scope="session")
def rendered(set_files) -> dict[str, list[dict]]:
    """``{scenario: objects}``: one `helm template` per values file for the whole session."""
    return {
        name: helm_template(files, set_files=set_files if name == "evaluation" else None)
        for name, files in SCENARIOS.items()
    }


@pytest.fixture(scope="session")
def crd_schemas():
    """Strict schemas of the vendored upstream CRDs (eyeops/kube/crds): never skipped."""
    return load_crd_schemas()
