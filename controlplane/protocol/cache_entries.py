"""What a cache keeps in Redis: entry digests, envelopes, invalidation messages.

Every process that shares a cache reads what the others wrote, so these are wire
formats: ``docs/protocol.md`` section 11 is the normative description (digest 11.3,
envelope 11.4, freshness 11.5, invalidation 11.7), this module is its code. The
client library's cache (``controlplane.client.cache``) imports it; nothing here
talks to Redis.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import hashlib
import inspect
import json
import math
import pathlib
import pickle
import struct
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from controlplane.protocol.limits import is_safe_integer, loads_json

ENVELOPE_VERSION: Final = 1
# version (uint8), serializer code (uint8), created_at, fresh_until, stale_until
# (IEEE 754 doubles, unix seconds of the writer's clock), big-endian; then the payload.
ENVELOPE_HEADER: Final = struct.Struct(">BBddd")
DIGEST_DOMAIN: Final = b"rcp-cache-key-v1\x00"
DIGEST_LENGTH: Final = 32  # hex characters of the SHA-256 digest kept in the key
INVALIDATION_SCHEMA: Final = 1
MAX_KEY_DEPTH: Final = 64  # nesting of a cache key's containers


# Serializers (their codes are stored in every envelope)


class Serializer(Protocol):
    """Turns values into bytes and back. ``code`` (0-255) is stored in every envelope.

    Codes 0-127 are reserved for the library (1 pickle, 2 json); use 128-255 for
    your own. A cache only decodes entries written with its own serializer's code.
    """

    code: int
    name: str

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


class PickleSerializer:
    """Any picklable value. Unpickling trusts whoever can write to Redis."""

    code = 1
    name = "pickle"

    def dumps(self, value: Any) -> bytes:
        return pickle.dumps(value, protocol=5)

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)


class JsonSerializer:
    """JSON values (UTF-8, compact); tuples come back as lists."""

    code = 2
    name = "json"

    def dumps(self, value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()

    def loads(self, data: bytes) -> Any:
        return json.loads(data)


SERIALIZERS: Final[dict[str, Serializer]] = {"pickle": PickleSerializer(), "json": JsonSerializer()}


# Entries and their envelope


class EnvelopeError(ValueError):
    """A value found in Redis is not an envelope this cache can read."""


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """A cached value with the times (unix seconds) it was written and stays usable."""

    value: Any
    created: float
    fresh_until: float
    stale_until: float

    @classmethod
    def written(cls, value: Any, now: float, ttl: float, stale_ttl: float) -> Entry:
        """The entry of ``value`` written at ``now`` by a cache with these settings."""
        return cls(value, now, now + ttl, now + ttl + stale_ttl)

    # Freshness (11.5): the reader's wall clock against the writer's times, bounded
    # by the reader's own settings so a shorter ttl applies to entries written before.

    def is_fresh(self, now: float, ttl: float) -> bool:
        return now < self.fresh_until and now < self.created + ttl

    def is_servable(self, now: float, ttl: float, stale_ttl: float) -> bool:
        """Fresh or stale but still servable (inside the stale window)."""
        return now < self.stale_until and now < self.created + ttl + stale_ttl


def entry_ttl_ms(ttl: float, stale_ttl: float) -> int:
    """The ``PX`` of an entry key: its ttl and stale window in milliseconds, at least 1."""
    return max(1, math.ceil((ttl + stale_ttl) * 1000))


def encode_envelope(serializer: Serializer, entry: Entry) -> bytes:
    """Return the bytes stored in Redis for ``entry``."""
    header = ENVELOPE_HEADER.pack(
        ENVELOPE_VERSION, serializer.code, entry.created, entry.fresh_until, entry.stale_until
    )
    return header + serializer.dumps(entry.value)


def decode_envelope(data: bytes, serializer: Serializer) -> Entry:
    """Return the entry stored in ``data`` or raise ``EnvelopeError``."""
    if len(data) < ENVELOPE_HEADER.size:
        raise EnvelopeError(f"{len(data)} bytes, shorter than the header")
    version, code, created, fresh_until, stale_until = ENVELOPE_HEADER.unpack_from(data)
    if version != ENVELOPE_VERSION:
        raise EnvelopeError(f"envelope version {version}")
    if code != serializer.code:
        raise EnvelopeError(f"serializer code {code}, this cache uses {serializer.code}")
    if not all(math.isfinite(t) for t in (created, fresh_until, stale_until)):
        raise EnvelopeError("times are not finite")
    try:
        value = serializer.loads(data[ENVELOPE_HEADER.size :])
    except Exception as exc:
        raise EnvelopeError(f"payload does not decode: {exc!r}") from exc
    return Entry(value, created, fresh_until, stale_until)


# Digests of keys (11.3)

# Called with the type and repr() of a key part whose repr is the default
# ``<... at 0x...>``, which differs in every process.
IdentityReprHook = Callable[[type, str], None]


def make_digest(namespace: str, key: Any, on_identity_repr: IdentityReprHook | None = None) -> str:
    """Return the digest of ``key`` in ``namespace``: stable across Python processes.

    ``SHA-256(DIGEST_DOMAIN + utf8(namespace) + b"\\0" + canonical(key))``, first 32
    hex characters; ``canonical`` is the type-tagged encoding of :func:`canonical`.
    """
    parts: list[bytes] = [DIGEST_DOMAIN, namespace.encode("utf-8", "surrogatepass"), b"\x00"]
    _encode(key, parts, 0, on_identity_repr)
    return hashlib.sha256(b"".join(parts)).hexdigest()[:DIGEST_LENGTH]


def canonical(key: Any, on_identity_repr: IdentityReprHook | None = None) -> bytes:
    """The type-tagged, length-prefixed encoding of ``key`` that its digest covers."""
    return _encoded(key, 0, on_identity_repr)


def type_name(kind: type) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


def call_key(signature: inspect.Signature | None, args: tuple[Any, ...], kwargs: Any) -> Any:
    """What a call's digest covers: its arguments bound by name, defaults applied."""
    if signature is None:
        return (args, kwargs)
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    return tuple(bound.arguments.items())


