"""Validate rendered objects the way an API server would, without one.

Core kinds go through the JSON schemas ``kubernetes-validate`` ships (the upstream OpenAPI,
strict variant: unknown fields fail), one cached validator per kind. Custom resources (KServe
InferenceService, KubeRay RayJob/RayCluster/RayService) go through the runtime's CRD validator,
:mod:`eyeops.kube.schema`, against the vendored upstream CRDs: one validator for what the builders
submit and what the chart renders.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource

from eyeops.errors import ClusterError, ConfigError
from eyeops.kube.schema import error_path, find_crd_dir, load_crd_schemas, object_name, validate_custom

DEFAULT_KUBE_VERSION = "1.30"
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def _schema_dir(kube_version: str) -> str:
    """kubernetes-validate's schema folder for the newest release not newer than ``kube_version``."""
    # Imported here: kubernetes-validate is a dev dependency, and importing this module for its
    # other names must not need it.
    from kubernetes_validate import utils as kv_utils
    from packaging.version import Version

    wanted = Version(kube_version.removeprefix("v"))
    known = [v for v in kv_utils.all_versions() if Version(v) <= wanted]
    if not known:
        raise ConfigError(f"kube version {kube_version!r} is older than any schema kubernetes-validate ships")
    return f"v{known[-1]}-local-strict"


@lru_cache(maxsize=256)
def _core_validator(kind: str, api_version: str, kube_version: str) -> jsonschema.Validator | None:
    """A strict validator for one core kind, built once (building one costs about a second)."""
    schema_dir = _schema_dir(kube_version)  # imports kubernetes_validate first
    # rbac.authorization.k8s.io/v1 -> rbac-v1, v1 -> v1 (kubernetes-validate's file naming)
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    root = resources.files("kubernetes_validate") / "kubernetes-json-schema" / schema_dir
    path = root / f"{kind.lower()}-{api}.json"
    if not path.is_file():
        return None
    schema = json.loads(path.read_text(encoding="utf-8"))
    definitions = json.loads((root / "_definitions.json").read_text(encoding="utf-8"))
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def is_core(obj: dict[str, Any], kube_version: str = DEFAULT_KUBE_VERSION) -> bool:
    """Whether the object's kind is a built-in one (kubernetes-validate ships its schema)."""
    return _core_validator(str(obj.get("kind")), str(obj.get("apiVersion")), kube_version) is not None


def validate_core(obj: dict[str, Any], kube_version: str = DEFAULT_KUBE_VERSION) -> list[str]:
    """Problems of one built-in object (strict: unknown fields are errors)."""
    validator = _core_validator(str(obj.get("kind")), str(obj.get("apiVersion")), kube_version)
    if validator is None:
        return [
            f"{object_name(obj)}: {obj.get('apiVersion')} {obj.get('kind')} is not a Kubernetes "
            f"{kube_version} kind"
        ]
    problems = [f"{object_name(obj)}: {error_path(err)}: {err.message}" for err in validator.iter_errors(obj)]
    name = (obj.get("metadata") or {}).get("name", "")
    if len(name) > 253 or not _DNS1123_SUBDOMAIN.match(name):
        problems.append(f"{object_name(obj)}: metadata.name {name!r} is not a DNS-1123 subdomain")
    return problems


def validate_objects(
    objects: Iterable[dict[str, Any]],
    *,
    kube_version: str = DEFAULT_KUBE_VERSION,
    crd_dir: str | Path | None = None,
) -> list[str]:
    """Every problem across ``objects``: core kinds strictly, custom resources against the CRDs in
    ``crd_dir`` (default :func:`~eyeops.kube.schema.find_crd_dir`, the vendored upstream CRDs)."""
    schemas = load_crd_schemas(crd_dir if crd_dir is not None else find_crd_dir())
    problems: list[str] = []
    for obj in objects:
        if is_core(obj, kube_version):
            problems += validate_core(obj, kube_version)
        else:
            problems += validate_custom(obj, schemas)
    return problems


def check_objects(objects: Iterable[dict[str, Any]], **kwargs: Any) -> None:
    """Raise :class:`ClusterError` listing every problem :func:`validate_objects` finds."""
    problems = validate_objects(objects, **kwargs)
    if problems:
        raise ClusterError("the API server would reject these objects:\n  " + "\n  ".join(problems))
