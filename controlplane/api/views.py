"""The JSON API for automation: policies, their history and rollback, change requests,
overrides, breaker resets, cache purges, the audit log and webhooks (alert rules: alerts.py).

Same validation and the same audit as the forms: every write goes through the
action functions. Errors are JSON naming the field. In a guarded environment a
write to a policy does not apply: it opens a change request (202), as the pages do.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal, cast

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from ninja import NinjaAPI, Query, Schema, Status
from ninja.errors import HttpError, ValidationError
from ninja.parser import Parser
from pydantic import Field

from controlplane.accounts.models import ApiToken
from controlplane.accounts.roles import Role, includes
from controlplane.api.alerts import router as alerts_router
from controlplane.api.auth import TokenAuth, actor_for, require
from controlplane.api.schemas import (
    MAX_VERSION,
    AuditOut,
    ChangeRequestIn,
    ChangeRequestOut,
    ChangeRequestSummaryOut,
    ConflictOut,
    DeliveryId,
    DeliveryOut,
    DetailOut,
    EnvironmentOut,
    ErrorOut,
    Kind,
    Name,
    OverrideIn,
    OverrideKind,
    OverrideOut,
    PolicyIn,
    PolicyOut,
    PolicyPatch,
    Reason,
    ReasonIn,
    RequestId,
    RequestStatus,
    ResetOut,
    ReviewIn,
    RollbackIn,
    ScheduleIn,
    TestEventOut,
    Text,
    VersionOut,
    WebhookCreatedOut,
    WebhookIn,
    WebhookName,
    WebhookOut,
    WithdrawIn,
)
from controlplane.audit.views import entries_readable
from controlplane.policies.access import check_role, environment_for, environments_for, policy_for
from controlplane.policies.actions import (
    StaleVersionError,
    do_create_policy,
    do_delete_policy,
    do_rollback_policy,
    do_update_policy,
)
from controlplane.policies.models import (
    MAX_TAG_LENGTH,
    ChangeRequest,
    ChangeReview,
    Environment,
    Override,
    Policy,
    PolicyVersion,
    max_length,
)
from controlplane.policies.overrides import (
    RedisUnavailableError,
    active_overrides,
    do_clear_override,
    do_purge_cache,
    do_reset_breaker,
    do_set_override,
)
from controlplane.policies.requests import (
    ItemState,
    Proposal,
    approvals,
    item_changes,
    item_states,
    open_request,
    pending_requests,
    rebase,
    review,
    schedule,
    withdraw,
)
from controlplane.protocol.limits import MAX_JSON_DEPTH, LimitExceeded, loads_json
from controlplane.protocol.schema import PolicyError, masked
from controlplane.webhooks.actions import (
    WebhookError,
    do_create_webhook,
    do_delete_webhook,
    do_redeliver,
    new_secret,
    shown_url,
)
from controlplane.webhooks.delivery import send_test
from controlplane.webhooks.models import Delivery, Webhook
from controlplane.webhooks.views import RECENT, webhooks_with_last_status


class BoundedJsonParser(Parser):
    """Request bodies within the size limit and a depth far beyond any value's: parsing
    stays bounded, and a value a little too deep is refused by validation, naming it."""

    def parse_body(self, request: HttpRequest) -> dict[str, Any]:
        body = loads_json(request.body, what="The request body", max_depth=4 * MAX_JSON_DEPTH)
        return cast(dict[str, Any], body)


api = NinjaAPI(
    title="Resilience control plane API",
    version="1",
    urls_namespace="api",
    auth=TokenAuth(),
    parser=BoundedJsonParser(),
    docs_url=None,  # the interactive docs load scripts from a CDN; the schema is enough
)
api.add_router("", alerts_router)  # alert rules and the fleet's breakers (api/alerts.py)


@api.exception_handler(PolicyError)
def _policy_error(request: HttpRequest, exc: PolicyError) -> HttpResponse:
    return api.create_response(request, {"errors": exc.errors}, status=422)


@api.exception_handler(ValidationError)
def _validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    errors: dict[str, list[str]] = {}
    for error in exc.errors:
        location = [
            str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path")
        ]
        if location and location[0] in ("data", "payload", "filters"):
            location = location[1:]
        errors.setdefault(".".join(location) or "body", []).append(str(error.get("msg")))
    return api.create_response(request, {"errors": errors}, status=422)


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    if exc.status_code == 400:  # a body that is not JSON, or over a limit
        message = str(exc.__cause__) if isinstance(exc.__cause__, LimitExceeded) else str(exc)
        return api.create_response(request, {"errors": {"body": [message]}}, status=422)
    return api.create_response(request, {"detail": str(exc)}, status=exc.status_code)


@api.exception_handler(PermissionDenied)
def _denied(request: HttpRequest, exc: PermissionDenied) -> HttpResponse:
    return api.create_response(request, {"detail": str(exc)}, status=403)


@api.exception_handler(Http404)
def _not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return api.create_response(request, {"detail": str(exc) or "Not found."}, status=404)


@api.exception_handler(RedisUnavailableError)
def _redis_unavailable(request: HttpRequest, exc: RedisUnavailableError) -> HttpResponse:
    return api.create_response(request, {"detail": str(exc)}, status=503)


@api.exception_handler(StaleVersionError)
def _stale(request: HttpRequest, exc: StaleVersionError) -> HttpResponse:
    return api.create_response(
        request, {"detail": str(exc), "current": _version_out(exc.current)}, status=409
    )


def _policy_out(policy: Policy) -> dict[str, Any]:
    return {
        "environment": policy.environment.name,
        "kind": policy.kind,
        "name": policy.name,
        "version": policy.version,
        "revision": policy.revision,
        "spec": masked(policy.kind, policy.spec),
        "tags": policy.tags,
        "team": policy.team,
        "updated_at": policy.updated_at,
        "updated_by": policy.updated_by,
    }


def _version_out(version: PolicyVersion) -> dict[str, Any]:
    return {
        "version": version.version,
        "revision": version.revision,
        "action": version.action,
        "deleted": version.deleted,
        "author": version.author_name,
        "reason": version.reason,
        "created_at": version.created_at,
        "spec": masked(version.policy.kind, version.spec),
    }


def _request_url(change_request: ChangeRequest, step: str = "") -> str:
    name = f"api:{step}_change_request" if step else "api:read_change_request"
    return reverse(name, kwargs={"request_id": change_request.pk})


def _request_summary(change_request: ChangeRequest) -> dict[str, Any]:
    """What the queue shows of a request; its reviews prefetched, its items not read."""
    environment = change_request.environment
    links = {
        "self": _request_url(change_request),
        "policies": reverse("api:list_policies", kwargs={"environment": environment.name}),
    }
    if change_request.is_pending:
        for step in ("approve", "reject", "withdraw", "schedule", "rebase"):
            links[step] = _request_url(change_request, step)
    return {
        "id": change_request.pk,
        "environment": environment.name,
        "title": change_request.title,
        "status": change_request.status,
        "author": change_request.author_name,
        "reason": change_request.reason,
        "created_at": change_request.created_at,
        "apply_at": change_request.apply_at,
        "applied_at": change_request.applied_at,
        "approvals": {
            "given": len(approvals(change_request)),
            "required": environment.approvals_to_apply,
        },
        "blocked_reason": change_request.blocked_reason,
        "links": links,
    }


def _item_out(state: ItemState, pending: bool) -> dict[str, Any]:
    item = state.item
    return {
        "op": item.op,
        "kind": item.kind,
        "name": item.name,
        "base_version": item.base_version,
        "current_version": state.current_version,
        # Once closed, the policy moving on is no news: only a pending request rebases.
        "moved": pending and state.moved,
        "diff": item_changes(item),
        "spec": None if item.spec is None else masked(item.kind, item.spec),
        "tags": item.tags,
        "team": item.team,
        "rollback_to": item.rollback_to,
    }


def _request_out(change_request: ChangeRequest) -> dict[str, Any]:
    """A request with its items against their policies now, and its reviews."""
    pending = change_request.is_pending
    items = [_item_out(state, pending) for state in item_states(change_request)]
    return {
        **_request_summary(change_request),
        "needs_rebase": any(item["moved"] for item in items),
        "closed_by": change_request.closed_by_name,
        "items": items,
        "reviews": [
            {
                "reviewer": r.reviewer_name,
                "decision": r.decision,
                "comment": r.comment,
                "dismissed": r.dismissed,
                "created_at": r.created_at,
            }
            for r in change_request.reviews.all()
        ],
    }


def _opened(response: HttpResponse, change_request: ChangeRequest, status: int) -> Status[Any]:
    response["Location"] = _request_url(change_request)
    return Status(status, _request_out(change_request))


def _propose(
    request: HttpRequest,
    response: HttpResponse,
    token: ApiToken,
    environment: Environment,
    proposal: Proposal,
    reason: str,
) -> Status[Any]:
    """A write to a guarded environment: open a change request for it instead (202)."""
    opened = open_request(environment, [proposal], actor_for(request, token), reason)
    return _opened(response, opened, 202)


def _check_expected(policy: Policy, expected_version: int | None) -> None:
    """Refuse a proposal based on a version the policy left, as a direct write is: 409."""
    if expected_version is not None and expected_version != policy.version:
        raise StaleVersionError(policy.versions.get(version=policy.version))


AUTH_ERRORS: dict[int, Any] = {401: DetailOut, 403: DetailOut, 422: ErrorOut}
READ = {**AUTH_ERRORS, 404: DetailOut}
WRITE = {**READ, 409: ConflictOut}
# A write to a policy of a guarded environment opens a change request instead.
PROPOSED = {202: ChangeRequestOut}


@api.get("/environments", response={200: list[EnvironmentOut], **AUTH_ERRORS})
def list_environments(request: HttpRequest) -> Any:
    return environments_for(require(request, Role.VIEWER).grants())


@api.get("/environments/{environment}/policies", response={200: list[PolicyOut], **READ})
def list_policies(
    request: HttpRequest,
    environment: Name,
    kind: Kind | None = None,
    tag: Annotated[Text | None, Field(max_length=MAX_TAG_LENGTH)] = None,
    team: Annotated[Text | None, Field(max_length=max_length(Policy, "team"))] = None,
) -> Any:
    """The environment's policies; ``tag`` keeps those with the tag, ``team`` those of
    the team (exactly, ignoring case)."""
    token = require(request, Role.VIEWER)
    env = environment_for(token.grants(), Role.VIEWER, environment)
    policies = env.policies.filter(deleted=False).select_related("environment")
    if kind is not None:
        policies = policies.filter(kind=kind)
    if team is not None:
        policies = policies.filter(team__iexact=team.strip())
    chosen = [p for p in policies if tag is None or tag.strip().lower() in p.tags]
    return [_policy_out(p) for p in chosen]


@api.post("/environments/{environment}/policies", response={201: PolicyOut, **PROPOSED, **WRITE})
def create_policy(
    request: HttpRequest, response: HttpResponse, environment: Name, payload: PolicyIn
) -> Any:
    """Create a policy; in a guarded environment, open a change request for it (202)."""
    token = require(request, Role.EDITOR)
    env = environment_for(token.grants(), Role.EDITOR, environment)
    if env.guarded:
        proposal = Proposal(
            "create", payload.kind, payload.name, payload.spec, None, payload.tags, payload.team
        )
        return _propose(request, response, token, env, proposal, payload.reason)
    policy = do_create_policy(
        env,
        payload.kind,
        payload.name,
        payload.spec,
        actor_for(request, token),
        payload.reason,
        tags=payload.tags,
        team=payload.team,
    )
    return Status(201, _policy_out(policy))


@api.get("/environments/{environment}/policies/{kind}/{name}", response={200: PolicyOut, **READ})
def read_policy(request: HttpRequest, environment: Name, kind: Kind, name: Name) -> Any:
    token = require(request, Role.VIEWER)
    return _policy_out(policy_for(token.grants(), Role.VIEWER, environment, kind, name))


@api.patch(
    "/environments/{environment}/policies/{kind}/{name}",
    response={200: PolicyOut, **PROPOSED, **WRITE},
)
def update_policy(
    request: HttpRequest,
    response: HttpResponse,
    environment: Name,
    kind: Kind,
    name: Name,
    payload: PolicyPatch,
) -> Any:
    """Change a policy; in a guarded environment, open a change request for it (202)."""
    token = require(request, Role.EDITOR)
    policy = policy_for(token.grants(), Role.EDITOR, environment, kind, name)
    if policy.environment.guarded:
        _check_expected(policy, payload.expected_version)
        proposal = Proposal(
            "update", kind, name, payload.spec, policy.version, payload.tags, payload.team
        )
        return _propose(request, response, token, policy.environment, proposal, payload.reason)
    policy = do_update_policy(
        policy,
        payload.spec,
        actor_for(request, token),
        payload.reason,
        expected_version=payload.expected_version,
        tags=payload.tags,
        team=payload.team,
    )
    return _policy_out(policy)


class DeleteQuery(Schema):
    reason: Reason = ""
    expected_version: int | None = Field(default=None, ge=0, le=MAX_VERSION)


class LiftQuery(Schema):
    reason: Reason = Field(min_length=1, description="Required: kept in the audit log.")


@api.delete(
    "/environments/{environment}/policies/{kind}/{name}",
    response={204: None, **PROPOSED, **WRITE},
)
def delete_policy(
    request: HttpRequest,
    response: HttpResponse,
    environment: Name,
    kind: Kind,
    name: Name,
    query: Query[DeleteQuery],
) -> Any:
    """Delete a policy; in a guarded environment, open a change request for it (202)."""
    token = require(request, Role.EDITOR)
    policy = policy_for(token.grants(), Role.EDITOR, environment, kind, name)
    if policy.environment.guarded:
        _check_expected(policy, query.expected_version)
        proposal = Proposal("delete", kind, name, base_version=policy.version)
        return _propose(request, response, token, policy.environment, proposal, query.reason)
    do_delete_policy(
        policy,
        actor_for(request, token),
        query.reason,
        expected_version=query.expected_version,
    )
    return Status(204, None)


@api.get(
    "/environments/{environment}/policies/{kind}/{name}/history",
    response={200: list[VersionOut], **READ},
)
def policy_history(request: HttpRequest, environment: Name, kind: Kind, name: Name) -> Any:
    token = require(request, Role.VIEWER)
    policy = policy_for(token.grants(), Role.VIEWER, environment, kind, name)
    return [_version_out(v) for v in policy.versions.select_related("policy").order_by("-version")]


@api.post(
    "/environments/{environment}/policies/{kind}/{name}/rollback",
    response={200: PolicyOut, **PROPOSED, **WRITE},
)
def rollback_policy(
    request: HttpRequest,
    response: HttpResponse,
    environment: Name,
    kind: Kind,
    name: Name,
    payload: RollbackIn,
) -> Any:
    """Restore an earlier version; in a guarded environment, open a change request for
    it (202)."""
    token = require(request, Role.EDITOR)
    policy = policy_for(token.grants(), Role.EDITOR, environment, kind, name)
    if policy.environment.guarded:
        _check_expected(policy, payload.expected_version)
        proposal = Proposal(
            "rollback", kind, name, base_version=policy.version, rollback_to=payload.version
        )
        try:
            return _propose(request, response, token, policy.environment, proposal, payload.reason)
        except PolicyError as exc:  # named as this call's body names it
            errors = exc.errors
            raise PolicyError(
                {("version" if f == "rollback_to" else f): m for f, m in errors.items()}
            ) from None
    policy = do_rollback_policy(
        policy,
        payload.version,
        actor_for(request, token),
        payload.reason,
        expected_version=payload.expected_version,
    )
    return _policy_out(policy)


class RequestQuery(Schema):
    environment: Name | None = None
    status: Literal["pending", "all"] | RequestStatus = Field(
        "pending", description="pending: open or approved, not yet applied."
    )
    limit: int = Field(100, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=1_000_000_000)


def _request_for(
    token: ApiToken, needed: Role, request_id: int
) -> tuple[ChangeRequest, Role | None]:
    """The request numbered ``request_id`` and the role the token holds in its
    environment, if that is at least ``needed``: 404 if there is none, or if the token
    cannot even view its environment (a scoped token learns nothing of the others),
    else 403."""
    change_request = (
        ChangeRequest.objects.select_related("environment").filter(pk=request_id).first()
    )
    held = (
        None if change_request is None else token.grants().role_in(change_request.environment.name)
    )
    if change_request is None or not includes(held, Role.VIEWER):
        raise Http404(f"No change request #{request_id}.")
    check_role(held, needed, change_request.environment.name)
    return change_request, held


@api.get("/change-requests", response={200: list[ChangeRequestSummaryOut], **READ})
def list_change_requests(request: HttpRequest, filters: Query[RequestQuery]) -> Any:
    """Change requests of the environments the token can view, newest first; by default
    the pending ones (open, or approved and waiting for their time or a rebase)."""
    token = require(request, Role.VIEWER)
    grants = token.grants()
    if filters.environment is not None:
        environment_for(grants.role_in(filters.environment), Role.VIEWER, filters.environment)
        names = [filters.environment]
    else:
        names = grants.environments_with(
            Role.VIEWER, list(Environment.objects.values_list("name", flat=True))
        )
    if filters.status == "pending":
        chosen = pending_requests(names)
    else:
        chosen = ChangeRequest.objects.filter(environment__name__in=names)
        if filters.status != "all":
            chosen = chosen.filter(status=filters.status)
    chosen = chosen.select_related("environment").prefetch_related("reviews")
    window = chosen.order_by("-created_at", "-pk")[filters.offset : filters.offset + filters.limit]
    return [_request_summary(r) for r in window]


@api.get("/change-requests/{request_id}", response={200: ChangeRequestOut, **READ})
def read_change_request(request: HttpRequest, request_id: RequestId) -> Any:
    """A request with each item's diff against its base, whether its policy moved since
    (``needs_rebase``), and its reviews."""
    token = require(request, Role.VIEWER)
    return _request_out(_request_for(token, Role.VIEWER, request_id)[0])


@api.post("/environments/{environment}/change-requests", response={201: ChangeRequestOut, **READ})
def create_change_request(
    request: HttpRequest, response: HttpResponse, environment: Name, payload: ChangeRequestIn
) -> Any:
    """Propose changes to several policies at once, applied together once approved.

    Works in any environment: in one that is not guarded, one approval by someone
    else applies it.
    """
    token = require(request, Role.EDITOR)
    env = environment_for(token.grants().role_in(environment), Role.EDITOR, environment)
    proposals = [
        Proposal(c.op, c.kind, c.name, c.spec, c.base_version, c.tags, c.team, c.rollback_to)
        for c in payload.changes
    ]
    opened = open_request(
        env,
        proposals,
        actor_for(request, token),
        payload.reason,
        apply_at=payload.apply_at,
        title=payload.title,
    )
    return _opened(response, opened, 201)


def _review(request: HttpRequest, request_id: int, decision: str, comment: str) -> Any:
    """Approve or reject: the environment's approver role is needed (403 below it)."""
    token = require(request, Role.EDITOR)
    change_request, held = _request_for(token, Role.EDITOR, request_id)
    environment = change_request.environment
    check_role(held, Role(environment.approver_role), environment.name)
    reviewed = review(change_request, actor_for(request, token), held, decision, comment)
    return _request_out(reviewed)


