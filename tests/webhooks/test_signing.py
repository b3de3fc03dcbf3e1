"""Webhook signatures: a known vector, and what verification accepts and refuses."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from controlplane.webhooks.signing import signature_header, verify

SECRET = "whsec_test"
BODY = b'{"id":"1"}'
NOW = 1_700_000_000
# Computed independently: printf '1700000000.{"id":"1"}' | openssl dgst -sha256 -hmac whsec_test
KNOWN = "t=1700000000,v1=11bf4466ea17c3df3fd743af0b435368e16b7a05eb8eced85e8c4670767bdec5"


def test_signature_header_matches_a_known_vector() -> None:
    assert signature_header(SECRET, BODY, NOW) == KNOWN


def test_a_signature_verifies_with_its_secret_and_body() -> None:
    assert verify(SECRET, BODY, signature_header(SECRET, BODY, NOW), now=NOW)


def test_a_tampered_body_fails() -> None:
    assert not verify(SECRET, b'{"id":"2"}', KNOWN, now=NOW)


def test_another_secret_fails() -> None:
    assert not verify("whsec_other", BODY, KNOWN, now=NOW)


def test_a_timestamp_changed_after_signing_fails() -> None:
    forged = KNOWN.replace("t=1700000000", "t=1700000100")
    assert not verify(SECRET, BODY, forged, now=NOW + 100)


@pytest.mark.parametrize("age", [301, 3600, -301])
def test_a_timestamp_out_of_tolerance_fails(age: int) -> None:
    assert not verify(SECRET, BODY, KNOWN, now=NOW + age)


def test_a_timestamp_within_tolerance_verifies() -> None:
    assert verify(SECRET, BODY, KNOWN, now=NOW + 300)
    assert not verify(SECRET, BODY, KNOWN, now=NOW + 60, tolerance=59)


def test_any_of_several_signatures_may_match_during_a_secret_rotation() -> None:
    rotated = f"t={NOW},v1={'0' * 64}," + KNOWN.split(",")[1]
    assert verify(SECRET, BODY, rotated, now=NOW)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "v1=11bf4466ea17c3df3fd743af0b435368e16b7a05eb8eced85e8c4670767bdec5",
        "t=1700000000",
        "t=1700000000,v1=",
        "t=soon,v1=11bf4466ea17c3df3fd743af0b435368e16b7a05eb8eced85e8c4670767bdec5",
        "t=1700000000,v1=ünïcode",
        "t=1700000000,t=1700000000,v1=11bf4466ea17c3df3fd743af0b435368e16b7a05eb8eced85e8c4670767bdec5",
        "t=1700000000,v0=11bf4466ea17c3df3fd743af0b435368e16b7a05eb8eced85e8c4670767bdec5",
    ],
)
def test_a_malformed_header_is_not_valid(header: str) -> None:
    assert not verify(SECRET, BODY, header, now=NOW)


def _documented_verify() -> Callable[[str, bytes, str], bool]:
    """The ``verify`` of docs/webhooks.md's Python snippet, as a receiver would paste it."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "webhooks.md").read_text()
    section = page.split("## Verifying deliveries", 1)[1]
    snippet = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert snippet is not None, "docs/webhooks.md: no Python snippet under Verifying deliveries"
    namespace: dict[str, object] = {}
    exec(snippet.group(1), namespace)  # noqa: S102 - our own documentation
    function = namespace["verify"]
    assert callable(function)
    return function


def test_the_documented_snippet_verifies_our_signatures_and_refuses_forgeries() -> None:
    documented = _documented_verify()
    now = int(time.time())
    header = signature_header(SECRET, BODY, now)
    assert documented(SECRET, BODY, header)
    assert not documented(SECRET, BODY + b" ", header)
    assert not documented("whsec_other", BODY, header)
    assert not documented(SECRET, BODY, signature_header(SECRET, BODY, now - 301))
