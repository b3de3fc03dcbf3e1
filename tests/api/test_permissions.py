"""Every API endpoint tried without a token, with each role, and with expired or revoked tokens."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from controlplane.accounts.actors import Actor
from controlplane.accounts.roles import ORDER, Role
from controlplane.policies.actions import do_create_policy, do_update_policy
from controlplane.policies.models import ChangeRequest, Environment
from controlplane.policies.requests import Proposal, open_request
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
    ("get", "/change-requests", None, Role.VIEWER, 200),
    ("get", "/change-requests/{request}", None, Role.VIEWER, 200),
    (
        "post",
        "/environments/production/change-requests",
        {"changes": [{"op": "delete", "kind": "cache", "name": "prices"}], "reason": "test"},
        Role.EDITOR,
        201,
    ),
    ("post", "/change-requests/{request}/approve", {}, Role.EDITOR, 200),
    ("post", "/change-requests/{request}/reject", {"comment": "no"}, Role.EDITOR, 200),
    ("post", "/change-requests/{request}/rebase", None, Role.EDITOR, 200),
    # A request is its author's to withdraw or plan: an editor who is not passes the
    # role check and is refused naming the field.
    ("post", "/change-requests/{request}/withdraw", {}, Role.EDITOR, 422),
    ("post", "/change-requests/{request}/schedule", {"apply_at": None}, Role.EDITOR, 422),
]
CALLERS = ["none", "viewer", "operator", "editor", "admin", "expired", "revoked"]


@pytest.fixture
def api_policy(production: Environment, system: Actor) -> None:
    policy = do_create_policy(production, "rate_limit", "api", {"limit": 10}, system)
    do_update_policy(policy, {"limit": 20}, system)
    # A pending change request (by someone else than the tokens) whose base then moved.
    open_request(production, [Proposal("update", "rate_limit", "api", {"limit": 30})], system, "x")
    do_update_policy(policy, {"limit": 25}, system)
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
    if "{request}" in path:
        path = path.format(request=ChangeRequest.objects.get().pk)
    response = api.call(method, path, body)
    if caller in ("none", "expired", "revoked"):
        assert response.status_code == 401
    elif ORDER.index(Role(caller)) >= ORDER.index(least):
        assert response.status_code == success, response.content
    else:
        assert response.status_code == 403
        assert "needs the" in response.json()["detail"]