@api.post("/change-requests/{request_id}/approve", response={200: ChangeRequestOut, **READ})
def approve_change_request(request: HttpRequest, request_id: RequestId, payload: ReviewIn) -> Any:
    """Approve as someone other than its author. The approval that reaches the number
    required applies it at once (unless planned for later): the answer says ``applied``.
    If a policy moved meanwhile, the approval still counts, but the request stays
    ``approved`` with a ``blocked_reason``: rebase it, and it needs approving again."""
    return _review(request, request_id, ChangeReview.Decision.APPROVE, payload.comment)


@api.post("/change-requests/{request_id}/reject", response={200: ChangeRequestOut, **READ})
def reject_change_request(request: HttpRequest, request_id: RequestId, payload: ReviewIn) -> Any:
    """Reject, saying why (``comment`` is required): the request is closed."""
    return _review(request, request_id, ChangeReview.Decision.REJECT, payload.comment)


@api.post("/change-requests/{request_id}/withdraw", response={200: ChangeRequestOut, **READ})
def withdraw_change_request(
    request: HttpRequest, request_id: RequestId, payload: WithdrawIn
) -> Any:
    """Its author takes a pending request back; nothing of it applies."""
    token = require(request, Role.EDITOR)
    change_request, _ = _request_for(token, Role.EDITOR, request_id)
    return _request_out(withdraw(change_request, actor_for(request, token), payload.reason))


