"""docs/protocol/vectors/reports.json against the control plane's reader: each entry is
written to a real report stream, read back as the ingest reads it (``read_group``,
undecoded) and checked by ``controlplane.live.ingest.read_report``; a heartbeat's
document also goes through the instances hash and ``history.read_heartbeat``. Last,
a heartbeat our own client wrote is held to the same rules."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings

from controlplane.client import Client
from controlplane.live import history
from controlplane.live.ingest import ensure_group, read_group, read_report
from controlplane.protocol.keys import KeyLayout
from controlplane.protocol.reports import Heartbeat, MalformedReport, Report, encode_data
from controlplane.redis_connection import get_redis
from tests.conftest import wait_for

VECTORS = Path(__file__).resolve().parents[2] / "docs" / "protocol" / "vectors" / "reports.json"
CASES: list[dict[str, Any]] = json.loads(VECTORS.read_text(encoding="utf-8"))["cases"]
# The members of a heartbeat document (docs/protocol.md, 12.2), all written by our client.
HEARTBEAT_MEMBERS = {
    "instance",
    "service",
    "host",
    "pid",
    "library_version",
    "implementation",
    "revision",
    "connected",
    "heartbeat_interval",
    "at",
}


def as_bytes(value: str | dict[str, str]) -> bytes:
    return bytes.fromhex(value["hex"]) if isinstance(value, dict) else value.encode()


@pytest.fixture
def keys() -> KeyLayout:
    return KeyLayout("vectors", settings.REDIS_KEY_PREFIX)


@pytest.fixture
def stream(keys: KeyLayout) -> Iterator[str]:
    ensure_group(get_redis(), keys.reports)
    yield keys.reports


def recorded(report: Report) -> dict[str, Any]:
    if isinstance(report, Heartbeat):
        return shown(history.heartbeat_instance(report.instance, report.data))
    return dataclasses.asdict(report)


def shown(instance: history.Instance) -> dict[str, Any]:
    content = dataclasses.asdict(instance)
    content["at"] = content.pop("last_seen")
    return content


def test_the_file_names_every_case_once_with_its_rule() -> None:
    names = [case["name"] for case in CASES]
    assert len(names) == len(set(names))
    assert all(case["rule"] for case in CASES)


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_vector(case: dict[str, Any], stream: str, keys: KeyLayout) -> None:
    client = get_redis()
    fields = {name: as_bytes(value) for name, value in case["entry"].items()}
    client.xadd(stream, fields)
    [(_, entries)] = read_group(client, "vectors", [stream])
    [(_, read)] = entries
    verdict: Any
    try:
        report = read_report(read, case["now"])
        verdict = "ignored" if report is None else recorded(report)
    except MalformedReport as exc:
        verdict = f"malformed: {exc}"
    if case["verdict"] == "valid":
        assert verdict == case["recorded"]
    elif case["verdict"] == "ignored":
        assert verdict == "ignored"
    else:
        assert verdict.startswith("malformed: ") and case["names"] in verdict, verdict
    if case["entry"].get("type") == "heartbeat" and "hex" not in str(case["entry"]["instance"]):
        check_instances_hash(case, client, keys)


def check_instances_hash(case: dict[str, Any], client: redis.Redis, keys: KeyLayout) -> None:
    """The heartbeat document of the instances hash gets the verdict of its entry."""
    instance = case["entry"]["instance"]
    client.hset(keys.instances, instance, as_bytes(case["entry"]["data"]))
    document = history.undecoded(client, "HGET", keys.instances, instance)
    try:
        verdict: Any = shown(history.read_heartbeat(instance, document))
    except ValueError as exc:
        verdict = f"skipped: {exc}"
    if case.get("instances_hash") == "gone":
        assert case["now"] - verdict["at"] > history.instance_timeout(verdict["heartbeat_interval"])
    elif case["verdict"] == "valid":
        assert verdict == case["recorded"]
    elif not case["entry"]["instance"]:
        return  # an empty id is the entry's problem; the hash's reader checks fields
    else:
        assert str(verdict).startswith("skipped: "), verdict


def test_a_heartbeat_our_client_wrote_follows_the_rules(keys: KeyLayout, stream: str) -> None:
    """Before any policy is published: revision 0, the implementation said, ASCII only."""
    with Client(
        settings.REDIS_URL,
        environment=keys.environment,
        service="vectors",
        key_prefix=keys.prefix,
        start_timeout=5.0,
    ) as client:
        client.start()
        redis_client = get_redis()
        raw = wait_for(
            lambda: history.undecoded(redis_client, "HGET", keys.instances, client.instance_id)
        )
        instance = history.read_heartbeat(client.instance_id, raw)
        entries = wait_for(lambda: read_group(redis_client, "vectors", [stream])[0][1])
    document = json.loads(raw)
    assert set(document) == HEARTBEAT_MEMBERS
    assert raw == encode_data(document).encode(), "compact, keys sorted, non-ASCII escaped"
    assert document["revision"] == 0 and type(document["revision"]) is int
    assert set(document["implementation"]) == {"name", "version", "language", "language_version"}
    assert instance.implementation is not None
    assert instance.implementation.name == "controlplane.client"
    assert instance.implementation.language == "python"
    assert instance.implementation.version == instance.library_version
    heartbeats = [read_report(fields) for _, fields in entries]
    assert heartbeats and all(isinstance(report, Heartbeat) for report in heartbeats)
