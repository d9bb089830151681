"""Schemathesis fuzzes the gateway's own OpenAPI schema on a real server: no input gives a 5xx.

Cases are drawn with hypothesis from each operation's strategy (schemathesis' pytest loader does
not run under pytest 9), sent to the shared gateway process, and checked for server errors.
"""

from __future__ import annotations

import pytest
import schemathesis
from eyeops_testing.serving import ADMIN_KEY
from hypothesis import HealthCheck, given, settings

pytestmark = pytest.mark.integration
# A valid admin key lets the fuzzer reach the handlers, not only the auth check (tested apart).
HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}


def _fuzz(operation, url: str, seen: dict[str, set[int]]) -> None:
    @given(case=operation.as_strategy())
    @settings(
        max_examples=15,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case):
        response = case.call(base_url=url, headers=HEADERS, timeout=60)
        seen.setdefault(operation.label, set()).add(response.status_code)
        assert response.status_code < 500, (operation.label, response.status_code, response.text[:300])

    run()


def test_no_input_makes_the_gateway_fail(gateway_server):
    import httpx

    schema = schemathesis.openapi.from_url(gateway_server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/classify", "/v1/chat/completions", "/v1/models"}
    seen: dict[str, set[int]] = {}
    for operation in operations:
        _fuzz(operation, gateway_server.url, seen)
    assert httpx.get(gateway_server.url + "/healthz").status_code == 200
    # The fuzzer got past auth into the handlers of the inference routes.
    assert seen["POST /v1/classify"] & {400, 404, 413, 415, 422}, seen
