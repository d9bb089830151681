"""Validate rendered objects the way an API server would, without one.

Core kinds go through the JSON schemas ``kubernetes-validate`` ships (the upstream OpenAPI,
strict variant: unknown fields fail), one cached validator per kind. Custom resources (KServe
InferenceService, KubeRay RayJob/RayCluster/RayService) go through ``jsonschema`` against the
``openAPIV3Schema`` of the CRDs their projects publish. CRD schemas do not forbid unknown fields
(the API server prunes them silently, so a typo simply vanishes); :func:`strict_schema` closes
every object that lists its ``properties`` so a typo fails here instead.

This is the one validator: the cluster room's builders check their objects with
:func:`validate_object` (one custom resource, raising) before they reach the API server.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource

from eyeops.errors import ClusterError, ConfigError

DEFAULT_KUBE_VERSION = "1.30"
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def default_crd_dir(repo_root: Path | None = None) -> Path:
    """``<repo>/../shared/crds``: the upstream CRDs kept beside (never inside) the project."""
    from eyeops.k8s.render import REPO_ROOT

    return (repo_root or REPO_ROOT).parent / "shared" / "crds"


def find_crd_dir() -> Path | None:
    """``EYEOPS_CRD_DIR`` when it is a directory, else :func:`default_crd_dir` when it is one, else
    None: the CRD files are data owned by their projects and are never copied into this one."""
    for candidate in (os.environ.get("EYEOPS_CRD_DIR"), default_crd_dir()):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def strict_schema(schema: Any) -> Any:
    """A copy of a structural schema where objects with ``properties`` reject unknown keys.

    ``nullable: true`` becomes a ``null`` alternative, since JSON Schema has no such keyword.
    """
    if isinstance(schema, list):
        return [strict_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict_schema(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def _crd_documents(path: Path) -> list[Any]:
    """The documents of one CRD file. The files are megabytes of YAML (seconds to parse even with
    libyaml), so the parsed form is cached as JSON keyed by the file's sha256."""
    raw = path.read_bytes()
    cache = (
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        / "eyeops"
        / "crd-json"
        / f"{hashlib.sha256(raw).hexdigest()}.json"
    )
    if cache.is_file():
        return json.loads(cache.read_text(encoding="utf-8"))
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    docs = list(yaml.load_all(raw, Loader=loader))
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(docs), encoding="utf-8")
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only home only costs the parse next time
    return docs


@lru_cache(maxsize=8)
def _load_crd_schemas(crd_dir: str) -> dict[tuple[str, str], dict[str, Any]]:
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(Path(crd_dir).glob("*.yaml")):
        for doc in _crd_documents(path):
            if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                schema = version.get("schema", {}).get("openAPIV3Schema")
                if schema:
                    key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                    schemas[key] = strict_schema(schema)
    return schemas


def load_crd_schemas(crd_dir: str | Path) -> dict[tuple[str, str], dict[str, Any]]:
    """``{(apiVersion, kind): strict schema}`` for every CRD file in ``crd_dir``."""
    path = Path(crd_dir)
    if not path.is_dir():
        raise ConfigError(f"CRD directory {path} does not exist")
    schemas = _load_crd_schemas(str(path.resolve()))
    if not schemas:
        raise ConfigError(f"CRD directory {path} holds no CustomResourceDefinition with a schema")
    return schemas


def object_name(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{obj.get('kind')}/{meta.get('name', '<unnamed>')}"


def _error_path(err: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in err.absolute_path) or "<root>"


def validate_custom(obj: dict[str, Any], schemas: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """Problems of one custom resource against its CRD schema (``[]`` when it is valid)."""
    key = (obj.get("apiVersion", ""), obj.get("kind", ""))
    schema = schemas.get(key)
    if schema is None:
        return [f"{object_name(obj)}: no CRD schema for {key[0]} {key[1]}"]
    problems = [
        f"{object_name(obj)}: {_error_path(err)}: {err.message}"
        for err in jsonschema.Draft7Validator(schema).iter_errors(obj)
    ]
    name = (obj.get("metadata") or {}).get("name", "")
    # CRD schemas say nothing about metadata; the API server still enforces DNS names.
    if not name or len(name) > 63 or not _DNS1123_LABEL.match(name):
        problems.append(f"{object_name(obj)}: metadata.name {name!r} is not a DNS-1123 label (≤63)")
    return problems


def _schema_dir(kube_version: str) -> str:
    """kubernetes-validate's schema folder for the newest release not newer than ``kube_version``."""
    # Imported here: kubernetes-validate is a dev dependency, and the images run validate_object
    # (custom resources only) through eyeops.cluster without it.
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
    problems = [
        f"{object_name(obj)}: {_error_path(err)}: {err.message}" for err in validator.iter_errors(obj)
    ]
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
    """Every problem across ``objects``; custom resources are checked only when ``crd_dir`` is given.

    Without ``crd_dir`` an unknown kind is reported, so nothing is ever skipped silently.
    """
    schemas = load_crd_schemas(crd_dir) if crd_dir is not None else None
    problems: list[str] = []
    for obj in objects:
        if is_core(obj, kube_version):
            problems += validate_core(obj, kube_version)
        elif schemas is not None:
            problems += validate_custom(obj, schemas)
        else:
            problems.append(
                f"{object_name(obj)}: {obj.get('apiVersion')} is not a core kind and no "
                "CRD directory was given"
            )
    return problems


def check_objects(objects: Iterable[dict[str, Any]], **kwargs: Any) -> None:
    """Raise :class:`ClusterError` listing every problem :func:`validate_objects` finds."""
    problems = validate_objects(objects, **kwargs)
    if problems:
        raise ClusterError("the API server would reject these objects:\n  " + "\n  ".join(problems))


def validate_object(obj: dict[str, Any], crd_dir: str | Path | None = None) -> bool:
    """Check one custom resource against its CRD schema (strict, as :func:`validate_custom`).

    ``crd_dir`` defaults to :func:`find_crd_dir`; False when there is none (nothing was checked).
    Raises :class:`ClusterError` naming the JSON path and the reason of the first problem.
    """
    crd_dir = crd_dir or find_crd_dir()
    if crd_dir is None:
        return False
    if not obj.get("kind") or not obj.get("apiVersion"):
        raise ClusterError(f"object has no kind/apiVersion: {sorted(obj)}")
    problems = validate_custom(obj, load_crd_schemas(crd_dir))
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ClusterError(f"{obj['apiVersion']} CRD schema rejects {problems[0]}{more}")
    return True
