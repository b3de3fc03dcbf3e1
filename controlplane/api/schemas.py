from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from ninja import Schema
from pydantic import AfterValidator, AwareDatetime, ConfigDict, Field

from controlplane.policies.models import (
    MAX_TAG_LENGTH,
    MAX_TAGS,
    TAG_PATTERN,
    ChangeRequest,
    ChangeReview,
    Policy,
    PolicyVersion,
    check_tags,
    check_team,
    max_length,
)
from controlplane.protocol.keys import NAME_PATTERN
from controlplane.protocol.schema import InvalidValue, PolicyError, check_text, validate_name
from controlplane.webhooks.actions import EVENT_FAMILIES
from controlplane.webhooks.events import EVENT_TYPES
from controlplane.webhooks.models import Webhook


def _storable(value: str) -> str:
    try:
        return check_text(value)
    except InvalidValue as exc:  # pydantic reports ValueError as a 422 naming the field
        raise ValueError(str(exc)) from None


def _name(value: str) -> str:
    try:
        return validate_name(value)
    except PolicyError as exc:
        raise ValueError(" ".join(exc.errors["name"])) from None


# Text the database can store: no NUL character, no lone surrogate (the pattern tells
# the OpenAPI schema's readers; the validator checks).
Text = Annotated[
    str, AfterValidator(_storable), Field(json_schema_extra={"pattern": "^[^\\u0000]*$"})
]
# An environment's or a policy's name, by the protocol's one rule (which bounds its length).
Name = Annotated[
    str,
    AfterValidator(_name),
    Field(json_schema_extra={"pattern": NAME_PATTERN.pattern.replace("\\Z", "$")}),
]


def _tags(value: list[str]) -> list[str]:
    try:
        return check_tags(value)
    except PolicyError as exc:
        raise ValueError(" ".join(exc.errors["tags"])) from None


def _team(value: str) -> str:
    try:
        return check_team(value)
    except PolicyError as exc:
        raise ValueError(" ".join(exc.errors["team"])) from None


# A policy's tags and owner team, by check_tags and check_team: metadata for finding
# policies, kept by the control plane and never published to services.
Tags = Annotated[
    list[
        Annotated[
            str,
            Field(
                max_length=MAX_TAG_LENGTH,
                json_schema_extra={"pattern": "^" + TAG_PATTERN.pattern.replace("\\Z", "$")},
            ),
        ]
    ],
    AfterValidator(_tags),
    Field(max_length=MAX_TAGS, description="Lower-case slugs (checkout, tier-1)."),
]
Team = Annotated[
    str,
    AfterValidator(_team),
    Field(max_length=max_length(Policy, "team"), description="Owner team."),
]
# Why a change was made: kept in the history and the audit log, within their bound.
Reason = Annotated[Text, Field(max_length=max_length(PolicyVersion, "reason"))]

# Versions are PositiveIntegerFields: the largest every database stores.
MAX_VERSION = 2**31 - 1

# Spelled out for the OpenAPI schema and mypy; tests/api/test_policies.py holds them
# equal to the protocol's KINDS and OVERRIDE_STATES, where they are defined.
Kind = Literal["breaker", "rate_limit", "cache", "config"]
OverrideKind = Literal["breaker", "rate_limit"]


class ErrorOut(Schema):
    errors: dict[str, list[str]] = Field(description="Messages by the name of the offending field.")


class DetailOut(Schema):
    detail: str


class EnvironmentOut(Schema):
    name: str
    description: str
    revision: int
    require_reason: bool = Field(description="Every change to a policy must say why.")
    approvals_required: int = Field(
        description="How many other people approve a change before it applies "
        "(0: changes apply at once; above 0, writes open a change request)."
    )
    approver_role: Literal["editor", "admin"] = Field(
        description="The least role, in this environment, of those who may approve."
    )


class PolicyOut(Schema):
    environment: str
    kind: Kind
    name: str
    version: int
    revision: int
    spec: dict[str, Any] = Field(description="Secret config values are masked.")
    tags: list[str]
    team: str
    updated_at: datetime
    updated_by: str


class PolicyIn(Schema):
    kind: Kind
    name: Name
    spec: dict[str, Any] = Field(default_factory=dict)
    tags: Tags = Field(default_factory=list)
    team: Team = ""
    reason: Reason = ""


