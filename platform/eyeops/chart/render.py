"""Render the Helm chart and the kustomize overlays into plain objects (no cluster needed)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from eyeops.chart.tools import find_helm, find_kubectl
from eyeops.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[3]
CHART_DIR = REPO_ROOT / "helm" / "eyeops"
MANIFESTS_DIR = REPO_ROOT / "manifests"

# What a cluster with KServe and KubeRay installed advertises; `helm template` has no cluster to
# ask, so callers rendering offline pass these (the chart refuses to render CRs without them).
CLUSTER_API_VERSIONS = (
    "serving.kserve.io/v1beta1/InferenceService",
    "ray.io/v1/RayJob",
    "ray.io/v1/RayCluster",
    "ray.io/v1/RayService",
)


def _run(cmd: Sequence[str], what: str, timeout: float = 120) -> str:
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"{what}: timed out after {timeout:.0f} s") from None
    if proc.returncode != 0:
        # helm lint reports findings on stdout and only the verdict on stderr: keep both.
        detail = "\n".join(part.strip() for part in (proc.stdout, proc.stderr) if part.strip())
        raise ConfigError(f"{what} failed (exit {proc.returncode}):\n{detail}")
    return proc.stdout


def parse_documents(text: str, origin: str = "<stream>") -> list[dict[str, Any]]:
    """Objects of a multi-document YAML stream, empty documents dropped."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: rendered output is not valid YAML: {exc}") from None
    out = []
    for index, doc in enumerate(docs):
        if doc is None:
            continue
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            raise ConfigError(f"{origin}: document {index} is not a Kubernetes object: {str(doc)[:80]!r}")
        out.append(doc)
    return out


def _value_args(
    values_files: Iterable[str | Path],
    set_values: dict[str, str] | None,
    set_files: dict[str, str | Path] | None,
) -> list[str]:
    args: list[str] = []
    for path in values_files:
        args += ["--values", str(path)]
    for key, value in (set_values or {}).items():
        args += ["--set", f"{key}={value}"]
    for key, path in (set_files or {}).items():
        args += ["--set-file", f"{key}={path}"]
    return args


def helm_template(
    values_files: Iterable[str | Path] = (),
    *,
    chart: str | Path = CHART_DIR,
    release: str = "eyeops",
    namespace: str = "eyeops",
    set_values: dict[str, str] | None = None,
    set_files: dict[str, str | Path] | None = None,
    api_versions: Iterable[str] = CLUSTER_API_VERSIONS,
    kube_version: str | None = None,
    include_tests: bool = True,
) -> list[dict[str, Any]]:
    """``helm template`` the chart and return its objects (hooks and ``helm test`` pods included)."""
    cmd = [str(find_helm()), "template", release, str(chart), "--namespace", namespace]
    cmd += _value_args(values_files, set_values, set_files)
    for api in api_versions:
        cmd += ["--api-versions", api]
    if kube_version:
        cmd += ["--kube-version", kube_version]
    if not include_tests:
        cmd.append("--skip-tests")
    return parse_documents(_run(cmd, f"helm template {chart}"), origin=f"helm template {chart}")


def helm_lint(
    values_files: Iterable[str | Path] = (),
    *,
    chart: str | Path = CHART_DIR,
    set_values: dict[str, str] | None = None,
    set_files: dict[str, str | Path] | None = None,
    strict: bool = True,
) -> str:
    """``helm lint`` (``--strict``: warnings fail too); returns helm's report."""
    cmd = [str(find_helm()), "lint", str(chart), *_value_args(values_files, set_values, set_files)]
    if strict:
        cmd.append("--strict")
    return _run(cmd, f"helm lint {chart}")


def kustomize_build(directory: str | Path) -> list[dict[str, Any]]:
    """``kubectl kustomize DIR`` (offline) and return its objects."""
    cmd = [str(find_kubectl()), "kustomize", str(directory)]
    return parse_documents(_run(cmd, f"kubectl kustomize {directory}"), origin=str(directory))


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (embedded RayJob YAML, serveConfigV2) as readable ``|`` blocks."""


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_BlockDumper.add_representer(str, _str_representer)


def to_yaml(objects: Iterable[dict[str, Any]]) -> str:
    """A multi-document YAML stream with stable key order (what we commit)."""
    return "".join(
        "---\n" + yaml.dump(obj, Dumper=_BlockDumper, sort_keys=True, default_flow_style=False)
        for obj in objects
    )
