"""The cache's wire formats hold to docs/protocol.md section 11: its vectors, its refusals."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest

from controlplane.protocol.cache_entries import (
    SERIALIZERS,
    Entry,
    EnvelopeError,
    canonical,
    decode_envelope,
    decode_invalidation,
    encode_envelope,
    encode_invalidation,
    entry_ttl_ms,
    make_digest,
)

JSON = SERIALIZERS["json"]
PICKLE = SERIALIZERS["pickle"]


@pytest.mark.parametrize(
    ("namespace", "key", "encoded", "digest"),
    [
        ("", "abc", b"s3:abc", "0842dd69950d4929dc2d4a0406876d24"),
        (
            "shop.price",
            (("sku", "a"), ("qty", 1)),
            b"(2:(2:s3:skus1:a(2:s3:qtyi1:1",
            "e69fbe8097c54ef52c03b0234bf5d21c",
        ),
    ],
)
def test_digest_vectors_of_the_protocol(
    namespace: str, key: Any, encoded: bytes, digest: str
) -> None:
    assert canonical(key) == encoded
    assert make_digest(namespace, key) == digest


def test_an_identity_repr_is_reported_to_the_hook() -> None:
    class Opaque:
        pass

    seen: list[type] = []
    make_digest("", (1, Opaque()), lambda kind, text: seen.append(kind))
    assert seen == [Opaque]
    make_digest("", (1, "plain"), lambda kind, text: seen.append(kind))
    assert seen == [Opaque]


def test_a_key_nested_too_deeply_is_refused() -> None:
    key: Any = "leaf"
    for _ in range(70):
        key = [key]
    with pytest.raises(ValueError, match="nested too deeply"):
        make_digest("", key)


def test_envelope_example_of_the_protocol() -> None:
    entry = Entry.written({"a": 1}, 1700000000.0, ttl=30, stale_ttl=10)
    data = encode_envelope(JSON, entry)
    assert data.hex(" ") == (
        "01 02 41 d9 54 fc 40 00 00 00 41 d9 54 fc 47 80 00 00 "
        "41 d9 54 fc 4a 00 00 00 7b 22 61 22 3a 31 7d"
    )
    assert decode_envelope(data, JSON) == entry


def _header(version: int = 1, code: int = 2, *times: float) -> bytes:
    return struct.pack(">BBddd", version, code, *(times or (1.0, 2.0, 3.0)))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x01\x02short", "shorter than the header"),
        (_header(version=2) + b"1", "envelope version 2"),
        (_header(code=1) + b"1", "serializer code 1, this cache uses 2"),
        (_header(1, 2, 1.0, math.inf, 3.0) + b"1", "not finite"),
        (_header(1, 2, math.nan, 2.0, 3.0) + b"1", "not finite"),
        (_header() + b"{not json", "payload does not decode"),
    ],
)
def test_an_unreadable_envelope_is_refused_with_its_reason(data: bytes, reason: str) -> None:
    with pytest.raises(EnvelopeError, match=reason):
        decode_envelope(data, JSON)


def test_a_json_cache_never_unpickles() -> None:
    pickled = encode_envelope(PICKLE, Entry.written("x", 1.0, 30, 0))
    with pytest.raises(EnvelopeError, match="serializer code 1"):
        decode_envelope(pickled, JSON)


def test_freshness_uses_the_readers_settings_too() -> None:
    entry = Entry.written("x", 100.0, ttl=30, stale_ttl=10)
    assert entry.is_fresh(129.9, ttl=30)
    assert not entry.is_fresh(130.0, ttl=30)
    assert not entry.is_fresh(110.0, ttl=10)  # a policy that shortened the ttl applies at once
    assert entry.is_servable(139.9, ttl=30, stale_ttl=10)
    assert not entry.is_servable(140.0, ttl=30, stale_ttl=10)
    assert not entry.is_servable(135.0, ttl=30, stale_ttl=0)


def test_entry_ttl_is_whole_milliseconds_and_never_zero() -> None:
    assert entry_ttl_ms(30, 10) == 40_000
    assert entry_ttl_ms(0.0001, 0) == 1
    assert entry_ttl_ms(0, 0) == 1


def test_invalidation_message_of_the_protocol() -> None:
    message = encode_invalidation(0, "e69fbe8097c54ef52c03b0234bf5d21c", "host:4242:1a2b3c4d")
    assert message == (
        '{"digest":"e69fbe8097c54ef52c03b0234bf5d21c","generation":0,'
        '"instance":"host:4242:1a2b3c4d","schema":1}'
    )
    assert decode_invalidation(message.encode()) == (0, "e69fbe8097c54ef52c03b0234bf5d21c")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not json", "Expecting value"),
        (b"[1]", "not a schema 1 object"),
        (b'{"schema":2,"generation":0,"digest":"d"}', "not a schema 1 object"),
        (b'{"schema":1,"generation":"0","digest":"d"}', "generation"),
        (b'{"schema":1,"digest":"d"}', "generation"),
        (b'{"schema":1,"generation":0,"digest":7}', "digest"),
        (b"[" * 100_000 + b"]" * 100_000, "nests deeper"),
    ],
)
def test_a_malformed_invalidation_is_refused_naming_what_is_wrong(data: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        decode_invalidation(data)