@api.post("/change-requests/{request_id}/schedule", response={200: ChangeRequestOut, **READ})
def schedule_change_request(
    request: HttpRequest, request_id: RequestId, payload: ScheduleIn
) -> Any:
    """Its author plans it for ``apply_at`` (in the future), or clears the time: an
    approved request then applies at once. The workers apply planned requests when due,
    with the same checks."""
    token = require(request, Role.EDITOR)
    change_request, _ = _request_for(token, Role.EDITOR, request_id)
    return _request_out(schedule(change_request, actor_for(request, token), payload.apply_at))


@api.post("/change-requests/{request_id}/rebase", response={200: ChangeRequestOut, **READ})
def rebase_change_request(request: HttpRequest, request_id: RequestId) -> Any:
    """Re-apply its changes on top of its policies as they are now (the fields it
    changes keep its values, the others take the new ones). Its approvals are dismissed:
    it waits for approval again."""
    token = require(request, Role.EDITOR)
    change_request, held = _request_for(token, Role.EDITOR, request_id)
    return _request_out(rebase(change_request, actor_for(request, token), held))


class AuditQuery(Schema):
    actor: Text | None = None
    environment: Text | None = None
    kind: Text | None = None
    object: Text | None = None
    action: Text | None = None
    limit: int = Field(100, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=1_000_000_000)


