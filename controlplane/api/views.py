"""The JSON API for automation: policies, their history and rollback, overrides, breaker
resets, cache purges and the audit log.

Same validation and the same audit as the forms: every write goes through the
action functions. Errors are JSON naming the field.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, cast

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.utils import timezone
from ninja import NinjaAPI, Query, Schema, Status
from ninja.errors import HttpError, ValidationError
from ninja.parser import Parser
from pydantic import Field

from controlplane.accounts.roles import Role
from controlplane.api.auth import TokenAuth, actor_for, require
from controlplane.api.schemas import (
    MAX_VERSION,
    AuditOut,
    ConflictOut,
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
    ResetOut,
    RollbackIn,
    Text,
    VersionOut,
)
from controlplane.audit.views import entries_readable
from controlplane.policies.access import environment_for, environments_for, policy_for
from controlplane.policies.actions import (
    StaleVersionError,
    do_create_policy,
    do_delete_policy,
    do_rollback_policy,
    do_update_policy,
)
from controlplane.policies.models import (
    MAX_TAG_LENGTH,
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
from controlplane.protocol.limits import MAX_JSON_DEPTH, LimitExceeded, loads_json
from controlplane.protocol.schema import PolicyError, masked


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


AUTH_ERRORS: dict[int, Any] = {401: DetailOut, 403: DetailOut, 422: ErrorOut}
READ = {**AUTH_ERRORS, 404: DetailOut}
WRITE = {**READ, 409: ConflictOut}


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


@api.post("/environments/{environment}/policies", response={201: PolicyOut, **WRITE})
def create_policy(request: HttpRequest, environment: Name, payload: PolicyIn) -> Any:
    token = require(request, Role.EDITOR)
    env = environment_for(token.grants(), Role.EDITOR, environment)
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


@api.patch("/environments/{environment}/policies/{kind}/{name}", response={200: PolicyOut, **WRITE})
def update_policy(
    request: HttpRequest, environment: Name, kind: Kind, name: Name, payload: PolicyPatch
) -> Any:
    token = require(request, Role.EDITOR)
    policy = do_update_policy(
        policy_for(token.grants(), Role.EDITOR, environment, kind, name),
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


@api.delete("/environments/{environment}/policies/{kind}/{name}", response={204: None, **WRITE})
def delete_policy(
    request: HttpRequest,
    environment: Name,
    kind: Kind,
    name: Name,
    query: Query[DeleteQuery],
) -> Any:
    token = require(request, Role.EDITOR)
    do_delete_policy(
        policy_for(token.grants(), Role.EDITOR, environment, kind, name),
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
    response={200: PolicyOut, **WRITE},
)
def rollback_policy(
    request: HttpRequest, environment: Name, kind: Kind, name: Name, payload: RollbackIn
) -> Any:
    token = require(request, Role.EDITOR)
    policy = do_rollback_policy(
        policy_for(token.grants(), Role.EDITOR, environment, kind, name),
        payload.version,
        actor_for(request, token),
        payload.reason,
        expected_version=payload.expected_version,
    )
    return _policy_out(policy)


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
