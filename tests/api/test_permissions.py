"""Every API endpoint tried without a token, with each role, and with expired or revoked tokens."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from controlplane.accounts.actors import Actor
from controlplane.accounts.roles import ORDER, Role
from controlplane.policies.actions import do_create_policy, do_update_policy
from controlplane.policies.models import Environment
from tests.api.conftest import ApiClient

pytestmark = pytest.mark.django_db(transaction=True)

P = "/environments/production/policies"
ENDPOINTS: list[tuple[str, str, Any, Role, int]] = [
    ("get", "/environments", None, Role.VIEWER, 200),
    ("get", P, None, Role.VIEWER, 200),
    ("get", P + "/rate_limit/api", None, Role.VIEWER, 200),
    ("get", P + "/rate_limit/api/history", None, Role.VIEWER, 200),
    ("get", "/audit", None, Role.VIEWER, 200),
    ("post", P, {"kind": "cache", "name": "new", "spec": {}}, Role.EDITOR, 201),
    ("patch", P + "/rate_limit/api", {"spec": {"limit": 5}}, Role.EDITOR, 200),
    ("post", P + "/rate_limit/api/rollback", {"version": 1}, Role.EDITOR, 200),
    ("delete", P + "/rate_limit/api", None, Role.EDITOR, 204),
    ("get", "/environments/production/overrides", None, Role.VIEWER, 200),
    (
        "post",
        "/environments/production/overrides",
        {"kind": "rate_limit", "name": "api", "state": "bypass", "reason": "test"},
        Role.OPERATOR,
        201,
    ),
    ("post", P + "/breaker/payments/reset", {"reason": "recovered"}, Role.OPERATOR, 200),
    ("post", P + "/cache/prices/purge", {"reason": "bad prices"}, Role.OPERATOR, 200),
]
CALLERS = ["none", "viewer", "operator", "editor", "admin", "expired", "revoked"]


@pytest.fixture
def api_policy(production: Environment, system: Actor) -> None:
    policy = do_create_policy(production, "rate_limit", "api", {"limit": 10}, system)
    do_update_policy(policy, {"limit": 20}, system)
    do_create_policy(production, "breaker", "payments", {}, system)
    do_create_policy(production, "cache", "prices", {}, system)


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize(("method", "path", "body", "least", "success"), ENDPOINTS)
def test_api_permission_matrix(
    api_as: Callable[..., ApiClient],
    api_policy: None,
    caller: str,
    method: str,
    path: str,
    body: Any,
    least: Role,
    success: int,
) -> None:
    if caller == "none":
        api = api_as(None)
    elif caller in ("expired", "revoked"):
        api = api_as(Role.ADMIN, caller)
    else:
        api = api_as(Role(caller))
    response = api.call(method, path, body)
    if caller in ("none", "expired", "revoked"):
        assert response.status_code == 401
    elif ORDER.index(Role(caller)) >= ORDER.index(least):
        assert response.status_code == success, response.content
    else:
        assert response.status_code == 403
        assert "needs the" in response.json()["detail"]