@api.get("/audit", response={200: list[AuditOut], **AUTH_ERRORS})
def audit_log(request: HttpRequest, filters: Query[AuditQuery]) -> Any:
    token = require(request, Role.VIEWER)
    entries = entries_readable(token.grants().reads_audit_of).matching(
        actor=filters.actor,
        environment=filters.environment,
        kind=filters.kind,
        object=filters.object,
        action=filters.action,
    )
    window = entries[filters.offset : filters.offset + filters.limit]
    return [
        {
            "at": e.at,
            "actor": e.actor_name,
            "token": e.actor_token,
            "source_ip": e.source_ip,
            "action": e.action,
            "environment": e.environment,
            "kind": e.object_kind,
            "object": e.object_name,
            "reason": e.reason,
            "changes": e.changes,
            "correlation_id": str(e.correlation_id) if e.correlation_id else None,
        }
        for e in window
    ]


def _override_out(override: Override) -> dict[str, Any]:
    return {
        "kind": override.kind,
        "name": override.name,
        "state": override.state,
        "reason": override.reason,
        "actor": override.actor_name,
        "created_at": override.created_at,
        "expires_at": override.expires_at,
        "revision": override.revision,
    }


@api.get("/environments/{environment}/overrides", response={200: list[OverrideOut], **READ})
def list_overrides(request: HttpRequest, environment: Name) -> Any:
    """The overrides in force (lifted and expired ones are in the audit log)."""
    env = environment_for(require(request, Role.VIEWER).grants(), Role.VIEWER, environment)
    return [_override_out(o) for o in active_overrides(env).values()]


