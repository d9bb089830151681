"""Validate custom resources against their CRD schemas, as the API server would, without one.

The ``openAPIV3Schema`` of each CRD comes from the upstream CRDs vendored in ``crds/`` (package
data: a clean clone, CI and the images all have them). CRD schemas do not forbid unknown fields
(the API server prunes them silently, so a typo simply vanishes); :func:`strict_schema` closes
every object that lists its ``properties`` so a typo fails here instead.

The builders check what they build with :func:`validate_object` before it reaches the API server;
the chart tooling (``eyeops.chart.validate``) uses :func:`validate_custom` for rendered releases.
Needs only ``jsonschema``, a runtime dependency.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from eyeops.errors import ClusterError, ConfigError

CRD_DIR = Path(__file__).resolve().parent / "crds"
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def find_crd_dir() -> Path:
    """``EYEOPS_CRD_DIR`` (CRDs of another KServe/KubeRay release) when set, else the vendored
    :data:`CRD_DIR`; errors name a setting that is not a directory."""
    override = os.environ.get("EYEOPS_CRD_DIR")
    if override:
        if not Path(override).is_dir():
            raise ConfigError(f"EYEOPS_CRD_DIR={override}: not a directory")
        return Path(override)
    return CRD_DIR


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


def load_crd_schemas(crd_dir: str | Path | None = None) -> dict[tuple[str, str], dict[str, Any]]:
    """``{(apiVersion, kind): strict schema}`` for every CRD file in ``crd_dir``
    (default :func:`find_crd_dir`)."""
    path = Path(crd_dir) if crd_dir is not None else find_crd_dir()
    if not path.is_dir():
        raise ConfigError(f"CRD directory {path} does not exist")
    schemas = _load_crd_schemas(str(path.resolve()))
    if not schemas:
        raise ConfigError(f"CRD directory {path} holds no CustomResourceDefinition with a schema")
    return schemas


def object_name(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{obj.get('kind')}/{meta.get('name', '<unnamed>')}"


def error_path(err: jsonschema.ValidationError) -> str:
    """The JSON path of a schema error, ``<root>`` for the object itself."""
    return ".".join(str(p) for p in err.absolute_path) or "<root>"


def validate_custom(obj: dict[str, Any], schemas: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """Problems of one custom resource against its CRD schema (``[]`` when it is valid)."""
    key = (obj.get("apiVersion", ""), obj.get("kind", ""))
    schema = schemas.get(key)
    if schema is None:
        return [f"{object_name(obj)}: no CRD schema for {key[0]} {key[1]}"]
    problems = [
        f"{object_name(obj)}: {error_path(err)}: {err.message}"
        for err in jsonschema.Draft7Validator(schema).iter_errors(obj)
    ]
    name = (obj.get("metadata") or {}).get("name", "")
    # CRD schemas say nothing about metadata; the API server still enforces DNS names.
    if not name or len(name) > 63 or not _DNS1123_LABEL.match(name):
        problems.append(f"{object_name(obj)}: metadata.name {name!r} is not a DNS-1123 label (≤63)")
    return problems


def validate_object(obj: dict[str, Any], crd_dir: str | Path | None = None) -> None:
    """Check one custom resource against its CRD schema (strict, as :func:`validate_custom`);
    ``crd_dir`` defaults to :func:`find_crd_dir`. Raises :class:`ClusterError` naming the JSON path
    and the reason of the first problem."""
    if not obj.get("kind") or not obj.get("apiVersion"):
        raise ClusterError(f"object has no kind/apiVersion: {sorted(obj)}")
    problems = validate_custom(obj, load_crd_schemas(crd_dir))
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ClusterError(f"{obj['apiVersion']} CRD schema rejects {problems[0]}{more}")
