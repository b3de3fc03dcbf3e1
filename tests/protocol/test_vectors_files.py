"""The conformance vectors hold together: every file has the shape section 13 of
docs/protocol.md gives, belongs to the version the document and the code say, and
is described there; each topic's own runner checks the cases themselves."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from controlplane.protocol.keys import PROTOCOL_REVISION

ROOT = Path(__file__).resolve().parent.parent.parent
VECTORS = ROOT / "docs" / "protocol" / "vectors"
DOCUMENT = ROOT / "docs" / "protocol.md"
FILES = sorted(VECTORS.glob("*.json"))
HEX = re.compile(r"^(?:[0-9a-f]{2})*$")


def load(path: Path) -> dict[str, Any]:
    content: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return content


def hex_values(value: Any) -> list[str]:
    """Every ``{"hex": ...}`` in a case, however deep."""
    if isinstance(value, dict):
        if set(value) == {"hex"}:
            return [value["hex"]]
        return [h for item in value.values() for h in hex_values(item)]
    if isinstance(value, list):
        return [h for item in value for h in hex_values(item)]
    return []


def test_the_document_and_the_code_are_the_same_version() -> None:
    title = DOCUMENT.read_text(encoding="utf-8").splitlines()[0]
    assert title == f"# Redis protocol, version {PROTOCOL_REVISION}"


def test_there_are_vectors_for_every_part_of_the_protocol() -> None:
    areas = {path.stem for path in FILES}
    expected = {"documents", "keys", "cache", "reports", "breaker_machine"}
    expected |= {"scripts_breaker", "scripts_limits", "scripts_cache", "scripts_publish"}
    assert expected <= areas, f"missing: {sorted(expected - areas)}"


@pytest.mark.parametrize("path", FILES, ids=[path.name for path in FILES])
def test_a_vector_file_has_the_documented_shape(path: Path) -> None:
    content = load(path)
    assert content["area"] == path.stem
    assert content["protocol"] == PROTOCOL_REVISION
    assert content["section"] and content["description"]
    cases = content["cases"]
    assert cases, "a vector file without cases checks nothing"
    names = [case["name"] for case in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    for case in cases:
        assert re.fullmatch(r"[a-z0-9_]+", case["name"]), case["name"]
        assert case.get("rule"), f"{case['name']} names no rule"
        for value in hex_values(case):
            assert HEX.fullmatch(value), f"{case['name']}: {value!r} is not lowercase hex"
    assert path.read_text(encoding="utf-8").endswith("}\n")


@pytest.mark.parametrize("path", FILES, ids=[path.name for path in FILES])
def test_section_13_describes_every_vector_file(path: Path) -> None:
    section = DOCUMENT.read_text(encoding="utf-8").split("## 13. Conformance vectors", 1)[1]
    section = section.split("\n## ", 1)[0]
    assert f"`{path.name}`" in section


@pytest.mark.parametrize("path", FILES, ids=[path.name for path in FILES])
def test_the_folder_readme_lists_every_vector_file(path: Path) -> None:
    assert f"`{path.name}`" in (VECTORS / "README.md").read_text(encoding="utf-8")