class PolicyPatch(Schema):
    spec: dict[str, Any] = Field(
        default_factory=dict, description="Fields to change; the others keep their value."
    )
    tags: Tags | None = Field(default=None, description="Replace the tags (null keeps them).")
    team: Team | None = Field(default=None, description="Replace the team (null keeps it).")
    reason: Reason = ""
    expected_version: int | None = Field(
        default=None,
        ge=0,
        le=MAX_VERSION,
        description="Refuse the change (409) if the policy is no longer at it.",
    )


class RollbackIn(Schema):
    version: int = Field(ge=1, le=MAX_VERSION)
    reason: Reason = ""
    expected_version: int | None = Field(default=None, ge=0, le=MAX_VERSION)


class VersionOut(Schema):
    version: int
    revision: int
    action: str
    deleted: bool
    author: str
    reason: str
    created_at: datetime
    spec: dict[str, Any]


class ConflictOut(Schema):
    detail: str
    current: VersionOut


class AuditOut(Schema):
    at: datetime
    actor: str
    token: str
    source_ip: str | None
    action: str
    environment: str
    kind: str
    object: str
    reason: str
    changes: dict[str, Any]
    correlation_id: str | None


class OverrideIn(Schema):
    kind: OverrideKind
    name: Name
    state: Literal["forced_open", "forced_closed", "disabled", "block_all", "bypass"]
    reason: Reason = Field(min_length=1, description="Required: kept in the audit log.")
    expires_in_seconds: float | None = Field(default=None, gt=0, le=366 * 86400)


class OverrideOut(Schema):
    kind: str
    name: str
    state: str
    reason: str
    actor: str
    created_at: datetime
    expires_at: datetime | None
    revision: int


class ReasonIn(Schema):
    """An operator's action on a policy (a breaker reset, a cache purge): it says why."""

    reason: Reason = Field(
        min_length=1,
        description="Required: kept in the audit log.",
        examples=["upstream recovered"],
    )


class ResetOut(Schema):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "environment": "prod",
                    "name": "checkout",
                    "state": "closed",
                    "lifted_override": "forced_open",
                }
            ]
        }
    )

    environment: str
    name: str
    state: Literal["closed"] = Field(description="The shared state written to Redis.")
    lifted_override: str | None = Field(
        description="The override the reset lifted first (its state), or null if none was in force."
    )


# Change requests ---------------------------------------------------------------

# Ids are BigAutoFields: the largest every database stores.
MAX_ID = 2**63 - 1
RequestId = Annotated[int, Field(ge=1, le=MAX_ID)]

# Spelled out for the OpenAPI schema; tests/api/test_change_requests.py holds them
# equal to ChangeItem.Op and ChangeRequest.Status, where they are defined.
ChangeOp = Literal["create", "update", "delete", "rollback"]
RequestStatus = Literal["open", "approved", "applied", "rejected", "withdrawn"]


def _utc(value: datetime) -> datetime:
    """An aware time in UTC; one whose offset moves it out of the calendar is refused
    here, naming the field, instead of failing when compared to now."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("The time is out of range.") from None


ApplyAt = Annotated[
    AwareDatetime,
    AfterValidator(_utc),
    Field(description="When to apply once approved, with its offset (2026-12-24T09:00:00+01:00)."),
]
Comment = Annotated[Text, Field(max_length=max_length(ChangeReview, "comment"))]


class ChangeIn(Schema):
    """One policy's change, as ``requests.Proposal`` takes it."""

    op: ChangeOp
    kind: Kind
    name: Name
    spec: dict[str, Any] | None = Field(
        default=None,
        description="create: the spec; update: the fields to change (the others keep "
        "their value); delete and rollback: none.",
    )
    base_version: int | None = Field(
        default=None,
        ge=0,
        le=MAX_VERSION,
        description="The version you based the change on (refused if the policy moved); "
        "null: its current version.",
    )
    tags: Tags | None = Field(default=None, description="Replace the tags (null keeps them).")
    team: Team | None = Field(default=None, description="Replace the team (null keeps it).")
    rollback_to: int | None = Field(
        default=None, ge=1, le=MAX_VERSION, description="rollback: the version to restore."
    )


