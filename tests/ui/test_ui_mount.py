"""The page's files as every gateway face serves them: /ui, security headers, nothing external."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from eyeops.serve.gateway import install
from eyeops.serve.settings import ServeSettings
from eyeops.serve.ui import STATIC_DIR


@pytest.fixture(scope="module")
def client() -> TestClient:
    settings = ServeSettings(api_keys="ui-test-key-0123456789:classify")
    return TestClient(install(FastAPI(), None, settings))


def test_ui_redirects_and_serves_the_page_with_a_strict_policy(client):
    redirect = client.get("/ui", follow_redirects=False)
    assert redirect.status_code in (301, 307, 308) and redirect.headers["location"].endswith("/ui/")
    page = client.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["cache-control"] == "no-cache"
    assert '<script type="module" src="app.js">' in page.text
    missing = client.get("/ui/nope.js")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_every_asset_is_local_and_every_referenced_file_exists(client):
    html = (STATIC_DIR / "index.html").read_text()
    referenced = set(re.findall(r'(?:src|href)="([^":]+)"', html))
    for js in STATIC_DIR.glob("*.js"):
        referenced |= set(re.findall(r"from '\./([\w.-]+)'", js.read_text()))
    assert {"app.js", "style.css", "api.js", "chart.js", "images.js"} <= referenced
    for name in referenced:
        assert client.get(f"/ui/{name}").status_code == 200, name
    for path in STATIC_DIR.iterdir():
        text = path.read_text().replace("http://www.w3.org/2000/svg", "")
        assert not re.search(r"https?://|@import|url\(", text), f"{path.name} loads something external"


def test_the_page_is_public_but_the_api_still_needs_a_key(client):
    assert client.get("/ui/app.js").status_code == 200
    denied = client.get("/v1/models")
    assert denied.status_code == 401 and denied.json()["error"]["code"] == "unauthorized"
