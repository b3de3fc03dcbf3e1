"""docs/protocol/vectors/documents.json against the reference reader: the decoders a
snapshot goes through (``controlplane.protocol.store``) and the change-message path
of a client's local copy (``PolicyState.apply_change``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from controlplane.client.snapshot import PolicyState
from controlplane.protocol.documents import MetaDocument, OverrideDocument, PolicyDocument
from controlplane.protocol.store import Stored, decode_meta, decode_override, decode_policy

VECTORS = Path(__file__).resolve().parents[2] / "docs" / "protocol" / "vectors" / "documents.json"
CASES: list[dict[str, Any]] = json.loads(VECTORS.read_text(encoding="utf-8"))["cases"]


def as_bytes(value: str | dict[str, str]) -> bytes:
    return bytes.fromhex(value["hex"]) if isinstance(value, dict) else value.encode()


def held(document: PolicyDocument | OverrideDocument | MetaDocument) -> dict[str, Any]:
    content = dataclasses.asdict(document)
    if not isinstance(document, MetaDocument):
        content["deleted"] = document.deleted
    return content


def test_the_file_names_every_case_once_with_its_rule() -> None:
    names = [case["name"] for case in CASES]
    assert len(names) == len(set(names))
    assert all(case["rule"] for case in CASES)


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_vector(case: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    if case["document"] == "change":
        check_change(case, caplog)
        return
    raw = as_bytes(case["raw"])
    stored: Stored[Any] | None
    if case["document"] == "meta":
        stored = decode_meta(raw, "production")
    else:
        decode = decode_policy if case["document"] == "policy" else decode_override
        stored = decode(as_bytes(case["field"]), raw)
    assert stored is not None
    if case["verdict"] == "valid":
        assert stored.document is not None, stored.problem
        assert held(stored.document) == case["held"]
    elif case["verdict"] == "skipped":
        assert stored.document is None and stored.newer_kind and not stored.malformed
    else:
        assert stored.malformed
        assert case["names"] in stored.problem, stored.problem


def check_change(case: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    state = PolicyState()
    state.apply_change(as_bytes(case["raw"]))
    if case["verdict"] == "malformed":
        assert (state.revision, state.malformed) == (0, 1)
        assert not state.policies and not state.overrides
        assert case["names"] in caplog.text
        return
    message = json.loads(case["raw"])
    assert state.revision == case["revision"]
    holding = state.policies if message["section"] == "policies" else state.overrides
    document = holding.get(message["field"])
    if case["document_verdict"] == "valid":
        assert state.malformed == 0
        assert document is not None and held(document) == case["held"]
    else:
        assert document is None
        assert state.malformed == (1 if case["document_verdict"] == "malformed" else 0)
