"""Schemathesis fuzzes the gateway's own OpenAPI schema on a real server: no input gives a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from serve_helpers import ADMIN_KEY

pytestmark = pytest.mark.integration


@pytest.fixture
def gateway_schema(gateway_server):
    return schemathesis.openapi.from_url(gateway_server.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("gateway_schema")


@schema.parametrize()
@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_no_input_makes_the_gateway_fail(case):
    # A valid admin key lets the fuzzer reach the handlers, not only the auth check (tested apart).
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    response = case.call(headers=headers, timeout=60)
    case.validate_response(response, checks=[not_a_server_error], headers=headers)
    assert response.status_code < 500, (response.status_code, response.text[:300])
