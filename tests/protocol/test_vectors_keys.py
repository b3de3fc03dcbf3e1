"""docs/protocol/vectors/keys.json against ``controlplane.protocol.keys``: key and
channel names, hash tags, subject tokens, names, prefixes and hash fields."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from controlplane.protocol.keys import (
    NAME_PATTERN,
    PREFIX_PATTERN,
    KeyLayout,
    split_policy_field,
    subject_token,
)
from controlplane.protocol.schema import PolicyError, validate_name

VECTORS = Path(__file__).resolve().parents[2] / "docs" / "protocol" / "vectors" / "keys.json"
CASES: list[dict[str, Any]] = json.loads(VECTORS.read_text(encoding="utf-8"))["cases"]


def test_the_file_names_every_case_once_with_its_rule() -> None:
    names = [case["name"] for case in CASES]
    assert len(names) == len(set(names))
    assert all(case["rule"] for case in CASES)


def hash_tag(key: str) -> str:
    start = key.index("{") + 1
    return key[start : key.index("}", start)]


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_vector(case: dict[str, Any]) -> None:
    check = case["check"]
    if check == "key":
        built = getattr(KeyLayout(case["environment"], case["prefix"]), case["key"])
        key = built(**case["args"]) if callable(built) else built
        assert key == case["expected"]
        assert hash_tag(key) == case["hash_tag"]
    elif check == "subject_token":
        assert subject_token(case["subject"]) == case["expected"]
    elif check == "name":
        assert bool(NAME_PATTERN.match(case["value"])) is case["valid"]
        if case["valid"]:
            assert validate_name(case["value"]) == case["value"]
            assert KeyLayout(case["value"]).environment == case["value"]
        else:
            with pytest.raises(PolicyError):
                validate_name(case["value"])
            with pytest.raises(ValueError, match="environment"):
                KeyLayout(case["value"])
    elif check == "prefix":
        assert bool(PREFIX_PATTERN.match(case["value"])) is case["valid"]
        if not case["valid"]:
            with pytest.raises(ValueError, match="prefix"):
                KeyLayout("production", case["value"])
    else:
        assert check == "split_field"
        if case["expected"] is None:
            with pytest.raises(ValueError):
                split_policy_field(case["field"])
        else:
            assert list(split_policy_field(case["field"])) == case["expected"]
