"""Property-based: every API operation, fed what its OpenAPI schema allows (and what it
does not), answers no 5xx and answers what the schema says, in DEBUG and in production
settings, with a token allowed to do everything."""

from __future__ import annotations

import zlib
from typing import Any

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from controlplane.accounts.actions import do_create_token
from controlplane.accounts.actors import Actor
from controlplane.accounts.roles import Role
from controlplane.policies.actions import do_create_environment, do_create_policy
from controlplane.policies.overrides import do_set_override

schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", get_wsgi_application())

# Path parameters that name what exists: a case uses them half the time, so writes
# reach the actions instead of stopping at a 404.
EXISTING = {"environment": "production", "kind": "config", "name": "banner"}


@pytest.fixture(params=[False, True], ids=["production", "debug"])
def admin_token(request: pytest.FixtureRequest, db: None, settings: Any) -> str:
    settings.DEBUG = request.param
    system = Actor.system("tests")
    production = do_create_environment("production", system)
    do_create_policy(production, "rate_limit", "api", {"limit": 10}, system)
    do_create_policy(production, "config", "banner", {"value": "hi"}, system)
    do_create_policy(production, "breaker", "banner", {}, system)
    do_create_policy(production, "cache", "banner", {}, system)
    do_set_override(production, "breaker", "banner", "forced_open", system, "fuzz")
    _, secret = do_create_token("fuzz", Role.ADMIN, system)
    return secret


def test_every_api_operation_is_fuzzed() -> None:
    operations = {
        (result.ok().method.upper(), result.ok().path) for result in schema.get_all_operations()
    }
    assert len(operations) == 33  # add an operation: it is fuzzed by the test below
    assert ("DELETE", "/api/v1/environments/{environment}/overrides/{kind}/{name}") in operations


@pytest.mark.django_db(transaction=True)
@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_api_answers_no_5xx_and_honours_its_schema(
    case: schemathesis.Case[Any], admin_token: str
) -> None:
    if case.path_parameters and zlib.crc32(repr(case.path_parameters).encode()) % 2:
        case.path_parameters = {
            key: EXISTING.get(key, value) for key, value in case.path_parameters.items()
        }
    headers = {"Authorization": f"Bearer {admin_token}"}
    response = case.call(headers=headers)
    assert response.status_code < 500, (case.as_curl_command(), response.text[:2000])
    case.validate_response(
        response,
        headers=headers,
        excluded_checks=[
            # A scalar query parameter given twice takes its last value, as everywhere
            # in Django; schemathesis counts accepting that as a schema violation.
            negative_data_rejection,
            # The schema cannot say all that validation checks (a spec's fields, that a
            # version exists): a schema-valid request may well answer 422.
            positive_data_acceptance,
        ],
    )
