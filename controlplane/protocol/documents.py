"""The JSON documents stored in Redis and sent on its channels.

Each document carries ``"schema": 1`` (the protocol version). Encoders are used
by the control plane, decoders by the client library; a decoder that meets a
malformed document raises ``ProtocolError`` naming what is wrong, so a reader
can log it and keep its last good state.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controlplane.protocol.keys import NAME_PATTERN, PROTOCOL_VERSION
from controlplane.protocol.limits import (
    MAX_JSON_DEPTH,
    MAX_SAFE_INTEGER,
    LimitExceeded,
    is_safe_integer,
    loads_json,
)
from controlplane.protocol.schema import KINDS, SPECS, PolicyError, validate_spec


class ProtocolError(ValueError):
    """A document read from Redis does not follow the protocol."""


OVERRIDE_STATES = {
    "breaker": ("forced_open", "forced_closed", "disabled"),
    "rate_limit": ("block_all", "bypass"),
}


def dumps(document: Mapping[str, Any]) -> str:
    """Encode a document compactly with stable key order (equal content, equal bytes)."""
    return json.dumps(document, separators=(",", ":"), sort_keys=True)


# A change message wraps a document, which wraps a spec, which holds a value.
_ENVELOPE_DEPTH = 3


def _loads(raw: str | bytes, what: str) -> dict[str, Any]:
    try:
        document = loads_json(raw, max_depth=MAX_JSON_DEPTH + _ENVELOPE_DEPTH)
    except LimitExceeded as exc:
        raise ProtocolError(f"{what}: {exc}") from None
    except ValueError as exc:  # UnicodeDecodeError included
        raise ProtocolError(f"{what}: not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise ProtocolError(f"{what}: expected a JSON object")
    schema = document.get("schema")
    if type(schema) is not int or schema != PROTOCOL_VERSION:
        raise ProtocolError(f"{what}: unsupported schema {document.get('schema')!r}")
    return document


def _int_field(document: Mapping[str, Any], name: str, what: str) -> int:
    # json.loads gives a float for 1.0 and 1e0: only a number written without
    # fraction or exponent is an integer of the protocol.
    value = document.get(name)
    if not is_safe_integer(value) or value < 0:
        raise ProtocolError(
            f"{what}: field {name!r} must be an integer from 0 to {MAX_SAFE_INTEGER}"
        )
    return value


@dataclass(frozen=True)
class PolicyDocument:
    """A published policy. ``spec`` is ``None`` for a deleted policy (a tombstone)."""

    kind: str
    name: str
    version: int
    revision: int
    spec: dict[str, Any] | None
    updated_at: str = ""
    updated_by: str = ""

    @property
    def deleted(self) -> bool:
        return self.spec is None

    def encode(self) -> str:
        return dumps(
            {
                "schema": PROTOCOL_VERSION,
                "kind": self.kind,
                "name": self.name,
                "version": self.version,
                "revision": self.revision,
                "deleted": self.deleted,
                "spec": self.spec,
                "updated_at": self.updated_at,
                "updated_by": self.updated_by,
            }
        )

    @classmethod
    def decode(cls, raw: str | bytes) -> PolicyDocument:
        """Parse and validate a policy document, including every spec field."""
        document = _loads(raw, "policy")
        kind, name = document.get("kind"), document.get("name")
        if kind not in KINDS:
            raise ProtocolError(f"policy: unknown kind {kind!r}")
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise ProtocolError(f"policy: invalid name {name!r}")
        what = f"policy {kind}:{name}"
        version = _int_field(document, "version", what)
        revision = _int_field(document, "revision", what)
        spec = document.get("spec")
        if document.get("deleted") is True:
            spec = None
        elif not isinstance(spec, dict):
            raise ProtocolError(f"{what}: field 'spec' must be an object")
        else:
            # Fields a newer control plane added are ignored, not fatal.
            known = SPECS[kind].by_name
            try:
                spec = validate_spec(kind, {k: v for k, v in spec.items() if k in known})
            except PolicyError as exc:
                raise ProtocolError(f"{what}: {exc}") from None
        return cls(
            kind=kind,
            name=name,
            version=version,
            revision=revision,
            spec=spec,
            updated_at=str(document.get("updated_at", "")),
            updated_by=str(document.get("updated_by", "")),
        )


@dataclass(frozen=True)
class OverrideDocument:
    """A manual override set by an operator; ``state`` is ``None`` once lifted."""

    kind: str
    name: str
    revision: int
    state: str | None
    reason: str = ""
    actor: str = ""
    created_at: str = ""
    expires_at: float | None = None  # unix seconds

    @property
    def deleted(self) -> bool:
        return self.state is None

    def active(self, now: float) -> bool:
        """Return whether the override applies at unix time ``now``."""
        return self.state is not None and (self.expires_at is None or now < self.expires_at)

    def encode(self) -> str:
        return dumps(
            {
                "schema": PROTOCOL_VERSION,
                "kind": self.kind,
                "name": self.name,
                "revision": self.revision,
                "deleted": self.deleted,
                "state": self.state,
                "reason": self.reason,
                "actor": self.actor,
                "created_at": self.created_at,
                "expires_at": self.expires_at,
            }
        )

    @classmethod
    def decode(cls, raw: str | bytes) -> OverrideDocument:
        document = _loads(raw, "override")
        kind, name = document.get("kind"), document.get("name")
        if not isinstance(kind, str) or (kind not in OVERRIDE_STATES and kind != "cache"):
            raise ProtocolError(f"override: unknown kind {kind!r}")
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise ProtocolError(f"override: invalid name {name!r}")
        what = f"override {kind}:{name}"
        revision = _int_field(document, "revision", what)
        if "state" not in document:  # a policy document filed as an override, say
            raise ProtocolError(f"{what}: field 'state' is missing")
        state = None if document.get("deleted") is True else document.get("state")
        if state is not None and state not in OVERRIDE_STATES.get(kind, ()):
            raise ProtocolError(f"{what}: invalid state {state!r}")
        expires_at = document.get("expires_at")
        if expires_at is not None:
            bad = ProtocolError(f"{what}: field 'expires_at' must be a number or null")
            if not isinstance(expires_at, int | float) or isinstance(expires_at, bool):
                raise bad
            try:
                expires_at = float(expires_at)
            except OverflowError:  # an integer beyond any float
                raise bad from None
        return cls(
            kind=kind,
            name=name,
            revision=revision,
            state=state,
            reason=str(document.get("reason", "")),
            actor=str(document.get("actor", "")),
            created_at=str(document.get("created_at", "")),
            expires_at=expires_at,
        )


@dataclass(frozen=True)
class MetaDocument:
    """An environment's metadata: the highest revision published to Redis."""

    environment: str
    revision: int
    published_at: str = ""

    def encode(self) -> str:
        return dumps(
            {
                "schema": PROTOCOL_VERSION,
                "environment": self.environment,
                "revision": self.revision,
                "published_at": self.published_at,
            }
        )

    @classmethod
    def decode(cls, raw: str | bytes) -> MetaDocument:
        document = _loads(raw, "meta")
        environment = document.get("environment")
        if not isinstance(environment, str):
            raise ProtocolError("meta: field 'environment' must be a string")
        return cls(
            environment=environment,
            revision=_int_field(document, "revision", "meta"),
            published_at=str(document.get("published_at", "")),
        )


