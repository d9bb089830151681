"""Small lookups over rendered objects, shared by the k8s tests."""

from __future__ import annotations

from pathlib import Path

from eyeops.chart import CHART_DIR
from eyeops.refs import ModelVersionRef

CI = CHART_DIR / "ci"
# name -> values files; "defaults" renders values.yaml alone. Here, not in conftest.py: another
# test directory's conftest module can own the name `conftest` when both are collected together.
SCENARIOS: dict[str, list[Path]] = {
    "defaults": [],
    "gpu": [CI / "gpu-values.yaml"],
    "rayservice": [CI / "rayservice-values.yaml"],
    "external": [CI / "external-values.yaml"],
    "evaluation": [CI / "evaluation-values.yaml"],
}

# The registered model the serving builders are handed in these tests.
CHAMPION = ModelVersionRef(
    name="eyeops-fundus-classifier",
    version=3,
    alias="champion",
    run_id="r",
    model_uri="models:/eyeops-fundus-classifier/3",
    gate_passed=True,
    gate_reason="first version",
    metric="macro_auc",
    value=0.9,
)


def find(objects: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = find(objects, kind, name)
    assert len(found) == 1, (
        f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
    )
    return found[0]


def container(pod_spec: dict, name: str) -> dict:
    return next(c for c in pod_spec["containers"] if c["name"] == name)


def env_of(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}
