"""A fake Kubernetes API *transport*: a real HTTP server on 127.0.0.1 speaking the custom-object
REST paths, so the real ``kubernetes`` client (and our retry/wait logic) is exercised end to end."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

_PATH = re.compile(
    r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/?]+)"
    r"(?:/(?P<name>[^/?]+))?"
)


def _merge(target: dict, patch: dict) -> dict:
    """RFC 7386 JSON merge patch."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value
    return target


class FakeKubeApi:
    """In-memory custom objects with scripted failures and status progressions."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.fail_next: list[tuple[int, dict[str, str]]] = []  # (status, headers) for the next requests
        self.progress: dict[str, list[dict]] = {}  # plural -> statuses revealed one per GET
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def handle(self, method: str, path: str, body: dict | None) -> tuple[int, dict, dict[str, str]]:
        with self.lock:
            self.requests.append((method, path))
            if self.fail_next:
                status, headers = self.fail_next.pop(0)
                return status, _status_body(status, "injected failure"), headers
            match = _PATH.match(path)
            if not match:
                return 404, _status_body(404, f"no route {path}"), {}
            key = (
                match["plural"],
                match["ns"],
                match["name"] or (body or {}).get("metadata", {}).get("name"),
            )
            live = self.objects.get(key)
            if method == "POST":
                if live is not None:
                    return 409, _status_body(409, f'{key[0]} "{key[2]}" already exists'), {}
                obj = json.loads(json.dumps(body))
                obj["metadata"].update(generation=1, uid=f"uid-{len(self.requests)}")
                self.objects[key] = obj
                return 201, obj, {}
            if live is None:
                return 404, _status_body(404, f'{key[0]} "{key[2]}" not found'), {}
            if method == "GET":
                steps = self.progress.get(key[0])
                if steps:
                    live["status"] = steps.pop(0)
                return 200, live, {}
            if method == "PATCH":
                _merge(live, body or {})
                live["metadata"]["generation"] += 1
                return 200, live, {}
            if method == "DELETE":
                del self.objects[key]
                return 200, _status_body(200, "deleted"), {}
            return 405, _status_body(405, method), {}

    def verbs(self) -> list[str]:
        return [method for method, _ in self.requests]


def _status_body(code: int, message: str) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure" if code >= 400 else "Success",
        "message": message,
        "code": code,
    }


@pytest.fixture
def fake_api():
    """(FakeKubeApi, kubernetes ApiClient pointed at it)."""
    from kubernetes import client as k8s

    api = FakeKubeApi()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            status, payload, headers = api.handle(self.command, self.path, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_DELETE = _serve

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    config = k8s.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
    api_client = k8s.ApiClient(config)
    yield api, api_client
    api_client.close()
    server.shutdown()
    server.server_close()
