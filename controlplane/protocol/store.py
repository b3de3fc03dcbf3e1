"""An environment's policy store read from Redis, for both sides, as untrusted input.

Policies, overrides and metadata are read in one atomic step
(``lua/read_store.lua``) and decoded value by value: what Redis holds never
raises here, a malformed value is reported next to the good ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any, Final, Generic, TypeVar

import redis
from redis.client import NEVER_DECODE

from controlplane.protocol import scripts
from controlplane.protocol.documents import (
    OVERRIDE_STATES,
    MetaDocument,
    OverrideDocument,
    PolicyDocument,
    ProtocolError,
)
from controlplane.protocol.keys import KeyLayout
from controlplane.protocol.schema import KINDS

_READ_STORE: Final = scripts.load("read_store")

DocumentT = TypeVar("DocumentT", PolicyDocument, OverrideDocument, MetaDocument)


@dataclass(frozen=True)
class Stored(Generic[DocumentT]):
    """One value of the policy store as read: its document, or why it has none.

    Nothing read from Redis is trusted. A value that is not UTF-8, not JSON, not
    a document of the protocol, or a document filed under another field than its
    own is *malformed*: ``document`` is None and ``problem`` says why. ``raw``
    is the value exactly as stored, so a repair can replace exactly it.
    """

    field: str  # undecodable bytes are kept as surrogate escapes (see ``key``)
    raw: bytes
    document: DocumentT | None = None
    problem: str = ""
    newer_kind: bool = False  # a kind this reader does not know: skipped, not an error

    @property
    def malformed(self) -> bool:
        return self.document is None and not self.newer_kind

    @property
    def key(self) -> bytes:
        """The hash field exactly as stored."""
        return self.field.encode("utf-8", "surrogateescape")

    @property
    def shown_field(self) -> str:
        """The field as logs and pages show it (undecodable bytes as ``\\xff``)."""
        return printable(self.field)


@dataclass(frozen=True)
class PolicyStore:
    """An environment's policies, overrides and metadata as read in one transaction.

    ``problems`` names the keys that hold another Redis type than the protocol's
    (``"policies"``, ``"overrides"``, ``"meta"``): they read as empty.
    """

    policies: dict[str, Stored[PolicyDocument]]
    overrides: dict[str, Stored[OverrideDocument]]
    meta: Stored[MetaDocument] | None
    problems: dict[str, str] = dataclass_field(default_factory=dict)

    def malformed(self) -> list[tuple[str, str]]:
        """``(where, problem)`` of every malformed value or key, for a log line or a page."""
        found = [(f"{name} key", problem) for name, problem in self.problems.items()]
        for section, held in (("policies", self.policies), ("overrides", self.overrides)):
            found.extend(
                (f"{section} field {item.shown_field}", item.problem)
                for item in held.values()
                if item.malformed
            )
        if self.meta is not None and self.meta.malformed:
            found.append(("meta", self.meta.problem))
        return found


def printable(text: str) -> str:
    """``text`` with the bytes that were not UTF-8 shown as ``\\xff`` escapes."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _text(value: object) -> tuple[str, str]:
    """Decode a field or value read from Redis: ``(text, problem)``, never an exception."""
    if isinstance(value, str):
        return value, ""
    if not isinstance(value, bytes):
        return "", f"not a string but {type(value).__name__}"
    try:
        return value.decode("utf-8"), ""
    except UnicodeDecodeError as exc:
        return value.decode("utf-8", "surrogateescape"), f"not UTF-8 ({exc.reason} at {exc.start})"


def _raw(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "surrogateescape")


_POLICY_KINDS = frozenset(KINDS)
_OVERRIDE_KINDS = frozenset(OVERRIDE_STATES) | {"cache"}


def decode_policy(field: object, raw: object) -> Stored[PolicyDocument]:
    """Decode the value of one field of a policies hash (or of a change message)."""
    return _decode_field(field, raw, PolicyDocument.decode, _POLICY_KINDS)


def decode_override(field: object, raw: object) -> Stored[OverrideDocument]:
    """Decode the value of one field of an overrides hash (or of a change message)."""
    return _decode_field(field, raw, OverrideDocument.decode, _OVERRIDE_KINDS)


def decode_meta(raw: object, environment: str | None = None) -> Stored[MetaDocument] | None:
    """Decode the meta value (None when the key is absent); with ``environment``, a
    meta document of another environment (a key copied across) is malformed."""
    if raw is None:
        return None
    stored = _decode_value("", raw, MetaDocument.decode)
    if stored.document is not None and environment not in (None, stored.document.environment):
        problem = f"field 'environment' is {printable(stored.document.environment)!r}"
        return Stored("", stored.raw, problem=f"{problem}, not {environment!r}")
    return stored