SECTION_POLICIES = "policies"
SECTION_OVERRIDES = "overrides"


def change_message(section: str, field: str, revision: int, document: str) -> str:
    """Encode the notification published on the changes channel for one write."""
    return dumps(
        {
            "schema": PROTOCOL_VERSION,
            "section": section,
            "field": field,
            "revision": revision,
            "document": json.loads(document),
        }
    )


@dataclass(frozen=True)
class ChangeMessage:
    """A decoded change notification; ``document`` is still raw JSON text."""

    section: str
    field: str
    revision: int
    document: str

    @classmethod
    def decode(cls, raw: str | bytes) -> ChangeMessage:
        message = _loads(raw, "change")
        section = message.get("section")
        if section not in (SECTION_POLICIES, SECTION_OVERRIDES):
            raise ProtocolError(f"change: unknown section {section!r}")
        field = message.get("field")
        if not isinstance(field, str):
            raise ProtocolError("change: field 'field' must be a string")
        document = message.get("document")
        if not isinstance(document, dict):
            raise ProtocolError("change: field 'document' must be an object")
        revision = _int_field(message, "revision", "change")
        # The message must announce the document it carries: a field or revision of
        # its own would let one message move another field's revision or H.
        kind, name = document.get("kind"), document.get("name")
        if not isinstance(kind, str) or not isinstance(name, str) or field != f"{kind}:{name}":
            raise ProtocolError(
                f"change {field!r}: field 'field' is not the document's kind:name {kind!r}:{name!r}"
            )
        own = "version" if section == SECTION_POLICIES else "state"
        if own not in document:  # a policy document announced as an override, or the reverse
            raise ProtocolError(
                f"change {field!r}: field 'section' is {section!r}, the document's is not"
            )
        carried = document.get("revision")
        if type(carried) is not int or carried != revision:
            raise ProtocolError(
                f"change {field!r}: field 'revision' is {revision}, the document's {carried!r}"
            )
        return cls(section=section, field=field, revision=revision, document=dumps(document))
