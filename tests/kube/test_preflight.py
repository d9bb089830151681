"""The `helm test` preflight against a real HTTP server on 127.0.0.1 that answers like the API
server's discovery endpoints and the gateway's /readyz."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from eyeops.errors import ClusterError
from eyeops.kube.preflight import ApiRequirement, main

DISCOVERY = {
    "/apis/ray.io/v1": {
        "kind": "APIResourceList",
        "groupVersion": "ray.io/v1",
        "resources": [{"name": "rayjobs", "kind": "RayJob"}, {"name": "rayclusters", "kind": "RayCluster"}],
    }
}


class _Handler(BaseHTTPRequestHandler):
    ready = True
    seen_auth: list[str | None] = []

    def do_GET(self):
        type(self).seen_auth.append(self.headers.get("Authorization"))
        if self.path in DISCOVERY:
            body, status = json.dumps(DISCOVERY[self.path]).encode(), 200
        elif self.path == "/readyz":
            body, status = b"ok", 200 if type(self).ready else 503
        else:
            body, status = b"not found", 404
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.integration
def test_all_present_passes(server, capsys):
    _Handler.ready = True
    code = main(
        [
            "--api-server",
            server,
            "--require-api",
            "ray.io/v1=rayjobs,rayclusters",
            "--url",
            f"{server}/readyz",
            "--attempts",
            "1",
        ]
    )
    assert code == 0
    assert "ok: 1 API group(s) served, 1 URL(s) ready" in capsys.readouterr().out


@pytest.mark.integration
def test_missing_crds_and_unready_gateway_fail_clearly(server, capsys):
    _Handler.ready = False
    code = main(
        [
            "--api-server",
            server,
            "--require-api",
            "serving.kserve.io/v1beta1=inferenceservices",
            "--require-api",
            "ray.io/v1=rayjobs,rayservices",
            "--url",
            f"{server}/readyz",
            "--attempts",
            "2",
            "--delay",
            "0.01",
        ]
    )
    err = capsys.readouterr().err.splitlines()
    assert code == 1
    assert err == [
        "FAIL API serving.kserve.io/v1beta1 is not served: install KServe (its CRDs) first",
        "FAIL API ray.io/v1 does not serve rayservices: upgrade the KubeRay operator "
        "(served: rayclusters, rayjobs)",
        f"FAIL {server}/readyz not ready after 2 attempts: HTTP 503",
    ]


def test_bad_requirement_and_outside_a_pod(monkeypatch, capsys):
    with pytest.raises(ClusterError, match="expected group/version"):
        ApiRequirement.parse("rayjobs")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert main(["--require-api", "ray.io/v1=rayjobs"]) == 1
    assert "not running in a pod" in capsys.readouterr().err