@api.post("/environments/{environment}/overrides", response={201: OverrideOut, **WRITE})
def set_override(request: HttpRequest, environment: Name, payload: OverrideIn) -> Any:
    token = require(request, Role.OPERATOR)
    env = environment_for(token.grants(), Role.OPERATOR, environment)
    expires_at = (
        timezone.now() + timedelta(seconds=payload.expires_in_seconds)
        if payload.expires_in_seconds
        else None
    )
    override = do_set_override(
        env,
        payload.kind,
        payload.name,
        payload.state,
        actor_for(request, token),
        payload.reason,
        expires_at,
    )
    return Status(201, _override_out(override))


@api.delete("/environments/{environment}/overrides/{kind}/{name}", response={204: None, **WRITE})
def lift_override(
    request: HttpRequest, environment: Name, kind: OverrideKind, name: Name, query: Query[LiftQuery]
) -> Any:
    token = require(request, Role.OPERATOR)
    env = environment_for(token.grants(), Role.OPERATOR, environment)
    if do_clear_override(env, kind, name, actor_for(request, token), query.reason) is None:
        return Status(404, {"detail": f"No override in force for {kind}:{name}."})
    return Status(204, None)


@api.post(
    "/environments/{environment}/policies/breaker/{name}/reset",
    response={200: ResetOut, **READ, 503: DetailOut},
    summary="Reset a breaker to closed on every instance",
    openapi_extra={
        "responses": {
            503: {
                "content": {
                    "application/json": {
                        "example": {
                            "detail": "Redis cannot be reached, and a reset exists only "
                            "there: try again when it answers."
                        }
                    }
                }
            }
        }
    },
)
def reset_breaker(request: HttpRequest, environment: Name, name: Name, payload: ReasonIn) -> Any:
    """Lift the breaker's override, if one is in force, then write `closed` with the next
    epoch to its shared state in Redis: every instance closes and empties its window.

    The live page's *reset* button: audited as `override.clear` (when it lifts an
    override) and `override.reset`, with the reason. A reset exists only in Redis, so
    while Redis does not answer it is refused with 503, and nothing is lifted or audited.
    """
    token = require(request, Role.OPERATOR)
    policy = policy_for(token.grants(), Role.OPERATOR, environment, "breaker", name)
    lifted = do_reset_breaker(
        policy.environment, policy.name, actor_for(request, token), payload.reason
    )
    return {
        "environment": policy.environment.name,
        "name": policy.name,
        "state": "closed",
        "lifted_override": lifted.state if lifted else None,
    }


