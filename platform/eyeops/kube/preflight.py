"""``helm test`` checks, run inside the cluster: ``python -m eyeops.kube.preflight``.

1. The API groups the release needs are served (KServe, KubeRay). API discovery
   (``GET /apis/<group>/<version>``) is open to every authenticated account, so the test pod
   needs a token but no RBAC.
2. The gateway answers ``/readyz`` with 200.

Every failure is one line naming what is missing and how to fix it; exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from eyeops.errors import ClusterError

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_PROJECTS = {"serving.kserve.io": "KServe", "ray.io": "the KubeRay operator"}


@dataclass(frozen=True)
class ApiRequirement:
    """``group/version`` must be served with these resources, e.g. ``ray.io/v1=rayjobs,rayservices``."""

    group_version: str
    resources: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> ApiRequirement:
        gv, _, res = text.partition("=")
        if gv.count("/") != 1 or not all(gv.split("/")):
            raise ClusterError(f"--require-api {text!r}: expected group/version[=resource,...]")
        return cls(gv, tuple(r for r in res.split(",") if r))


def _get_json(url: str, *, token: str | None, context: ssl.SSLContext | None, timeout: float) -> dict:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
        return json.loads(response.read().decode())


def check_apis(
    api_server: str,
    requirements: list[ApiRequirement],
    *,
    token: str | None = None,
    context: ssl.SSLContext | None = None,
    timeout: float = 10,
) -> list[str]:
    """Problems with the required API groups (``[]`` when all are served)."""
    problems = []
    for req in requirements:
        group = req.group_version.split("/")[0]
        project = _PROJECTS.get(group, group)
        url = f"{api_server.rstrip('/')}/apis/{req.group_version}"
        try:
            listing = _get_json(url, token=token, context=context, timeout=timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                problems.append(f"API {req.group_version} is not served: install {project} (its CRDs) first")
            else:
                problems.append(f"API discovery {url} answered HTTP {exc.code}")
            continue
        except (urllib.error.URLError, OSError, ValueError) as exc:
            problems.append(f"API discovery {url} failed: {exc}")
            continue
        served = {r.get("name") for r in listing.get("resources", [])}
        for resource in req.resources:
            if resource not in served:
                problems.append(
                    f"API {req.group_version} does not serve {resource}: "
                    f"upgrade {project} (served: {', '.join(sorted(served)) or 'none'})"
                )
    return problems


def check_ready(url: str, *, attempts: int = 30, delay: float = 2.0, timeout: float = 5) -> list[str]:
    """Problems reaching ``url`` (retries while the gateway starts; ``[]`` on HTTP 200)."""
    last = ""
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                if response.status == 200:
                    return []
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(getattr(exc, "reason", exc))
        if attempt + 1 < attempts:
            time.sleep(delay)
    return [f"{url} not ready after {attempts} attempts: {last}"]


def in_cluster() -> tuple[str, str | None, ssl.SSLContext | None]:
    """API server URL, token and TLS context from the pod's environment and service account."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise ClusterError("not running in a pod (KUBERNETES_SERVICE_HOST unset); pass --api-server")
    token_file, ca_file = SA_DIR / "token", SA_DIR / "ca.crt"
    token = token_file.read_text().strip() if token_file.is_file() else None
    context = ssl.create_default_context(cafile=str(ca_file)) if ca_file.is_file() else None
    return f"https://{host}:{port}", token, context


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eyeops.kube.preflight", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--require-api", action="append", default=[], metavar="GROUP/VERSION[=RES,...]")
    parser.add_argument("--url", action="append", default=[], help="URL that must answer 200 (e.g. /readyz)")
    parser.add_argument("--api-server", help="API server URL (default: in-cluster)")
    parser.add_argument("--attempts", type=int, default=30)
    parser.add_argument("--delay", type=float, default=2.0)
    args = parser.parse_args(argv)
    problems: list[str] = []
    try:
        requirements = [ApiRequirement.parse(text) for text in args.require_api]
        if requirements:
            server, token, context = (args.api_server, None, None) if args.api_server else in_cluster()
            problems += check_apis(server, requirements, token=token, context=context)
    except ClusterError as exc:
        problems.append(str(exc))
    for url in args.url:
        problems += check_ready(url, attempts=args.attempts, delay=args.delay)
    for problem in problems:
        print(f"FAIL {problem}", file=sys.stderr)
    if not problems:
        print(f"ok: {len(args.require_api)} API group(s) served, {len(args.url)} URL(s) ready")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
