"""The web chat page (``/ui``): static files, served by every gateway face, that call the public API.

The page is a plain client of ``GET /v1/models``, ``POST /v1/classify`` and
``POST /v1/chat/completions`` (with the API key the user types, kept in the tab's
``sessionStorage``), so it can never drift from what applications get. Everything it loads comes
from this folder: no CDN, no web fonts, no build step — it works on an air-gapped network, and the
Content-Security-Policy below makes the browser refuse anything else.
"""

from __future__ import annotations

from pathlib import Path

from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

STATIC_DIR = Path(__file__).parent / "static"
UI_PATH = "/ui"

# 'self' only: the page must work without the internet and must not be able to leak images to it.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    # Revalidate (ETag) on every load so an upgraded gateway never runs last version's script.
    (b"cache-control", b"no-cache"),
]


class UIFiles(StaticFiles):
    """StaticFiles for the page, with the security and caching headers on every response."""

    def __init__(self) -> None:
        super().__init__(directory=STATIC_DIR, html=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in _HEADERS}
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message["headers"] = [*kept, *_HEADERS]
            await send(message)

        await super().__call__(scope, receive, send_with_headers)


def mount_ui(app) -> None:
    """Serve the chat page at ``/ui/`` on a Starlette/FastAPI app (``/ui`` redirects there)."""
    app.mount(UI_PATH, UIFiles(), name="ui")
