"""docs/protocol/vectors/cache.json against ``controlplane.protocol.cache_entries``:
digests of cache keys, envelopes and invalidation messages."""

from __future__ import annotations

import datetime
import decimal
import json
import uuid
from pathlib import Path
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
    make_digest,
)
from controlplane.protocol.keys import KeyLayout

VECTORS = Path(__file__).resolve().parents[2] / "docs" / "protocol" / "vectors" / "cache.json"
CASES: list[dict[str, Any]] = json.loads(VECTORS.read_text(encoding="utf-8"))["cases"]
# What a non-portable case's ``python_key`` may use: a few modules, no builtins.
PYTHON_NAMES = {"__builtins__": {}, "datetime": datetime, "decimal": decimal, "uuid": uuid}
PYTHON_NAMES |= {"float": float}


def test_the_file_names_every_case_once_with_its_rule() -> None:
    names = [case["name"] for case in CASES]
    assert len(names) == len(set(names))
    assert all(case["rule"] for case in CASES)


def portable_key(value: Any) -> Any:
    """A portable case's JSON key as the Python value other languages stand for:
    arrays are tuples, objects string-keyed mappings."""
    if isinstance(value, list):
        return tuple(portable_key(item) for item in value)
    if isinstance(value, dict):
        return {name: portable_key(item) for name, item in value.items()}
    return value


def as_bytes(value: str | dict[str, str]) -> bytes:
    return bytes.fromhex(value["hex"]) if isinstance(value, dict) else value.encode()


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_vector(case: dict[str, Any]) -> None:
    check = case["check"]
    if check == "digest":
        if case["portable"]:
            key = portable_key(case["key"])
        else:
            key = eval(case["python_key"], PYTHON_NAMES)  # noqa: S307 - our own vector file
        assert canonical(key) == as_bytes(case["canonical"])
        digest = make_digest(case["namespace"], key)
        assert digest == case["digest"]
        if case["portable"]:
            entry_key = KeyLayout("production").cache_entry("prices", case["generation"], digest)
            assert entry_key == case["entry_key"]
    elif check == "envelope_decode":
        serializer = SERIALIZERS[case["serializer"]]
        data = as_bytes(case["data"])
        if case["verdict"] == "miss":
            with pytest.raises(EnvelopeError):
                decode_envelope(data, serializer)
            return
        entry = decode_envelope(data, serializer)
        assert entry.value == case["value"]
        times = (entry.created, entry.fresh_until, entry.stale_until)
        assert times == (case["created_at"], case["fresh_until"], case["stale_until"])
    elif check == "envelope_encode":
        entry = Entry.written(case["value"], case["created_at"], case["ttl"], case["stale_ttl"])
        assert encode_envelope(SERIALIZERS[case["serializer"]], entry) == as_bytes(case["data"])
    else:
        assert check == "invalidation"
        if case["verdict"] == "ignored":
            with pytest.raises(ValueError):
                decode_invalidation(case["raw"])
        else:
            assert decode_invalidation(case["raw"]) == (case["generation"], case["digest"])