@api.post(
    "/environments/{environment}/policies/cache/{name}/purge",
    response={200: PolicyOut, **READ},
    summary="Purge a cache: invalidate every entry at once",
    openapi_extra={
        "responses": {
            200: {
                "content": {
                    "application/json": {
                        "example": {
                            "environment": "prod",
                            "kind": "cache",
                            "name": "catalogue",
                            "version": 4,
                            "revision": 57,
                            "spec": {
                                "ttl": 300.0,
                                "enabled": True,
                                "stale_ttl": 0.0,
                                "local_size": 0,
                                "generation": 3,
                            },
                            "tags": ["catalogue"],
                            "team": "storefront",
                            "updated_at": "2026-12-06T14:05:00Z",
                            "updated_by": "token:deploy-bot",
                        }
                    }
                }
            }
        }
    },
)
def purge_cache(request: HttpRequest, environment: Name, name: Name, payload: ReasonIn) -> Any:
    """Raise the cache's `generation` by 1: instances stop reading the entries written
    under the old one as soon as they hold the new version.

    The live page's *purge* button: a new version of the policy (its reason is
    `Purge: <reason>`), audited as `policy.purge`. While Redis does not answer, the
    purge is saved and audited, and reaches the instances when Redis answers again.
    """
    token = require(request, Role.OPERATOR)
    policy = policy_for(token.grants(), Role.OPERATOR, environment, "cache", name)
    purged = do_purge_cache(
        policy.environment, policy.name, actor_for(request, token), payload.reason
    )
    return _policy_out(purged)


