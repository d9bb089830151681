"""The published OpenAPI schema of ``/v1/classify`` and the running gateway agree on what is valid."""

from __future__ import annotations

import io

import httpx
import pytest
from eyeops_testing.serving import API_KEY, b64
from PIL import Image

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def classify_schema(gateway_server):
    """The JSON request-body schema of POST /v1/classify, as the running gateway publishes it."""
    spec = httpx.get(gateway_server.url + "/openapi.json", timeout=30).json()
    return spec["paths"]["/v1/classify"]["post"]["requestBody"]["content"]["application/json"]["schema"]


def _png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 48), (180, 60, 40)).save(buffer, format="PNG")
    return b64(buffer.getvalue())


PNG = _png()
VALID = {
    "one image": {"image_b64": PNG},
    "several images": {"images_b64": [PNG, PNG]},
    "one image, the other null": {"image_b64": PNG, "images_b64": None},
    "several images, the other null": {"image_b64": None, "images_b64": [PNG]},
}
INVALID = {
    "none": {},
    "only a model": {"model": "x"},
    "both": {"image_b64": PNG, "images_b64": [PNG]},
    "both null": {"image_b64": None, "images_b64": None},
    "one null": {"image_b64": None},
    "an empty list": {"images_b64": []},
    "an unknown field": {"image_b64": PNG, "image": PNG},
}


@pytest.mark.parametrize("name", VALID)
def test_schema_valid_requests_are_served(gateway_server, classify_schema, name):
    from jsonschema import Draft202012Validator

    body = VALID[name]
    Draft202012Validator(classify_schema).validate(body)
    r = httpx.post(gateway_server.url + "/v1/classify", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    assert len(r.json()["results"]) == len(body.get("images_b64") or [None])


@pytest.mark.parametrize("name", INVALID)
def test_schema_invalid_requests_are_refused(gateway_server, classify_schema, name):
    from jsonschema import Draft202012Validator

    body = INVALID[name]
    assert not Draft202012Validator(classify_schema).is_valid(body)
    r = httpx.post(gateway_server.url + "/v1/classify", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "validation_error"
    if name in ("none", "only a model", "both", "both null", "one null"):
        assert "give exactly one of 'image_b64' or 'images_b64'" in error["message"], error


def test_schemathesis_finds_no_schema_valid_body_the_gateway_calls_invalid(gateway_server):
    """Positive cases drawn from the published schema: the server may reject their *content* (not
    base64, not an image: 4xx), never their *shape* (422 would mean the schema says too little)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(gateway_server.url + "/openapi.json")
    operation = next(
        op
        for op in (result.ok() for result in schema.get_all_operations())
        if op.path == "/v1/classify" and op.method.upper() == "POST"
    )
    statuses: list[int] = []

    @given(case=operation.as_strategy())
    @settings(
        max_examples=40,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case):
        response = case.call(base_url=gateway_server.url, headers=AUTH, timeout=60)
        statuses.append(response.status_code)
        assert response.status_code != 422, (case.body, response.text[:300])

    run()
    assert len(statuses) >= 10 and all(s < 500 for s in statuses), statuses
