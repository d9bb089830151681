"""Request-level guards shared by every face: request ids, body-size limit, metrics, error bodies.

One pure-ASGI middleware does all of it (no ``BaseHTTPMiddleware``, which would break streaming):
it assigns the request id before anything can fail, refuses oversized bodies with 413 before the
application sees them, and counts every response by route template and status for Prometheus.
Log lines carry the route, status, latency and request id only: never bodies or identifiers.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import REGISTRY, Counter, Histogram

from eyeops.errors import EyeopsError, PayloadTooLarge

log = logging.getLogger("eyeops.serve")

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]
REQUEST_ID_HEADER = "x-request-id"
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _metric(kind, name: str, doc: str, **kwargs):
    """Metrics live on the default registry (the one KServe's /metrics serves); create them once."""
    existing = REGISTRY._names_to_collectors.get(name)  # re-imports in one process must not clash
    return existing if existing is not None else kind(name, doc, **kwargs)


REQUESTS = _metric(
    Counter,
    "eyeops_http_requests",
    "HTTP requests by route and status.",
    labelnames=("route", "method", "status"),
)
LATENCY = _metric(
    Histogram,
    "eyeops_http_request_duration_seconds",
    "HTTP request latency by route.",
    labelnames=("route", "method"),
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BATCH_SIZE = _metric(
    Histogram,
    "eyeops_batch_size",
    "Items (images, chat requests) per model call.",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)


def error_body(exc: EyeopsError, request_id: str) -> dict[str, Any]:
    """The one JSON error shape every face returns."""
    return {"error": {"code": exc.code, "message": str(exc), "request_id": request_id}}


def request_id_of(scope: Scope) -> str:
    return scope.get("state", {}).get("request_id", "")


class GuardMiddleware:
    """Request id, body-size limit (413) and Prometheus metrics around an ASGI app."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        client_id = headers.get(REQUEST_ID_HEADER, "")
        request_id = client_id if _CLIENT_ID.match(client_id) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started, status, response_started = time.perf_counter(), 500, False

        async def send_with_id(message: MutableMapping[str, Any]) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
                message["headers"] = [
                    *message.get("headers", []),
                    (REQUEST_ID_HEADER.encode(), request_id.encode()),
                ]
            await send(message)

        try:
            body_receive = await self._buffer_body(scope, receive, headers)
        except PayloadTooLarge as exc:
            await _send_json(send_with_id, exc.http_status, error_body(exc, request_id))
        else:
            try:
                await self.app(scope, body_receive, send_with_id)
            except Exception:
                # A bug, not a client mistake: answer in our JSON shape (with the request id) when
                # the response has not begun; never include the exception text or the body.
                log.exception("unexpected error [request %s]", request_id)
                if response_started:
                    raise
                body = {
                    "error": {
                        "code": "internal_error",
                        "message": "internal server error",
                        "request_id": request_id,
                    }
                }
                await _send_json(send_with_id, 500, body)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            REQUESTS.labels(template, method, str(status)).inc()
            LATENCY.labels(template, method).observe(time.perf_counter() - started)
            log.info(
                "%s %s -> %d in %.1f ms [request %s]",
                method,
                template,
                status,
                (time.perf_counter() - started) * 1000,
                request_id,
            )

    async def _buffer_body(self, scope: Scope, receive: Callable, headers: dict[str, str]) -> Callable:
        """Read the whole body (bounded) and replay it, so no handler ever sees an oversized one."""
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise PayloadTooLarge(
                f"request body of {declared} bytes exceeds the limit of {self.max_body_bytes} bytes"
            )
        if scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return receive
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return _replay([message])
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise PayloadTooLarge(f"request body exceeds the limit of {self.max_body_bytes} bytes")
            chunks.append(chunk)
            more = message.get("more_body", False)
        return _replay([{"type": "http.request", "body": b"".join(chunks), "more_body": False}], receive)


def _replay(messages: list[dict[str, Any]], then: Callable | None = None) -> Callable:
    """A ``receive`` that yields the buffered messages, then defers to the real one (disconnects)."""
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


async def _send_json(send: Callable, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def configure_logging(level: str = "INFO") -> None:
    """One line per request on stderr for a serving process (route, status, latency, request id)."""
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(level)
        log.propagate = False