# Webhooks ----------------------------------------------------------------------
# An environment's admins configure where its events go; the secret is write-only.


def _webhook_out(webhook: Webhook) -> dict[str, Any]:
    return {
        "environment": webhook.environment,
        "name": webhook.name,
        "target": shown_url(webhook.url),
        "events": webhook.events,
        "payload_format": webhook.payload_format,
        "enabled": webhook.enabled,
        "signed": bool(webhook.secret),
        "created_at": webhook.created_at,
        "created_by": webhook.created_by_name,
        "last_status": getattr(webhook, "last_status", None),
    }


def _delivery_out(delivery: Delivery) -> dict[str, Any]:
    return {
        "id": delivery.pk,
        "event_id": str(delivery.event_id),
        "event_type": delivery.event.type,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "last_status_code": delivery.last_status_code,
        "last_latency_ms": delivery.last_latency_ms,
        "last_error": delivery.last_error,
        "created_at": delivery.created_at,
        "delivered_at": delivery.delivered_at,
    }


def _webhook_for(request: HttpRequest, environment: str, name: str) -> tuple[ApiToken, Webhook]:
    """The token (an admin in ``environment``) and the webhook ``name`` there, or 403/404.

    Any token passes ``require``: the role is checked in the environment, so the 403
    says where it is missing.
    """
    token = require(request, Role.VIEWER)
    env = environment_for(token.grants(), Role.ADMIN, environment)
    webhook = Webhook.objects.filter(environment=env.name, name=name).first()
    if webhook is None:
        raise Http404(f"{env.name} has no webhook named {name!r}.")
    return token, webhook


