"""Validate generated custom resources against the upstream CRD ``openAPIV3Schema``.

The CRD files are data owned by their projects (KubeRay, KServe). They are looked up in
``EYEOPS_CRD_DIR`` or ``<repo>/../shared/crds`` and never copied into this project; when neither
exists, :func:`find_crd_dir` returns ``None`` and callers skip validation (and say so).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from eyeops.errors import ClusterError

REPO_ROOT = Path(__file__).resolve().parents[3]


def find_crd_dir() -> Path | None:
    """The directory holding ``<group>_<plural>.yaml`` CRD files, or None when there is none."""
    for candidate in (os.environ.get("EYEOPS_CRD_DIR"), REPO_ROOT.parent / "shared" / "crds"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


# libyaml when present: the CRD files are megabytes and the pure-Python loader takes many seconds.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@lru_cache(maxsize=16)
def _validator(crd_dir: str, kind: str, api_version: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(_strip_k8s_extensions(_crd_schema(crd_dir, kind, api_version)))


def _crd_schema(crd_dir: str, kind: str, api_version: str) -> dict[str, Any]:
    group, _, version = api_version.rpartition("/")
    # Upstream files are named <group>_<plural>.yaml: try the likely one first, parse others only if needed.
    paths = sorted(Path(crd_dir).glob(f"{group}_*.yaml"), key=lambda p: (kind.lower() not in p.name, p.name))
    for path in paths:
        crd = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
        if crd.get("spec", {}).get("names", {}).get("kind") != kind:
            continue
        for entry in crd["spec"]["versions"]:
            if entry["name"] == version:
                return entry["schema"]["openAPIV3Schema"]
        known = [v["name"] for v in crd["spec"]["versions"]]
        raise ClusterError(f"{kind}: version {version!r} not served by {path.name} (has {known})")
    raise ClusterError(f"no CRD for kind {kind!r} in group {group!r} under {crd_dir}")


def _strip_k8s_extensions(schema: Any) -> Any:
    # x-kubernetes-int-or-string fields carry anyOf [integer, string]; the other x-* keys are
    # API-server semantics (list maps, preserve-unknown) that plain JSON Schema ignores anyway.
    if isinstance(schema, dict):
        return {
            k: _strip_k8s_extensions(v)
            for k, v in schema.items()
            if not k.startswith("x-kubernetes-") or k == "x-kubernetes-int-or-string"
        }
    if isinstance(schema, list):
        return [_strip_k8s_extensions(v) for v in schema]
    return schema


def validate_object(obj: dict[str, Any], crd_dir: Path | None = None) -> bool:
    """Check ``obj`` against its CRD schema; False when no CRD directory exists (nothing checked).

    Raises :class:`ClusterError` naming the JSON path and the reason of the first violation.
    """
    crd_dir = crd_dir or find_crd_dir()
    if crd_dir is None:
        return False
    kind, api_version = obj.get("kind"), obj.get("apiVersion")
    if not kind or not api_version:
        raise ClusterError(f"object has no kind/apiVersion: {sorted(obj)}")
    validator = _validator(str(crd_dir), kind, api_version)
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = ".".join(str(p) for p in first.absolute_path) or "<root>"
        name = obj.get("metadata", {}).get("name", "?")
        raise ClusterError(
            f"{kind} {name!r} fails the {api_version} CRD schema at {where}: {first.message}"
            + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")
        )
    return True
