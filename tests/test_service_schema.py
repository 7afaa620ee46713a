"""Schemathesis against the app's own OpenAPI schema: no 5xx, and answers match the schema.

schemathesis' pytest plugin does not run under pytest 9, so the test walks the
operations itself and runs each one's Hypothesis strategy (a bounded number of
examples per operation).
"""

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

EXAMPLES = 25


def test_no_server_errors_and_answers_match_the_schema(server):
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck),
                  database=None)
        def check(case):
            case.call_and_validate(checks=[not_a_server_error, response_schema_conformance], timeout=30)

        check()
