"""``shape_within_limits``: the text's bound never spares a value ``check_shape`` refuses."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane.protocol.limits import (
    MAX_JSON_DEPTH,
    MAX_JSON_NODES,
    LimitExceeded,
    check_shape,
    shape_within_limits,
)
from tests.properties import PROPERTIES, nested

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{},:ab"\\', max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=4)
    ),
    max_leaves=60,
)


def _refused(value: Any, max_depth: int) -> bool:
    try:
        check_shape(value, max_depth=max_depth)
    except LimitExceeded:
        return True
    return False


@PROPERTIES
@given(values, st.integers(min_value=1, max_value=6))
def test_a_text_said_within_limits_holds_a_value_within_them(value: Any, max_depth: int) -> None:
    text = json.dumps(value)
    if shape_within_limits(text, max_depth):
        assert not _refused(value, max_depth)
    if shape_within_limits(text.encode(), max_depth):
        assert not _refused(value, max_depth)


@pytest.mark.parametrize(
    ("value", "within", "refused"),
    [
        ({"at": 1.5, "policies": {"breaker:a": {"calls": 3, "state": "closed"}}}, True, False),
        (nested(MAX_JSON_DEPTH - 1), True, False),
        (nested(MAX_JSON_DEPTH), False, False),  # not proved by the text: walked, and kept
        (nested(MAX_JSON_DEPTH + 1), False, True),
        ([0] * (MAX_JSON_NODES - 2), True, False),
        ([0] * MAX_JSON_NODES, False, True),
    ],
)
def test_the_bound_at_the_limits(value: Any, within: bool, refused: bool) -> None:
    assert shape_within_limits(json.dumps(value)) is within
    assert _refused(value, MAX_JSON_DEPTH) is refused