def function_namespace(function: Callable[..., Any]) -> str:
    """``module.qualname`` of a function (of its class for other callables)."""
    module = getattr(function, "__module__", None) or type(function).__module__
    qualname = getattr(function, "__qualname__", None) or type(function).__qualname__
    return f"{module}.{qualname}"


def _blob(out: list[bytes], tag: bytes, data: bytes) -> None:
    out.append(tag + str(len(data)).encode() + b":" + data)


def _text(out: list[bytes], tag: bytes, text: str) -> None:
    _blob(out, tag, text.encode("utf-8", "surrogatepass"))


def _encoded(value: Any, depth: int, hook: IdentityReprHook | None) -> bytes:
    parts: list[bytes] = []
    _encode(value, parts, depth, hook)
    return b"".join(parts)


def _encode(value: Any, out: list[bytes], depth: int, hook: IdentityReprHook | None) -> None:
    if depth > MAX_KEY_DEPTH:
        raise ValueError("cache key nested too deeply")
    depth += 1
    if value is None:
        out.append(b"N")
    elif value is True:
        out.append(b"T")
    elif value is False:
        out.append(b"F")
    elif isinstance(value, enum.Enum):
        _text(out, b"e", type_name(type(value)))
        _encode(value.value, out, depth, hook)
    elif isinstance(value, int):
        _text(out, b"i", str(int(value)))
    elif isinstance(value, float):
        _text(out, b"f", float(value).hex())
    elif isinstance(value, str):
        _text(out, b"s", str(value))
    elif isinstance(value, bytes | bytearray | memoryview):
        _blob(out, b"b", bytes(value))
    elif isinstance(value, tuple | list):
        out.append((b"(" if isinstance(value, tuple) else b"[") + str(len(value)).encode() + b":")
        for item in value:
            _encode(item, out, depth, hook)
    elif isinstance(value, Mapping):
        items = sorted(
            (_encoded(k, depth, hook), _encoded(v, depth, hook)) for k, v in value.items()
        )
        out.append(b"{" + str(len(items)).encode() + b":")
        for encoded_key, encoded_value in items:
            out.append(encoded_key)
            out.append(encoded_value)
    elif isinstance(value, set | frozenset):
        members = sorted(_encoded(item, depth, hook) for item in value)
        out.append(b"<" + str(len(members)).encode() + b":")
        out.extend(members)
    elif isinstance(value, datetime.date | datetime.time):
        _text(out, b"d", type_name(type(value)) + "|" + value.isoformat())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        _text(out, b"D", type_name(type(value)))
        fields = [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)]
        _encode(fields, out, depth, hook)
    elif isinstance(value, decimal.Decimal | uuid.UUID | pathlib.PurePath | complex):
        _text(out, b"r", type_name(type(value)) + "|" + str(value))
    else:
        text = repr(value)
        if hook is not None and " at 0x" in text:
            hook(type(value), text)
        _text(out, b"o", type_name(type(value)) + "|" + text)


# Invalidation messages (11.7)


def encode_invalidation(generation: int, digest: str, instance: str) -> str:
    """The canonical JSON published when one entry is dropped everywhere."""
    return json.dumps(
        {
            "digest": digest,
            "generation": generation,
            "instance": instance,
            "schema": INVALIDATION_SCHEMA,
        },
        separators=(",", ":"),
        sort_keys=True,
    )


def decode_invalidation(data: str | bytes) -> tuple[int, str]:
    """Return ``(generation, digest)`` of an invalidation message, or raise ``ValueError``."""
    message = loads_json(data, what="The invalidation message")
    if not isinstance(message, dict) or type(message.get("schema")) is not int:
        raise ValueError(f"not a schema {INVALIDATION_SCHEMA} object")
    if message["schema"] != INVALIDATION_SCHEMA:
        raise ValueError(f"not a schema {INVALIDATION_SCHEMA} object")
    generation, digest = message.get("generation"), message.get("digest")
    # Not True (a bool is an int in Python), not 1.0, not beyond 2^53 - 1 (docs/protocol.md, 4).
    if not is_safe_integer(generation) or generation < 0:
        raise ValueError("generation: not an integer from 0 to 2^53 - 1")
    if not isinstance(digest, str):
        raise ValueError("digest: not a string")
    return generation, digest