@api.get("/environments/{environment}/webhooks", response={200: list[WebhookOut], **READ})
def list_webhooks(request: HttpRequest, environment: Name) -> Any:
    """The environment's webhooks, with the status of each one's newest delivery."""
    env = environment_for(require(request, Role.VIEWER).grants(), Role.ADMIN, environment)
    return [_webhook_out(webhook) for webhook in webhooks_with_last_status(env.name)]


@api.post("/environments/{environment}/webhooks", response={201: WebhookCreatedOut, **READ})
def create_webhook(request: HttpRequest, environment: Name, payload: WebhookIn) -> Any:
    """Add a webhook. A URL whose host is not a public address is refused (422, `url`),
    unless the server allows private targets. Audited as `webhook.create`."""
    token = require(request, Role.VIEWER)
    env = environment_for(token.grants(), Role.ADMIN, environment)
    if payload.secret and payload.generate_secret:
        return Status(422, {"errors": {"secret": ["Give a secret or generate_secret, not both."]}})
    secret = new_secret() if payload.generate_secret else payload.secret
    try:
        webhook = do_create_webhook(
            env.name,
            payload.name,
            payload.url,
            actor_for(request, token),
            events=payload.events,
            secret=secret,
            payload_format=payload.payload_format,
        )
    except WebhookError as exc:
        return Status(422, {"errors": exc.errors})
    shown = _webhook_out(webhook)
    return Status(201, {**shown, "secret": secret if payload.generate_secret else None})


@api.delete("/environments/{environment}/webhooks/{webhook}", response={204: None, **READ})
def delete_webhook(request: HttpRequest, environment: Name, webhook: WebhookName) -> Any:
    """Remove a webhook and its deliveries. Audited as `webhook.delete`."""
    token, hook = _webhook_for(request, environment, webhook)
    do_delete_webhook(hook, actor_for(request, token))
    return Status(204, None)


@api.post(
    "/environments/{environment}/webhooks/{webhook}/test", response={202: TestEventOut, **READ}
)
def send_webhook_test(request: HttpRequest, environment: Name, webhook: WebhookName) -> Any:
    """Queue a `test` event for this webhook only; the sender delivers it within seconds."""
    _, hook = _webhook_for(request, environment, webhook)
    return Status(202, {"event_id": str(send_test(hook).id)})


@api.get(
    "/environments/{environment}/webhooks/{webhook}/deliveries",
    response={200: list[DeliveryOut], **READ},
)
def webhook_deliveries(request: HttpRequest, environment: Name, webhook: WebhookName) -> Any:
    """The webhook's recent deliveries, newest first (at most 50)."""
    _, hook = _webhook_for(request, environment, webhook)
    deliveries = hook.deliveries.select_related("event").order_by("-id")[:RECENT]
    return [_delivery_out(delivery) for delivery in deliveries]


@api.post("/webhook-deliveries/{delivery_id}/redeliver", response={200: DeliveryOut, **READ})
def redeliver_delivery(request: HttpRequest, delivery_id: DeliveryId) -> Any:
    """Send a delivery again, now. A token that cannot view its environment gets 404.
    Audited as `webhook.redeliver`."""
    token = require(request, Role.VIEWER)
    delivery = Delivery.objects.select_related("webhook", "event").filter(pk=delivery_id).first()
    environment = delivery.webhook.environment if delivery else ""
    if delivery is None or token.grants().role_in(environment) is None:
        raise Http404(f"No webhook delivery {delivery_id}.")
    check_role(token.grants(), Role.ADMIN, environment)
    do_redeliver(delivery, actor_for(request, token))
    delivery.refresh_from_db()
    return _delivery_out(delivery)