class ChangeRequestIn(Schema):
    changes: list[ChangeIn] = Field(max_length=1000, description="One item per policy.")
    reason: Reason = Field(default="", description="Required: reviewers read it.")
    apply_at: ApplyAt | None = None
    title: Annotated[Text, Field(max_length=max_length(ChangeRequest, "title"))] = Field(
        default="", description="Empty: one is made from the changes."
    )


class ReviewIn(Schema):
    comment: Comment = Field(default="", description="Required to reject: the author reads it.")


class WithdrawIn(Schema):
    reason: Reason = ""


class ScheduleIn(Schema):
    apply_at: ApplyAt | None = Field(description="null: apply as soon as it is approved.")


class ApprovalsOut(Schema):
    given: int = Field(description="Approvals that count (a rebase dismisses earlier ones).")
    required: int


class ReviewOut(Schema):
    reviewer: str
    decision: Literal["approve", "reject"]
    comment: str
    dismissed: bool
    created_at: datetime


class ChangeItemOut(Schema):
    op: ChangeOp
    kind: Kind
    name: str
    base_version: int = Field(description="The version it was based on (0: it did not exist).")
    current_version: int
    moved: bool = Field(description="The policy changed since: the request needs a rebase.")
    diff: dict[str, list[Any]] = Field(
        description="{field: [before, after]} against its base; secret values as fingerprints."
    )
    spec: dict[str, Any] | None = Field(
        description="The proposed spec (null: deleted); secret config values are masked."
    )
    tags: list[str] | None
    team: str | None
    rollback_to: int | None


class ChangeRequestSummaryOut(Schema):
    id: int
    environment: str
    title: str
    status: RequestStatus
    author: str
    reason: str
    created_at: datetime
    apply_at: datetime | None
    applied_at: datetime | None
    approvals: ApprovalsOut
    blocked_reason: str = Field(description="Why it could not apply (empty: nothing blocks it).")
    links: dict[str, str]


class ChangeRequestOut(ChangeRequestSummaryOut):
    needs_rebase: bool = Field(description="A policy moved since: rebase before it can apply.")
    closed_by: str
    items: list[ChangeItemOut]
    reviews: list[ReviewOut]


# Webhooks ----------------------------------------------------------------------

WebhookName = Annotated[Text, Field(min_length=1, max_length=max_length(Webhook, "name"))]
DeliveryId = Annotated[int, Field(ge=1, le=MAX_ID)]
EventChoice = Literal[EVENT_TYPES + EVENT_FAMILIES]  # type: ignore[valid-type]


class WebhookIn(Schema):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "chat",
                    "url": "https://hooks.slack.com/services/T000/B000/XXXX",
                    "events": ["policy.*", "override.*"],
                    "payload_format": "slack",
                }
            ]
        }
    )

    name: WebhookName
    url: Annotated[Text, Field(min_length=1, max_length=max_length(Webhook, "url"))] = Field(
        description="Where each event is POSTed: a public http(s) address."
    )
    events: list[EventChoice] = Field(  # type: ignore[valid-type]
        default_factory=list,
        max_length=len(EVENT_TYPES + EVENT_FAMILIES),
        description="Event types or families (`override.*`) to send; empty: every event.",
    )
    payload_format: Literal["json", "slack"] = "json"
    secret: Annotated[Text, Field(max_length=max_length(Webhook, "secret"))] = Field(
        default="",
        description="Signs each delivery (X-Signature). Write-only: never returned.",
    )
    generate_secret: bool = Field(
        default=False,
        description="Make a random secret instead: returned once, in this answer only.",
    )


class WebhookOut(Schema):
    environment: str
    name: str
    target: str = Field(description="The URL's scheme and host: its path may be a password.")
    events: list[str]
    payload_format: Literal["json", "slack"]
    enabled: bool
    signed: bool = Field(description="Whether deliveries carry an X-Signature.")
    created_at: datetime
    created_by: str
    last_status: Literal["pending", "delivered", "failed"] | None = Field(
        description="The status of its newest delivery (null: none yet)."
    )


class WebhookCreatedOut(WebhookOut):
    secret: str | None = Field(
        description="The generated secret, shown this once (null unless generate_secret)."
    )


class TestEventOut(Schema):
    event_id: str = Field(description="The test event's id (X-Webhook-Delivery).")


class DeliveryOut(Schema):
    id: int
    event_id: str
    event_type: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status_code: int | None
    last_latency_ms: float | None
    last_error: str
    created_at: datetime
    delivered_at: datetime | None
