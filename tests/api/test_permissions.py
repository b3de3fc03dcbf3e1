"""Every API endpoint tried without a token, with each role, and with expired or revoked
tokens; and again with tokens scoped to an environment or capped by their creator's role
in it (roles per environment, ``tests/scoping.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from controlplane.accounts.actions import do_create_token
from controlplane.accounts.actors import Actor
from controlplane.accounts.roles import ORDER, Role, includes
from controlplane.alerts.actions import do_create_rule
from controlplane.alerts.models import AlertRule
from controlplane.policies.actions import do_create_policy, do_update_policy
from controlplane.policies.models import ChangeRequest, Environment
from controlplane.policies.requests import Proposal, open_request
from controlplane.webhooks.delivery import send_test
from controlplane.webhooks.models import Delivery, Webhook
from tests.api.conftest import ApiClient
from tests.scoping import HELD, scoped_cast

pytestmark = pytest.mark.django_db(transaction=True)

P = "/environments/production/policies"
LOOPBACK = "http://127.0.0.1/hook"
RULE = {"name": "n", "kind": "limiter_rejecting"}
OFF = {"enabled": False}
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
    ("get", "/environments/production/webhooks", None, Role.ADMIN, 200),
    # A loopback target is refused, naming the url: the role check passed.
    ("post", "/environments/production/webhooks", {"name": "n", "url": LOOPBACK}, Role.ADMIN, 422),
    ("delete", "/environments/production/webhooks/hook", None, Role.ADMIN, 204),
    ("post", "/environments/production/webhooks/hook/test", None, Role.ADMIN, 202),
    ("get", "/environments/production/webhooks/hook/deliveries", None, Role.ADMIN, 200),
    ("post", "/webhook-deliveries/{delivery}/redeliver", None, Role.ADMIN, 200),
    ("get", "/environments/production/alert-rules", None, Role.ADMIN, 200),
    # A limiter rule without its percent is refused, naming it: the role check passed.
    ("post", "/environments/production/alert-rules", RULE, Role.ADMIN, 422),
    ("put", "/environments/production/alert-rules/{rule}/enabled", OFF, Role.ADMIN, 200),
    ("delete", "/environments/production/alert-rules/{rule}", None, Role.ADMIN, 204),
    ("get", "/environments/production/fleet-breakers", None, Role.VIEWER, 200),
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
    webhook = Webhook.objects.create(
        environment="production", name="hook", url="https://hooks.example.com/services/x"
    )
    send_test(webhook)  # one delivery, to redeliver
    do_create_rule(production, "slow", "breaker_open", system)


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
    if "{delivery}" in path:
        path = path.format(delivery=Delivery.objects.get().pk)
    if "{rule}" in path:
        path = path.format(rule=AlertRule.objects.get().pk)
    response = api.call(method, path, body)
    if caller in ("none", "expired", "revoked"):
        assert response.status_code == 401
    elif ORDER.index(Role(caller)) >= ORDER.index(least):
        assert response.status_code == success, response.content
    else:
        assert response.status_code == 403
        assert "needs the" in response.json()["detail"]


# Who holds what, per environment: a system token scoped to staging, and an admin
# token with no scope made by stella, who is an editor in staging only.
TOKENS: dict[str, dict[str, Role | None]] = {
    "scoped-editor": {"production": None, "staging": Role.EDITOR, "": Role.EDITOR},
    "stella-admin": HELD["stella"],
}
# A change request's calls are about its environment: each is tried on a request in
# production and on one in staging.
SCOPED: list[tuple[str, str, str, str, Any, Role, int]] = [
    (token, environment, method, path.replace("/production", f"/{environment}"), body, least, ok)
    for token in TOKENS
    for method, path, body, least, ok in ENDPOINTS
    # A webhook delivery names no environment: tests/api/test_webhooks_api.py tries its scoping.
    if "{delivery}" not in path
    for environment in (
        ("production", "staging") if "/production" in path or "{request}" in path else ("",)
    )
]


@pytest.fixture
def scoped_tokens(api_policy: None, production: Environment, system: Actor) -> dict[str, str]:
    """The API's policies in staging too, and a secret per token of ``TOKENS``."""
    cast = scoped_cast(system)
    policy = do_create_policy(cast.staging, "rate_limit", "api", {"limit": 10}, system)
    do_update_policy(policy, {"limit": 20}, system)
    # As in production: a pending request by someone else, whose base then moved.
    change = Proposal("update", "rate_limit", "api", {"limit": 30})
    open_request(cast.staging, [change], system, "x")
    do_update_policy(policy, {"limit": 25}, system)
    do_create_policy(cast.staging, "breaker", "payments", {}, system)
    do_create_policy(cast.staging, "cache", "prices", {}, system)
    do_create_rule(cast.staging, "slow", "breaker_open", system)
    _, scoped = do_create_token("scoped", Role.EDITOR, system, environments=["staging"])
    _, capped = do_create_token("capped", Role.ADMIN, Actor.of(cast.stella))
    return {"scoped-editor": scoped, "stella-admin": capped}


@pytest.mark.parametrize(
    ("token", "environment", "method", "path", "body", "least", "success"), SCOPED
)
def test_api_permission_matrix_honours_token_scope_and_creator_role_per_environment(
    client: Any,
    scoped_tokens: dict[str, str],
    redis_client: Any,
    key_prefix: str,
    token: str,
    environment: str,
    method: str,
    path: str,
    body: Any,
    least: Role,
    success: int,
) -> None:
    from tests.test_permissions import stored  # that module imports this one's ENDPOINTS

    api = ApiClient(client, scoped_tokens[token])
    held = TOKENS[token][environment]
    about_request = "{request}" in path
    if about_request:
        path = path.format(request=ChangeRequest.objects.get(environment__name=environment).pk)
    if "{rule}" in path:
        path = path.format(rule=AlertRule.objects.get(environment__name=environment or None).pk)
    before = None if includes(held, least) else stored(redis_client, key_prefix)
    response = api.call(method, path, body)
    if before is None:
        assert response.status_code == success, response.content
        return
    if about_request and held is None:  # a scoped token learns nothing of it
        assert response.status_code == 404
        return
    assert response.status_code == 403
    assert f"needs the {least.value} role in {environment}" in response.json()["detail"]
    after = stored(redis_client, key_prefix)
    after["accounts.ApiToken"] = before["accounts.ApiToken"] = None  # its "last used" time
    assert after == before, "a refused request changed something"


def test_lists_show_only_the_environments_a_token_may_act_in(
    client: Any, scoped_tokens: dict[str, str], system: Actor
) -> None:
    from controlplane.audit.record import record

    record(system, "policy.update", environment="production", kind="cache", name="prices")
    record(system, "policy.update", environment="staging", kind="cache", name="prices")
    scoped = ApiClient(client, scoped_tokens["scoped-editor"])
    assert [e["name"] for e in scoped.call("get", "/environments").json()] == ["staging"]
    entries = scoped.call("get", "/audit?action=policy.update").json()
    assert {e["environment"] for e in entries} == {"staging"}
    # stella's token views production (stella is a viewer everywhere): both environments.
    capped = ApiClient(client, scoped_tokens["stella-admin"])
    assert [e["name"] for e in capped.call("get", "/environments").json()] == [
        "production",
        "staging",
    ]
