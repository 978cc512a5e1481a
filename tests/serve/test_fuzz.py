"""Fuzz every documented endpoint from the server's own OpenAPI with schemathesis: no 5xx.

Schemathesis generates valid and invalid bodies, paths and parameters from /openapi.json
(the generated /predict row models included) and sends them over real HTTP.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from dlpipe.serve import ServeSettings  # noqa: E402


@pytest.fixture(scope="module")
def api_schema(binary_run, kit):
    server = kit.LiveServer(ServeSettings(path=binary_run.path, max_rows=20)).wait_ready()
    yield schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    server.stop()


@pytest.mark.slow
def test_no_generated_request_gets_a_server_error(api_schema):
    # One hypothesis run per operation, inside one test (schemathesis's pytest plugin does
    # not load on this pytest).
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {"/predict", "/v2/models/{name}/infer"} <= {op.path for op in operations}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        def check(case):
            response = case.call(timeout=30)
            case.validate_response(response, checks=[not_a_server_error])

        check()
