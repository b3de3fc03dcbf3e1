from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from ninja import Schema
from pydantic import AfterValidator, ConfigDict, Field

from controlplane.policies.models import (
    MAX_TAG_LENGTH,
    MAX_TAGS,
    TAG_PATTERN,
    Policy,
    PolicyVersion,
    check_tags,
    check_team,
    max_length,
)
from controlplane.protocol.keys import NAME_PATTERN
from controlplane.protocol.schema import InvalidValue, PolicyError, check_text, validate_name


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