def _decode_field(
    field: object,
    raw: object,
    decode: Callable[[str], DocumentT],
    kinds: frozenset[str],
) -> Stored[DocumentT]:
    name, problem = _text(field)
    if problem:
        return Stored(name, _raw(raw), problem=f"field name {problem}")
    kind, sep, rest = name.partition(":")
    if kind and sep and rest and kind not in kinds:
        return Stored(name, _raw(raw), problem=f"unknown kind {kind!r}", newer_kind=True)
    stored = _decode_value(name, raw, decode)
    document = stored.document
    if isinstance(document, PolicyDocument | OverrideDocument):
        own = f"{document.kind}:{document.name}"
        if own != name:
            return Stored(
                name, stored.raw, problem=f"holds the document of {printable(own)} (kind:name)"
            )
    return stored


def _decode_value(name: str, raw: object, decode: Callable[[str], DocumentT]) -> Stored[DocumentT]:
    text, problem = _text(raw)
    if problem:
        return Stored(name, _raw(raw), problem=problem)
    try:
        return Stored(name, _raw(raw), decode(text))
    except ProtocolError as exc:
        return Stored(name, _raw(raw), problem=str(exc))
    except Exception as exc:  # a decoder's bug on hostile input must not sink the others
        return Stored(name, _raw(raw), problem=f"{type(exc).__name__}: {exc}")


def decode_policy_store(
    policies: Mapping[Any, Any],
    overrides: Mapping[Any, Any],
    meta: object,
    problems: Mapping[str, str] | None = None,
    environment: str | None = None,
) -> PolicyStore:
    """Decode the contents of the policy store, value by value (see :class:`Stored`)."""
    decoded_policies = {
        item.field: item for item in (decode_policy(f, v) for f, v in policies.items())
    }
    decoded_overrides = {
        item.field: item for item in (decode_override(f, v) for f, v in overrides.items())
    }
    decoded_meta = decode_meta(meta, environment)
    return PolicyStore(decoded_policies, decoded_overrides, decoded_meta, dict(problems or {}))


def read_policy_store(client: redis.Redis, keys: KeyLayout) -> PolicyStore:
    """Read an environment's policies, overrides and metadata in one atomic step.

    Replies are read as bytes, whatever the client's ``decode_responses``, and
    decoded here value by value: one bad value is reported in the result,
    never raised, and never hides the good ones. Raises only ``RedisError``.
    """
    reply = scripts.run(
        client, _READ_STORE, [keys.policies, keys.overrides, keys.meta], [], raw=True
    )
    (policies, policies_error), (overrides, overrides_error), (meta, meta_error) = reply
    problems = {
        name: _text(error)[0]
        for name, error in (
            ("policies", policies_error),
            ("overrides", overrides_error),
            ("meta", meta_error),
        )
        if error is not None
    }
    return decode_policy_store(
        _pairs(policies), _pairs(overrides), meta, problems, environment=keys.environment
    )


def read_meta_revisions(client: redis.Redis, all_keys: list[KeyLayout]) -> list[int | None]:
    """The published revision of each environment (one pipeline): None when absent, -1 when
    malformed (or the key holds another type)."""
    with client.pipeline(transaction=False) as pipe:
        for keys in all_keys:
            pipe.execute_command("GET", keys.meta, **{NEVER_DECODE: True})  # type: ignore[no-untyped-call]
        replies = pipe.execute(raise_on_error=False)
    revisions: list[int | None] = []
    for keys, reply in zip(all_keys, replies, strict=True):
        if isinstance(reply, redis.ResponseError):  # WRONGTYPE: the key is not a string
            revisions.append(-1)
            continue
        if isinstance(reply, Exception):
            raise reply
        meta = decode_meta(reply, keys.environment)
        revisions.append(None if meta is None else meta_revision(meta))
    return revisions


def meta_revision(meta: Stored[MetaDocument] | None) -> int | None:
    """The revision a meta value stands for: None when absent, -1 when malformed."""
    if meta is None:
        return None
    return -1 if meta.document is None else meta.document.revision


def _pairs(reply: Any) -> dict[Any, Any]:
    # HGETALL's flat list of fields and values, as a script returns it.
    if not isinstance(reply, list):
        return {}
    return dict(zip(reply[::2], reply[1::2], strict=False))
