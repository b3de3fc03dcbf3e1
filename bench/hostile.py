"""Hostile input: a catastrophic pattern sent by an editor, or written straight into Redis.

Issue 10's targets: such a request answers within 100 ms and ``/healthz`` stays under
50 ms meanwhile. The "before" rows run what the code did until then (Python's ``re``
and plain ``jsonschema``) on inputs small enough to finish: each extra ``a``, or each
extra link of a ``$ref`` chain, doubles their time; at 37 ``a`` the old code hung.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from typing import Any

from bench.common import Row, percentile
from bench.context import BenchContext

NAME_POST = "hostile pattern: editor's API request"
NAME_DECODE = "hostile pattern: Redis document decoded"
NAME_SCHEMA = "hostile JSON schema ($ref chain) checked"
NAME_HEALTH = "/healthz while hostile requests run"
BASELINES = {
    NAME_POST: "RE2 (ours)",
    NAME_DECODE: "RE2 (ours)",
    NAME_SCHEMA: "step budget (ours)",
    NAME_HEALTH: "alone",
}
CATASTROPHIC = "^(a+)+$"
HOSTILE = {"value_type": "string", "value": "a" * 64 + "!", "pattern": CATASTROPHIC}


def run(ctx: BenchContext) -> list[Row]:
    from django.test import Client as HttpClient

    from controlplane.accounts.actions import do_create_token
    from controlplane.accounts.actors import Actor
    from controlplane.protocol.documents import PolicyDocument, ProtocolError

    ctx.publish("config", "bench.hostile.seed", {"value": "x"})  # creates the environment
    _, secret = do_create_token("bench hostile", "editor", Actor.system("bench"))
    http = HttpClient(HTTP_AUTHORIZATION=f"Bearer {secret}", HTTP_HOST="localhost")
    url = f"/api/v1/environments/{ctx.environment}/policies"

    def post() -> int:
        body = {"kind": "config", "name": "bench.hostile", "spec": HOSTILE}
        response = http.post(url, json.dumps(body), content_type="application/json", secure=True)
        return response.status_code

    status = post()
    assert status == 422, f"the hostile request must be refused, not {status}"
    posts = _timed_ms(post, 30)

    document = json.dumps(
        {"schema": 1, "kind": "config", "name": "r", "version": 1, "revision": 1, "spec": HOSTILE}
    )

    def decode() -> None:
        with contextlib.suppress(ProtocolError):
            PolicyDocument.decode(document)

    decodes = _timed_ms(decode, 200)
    before = _timed_ms(lambda: re.fullmatch(CATASTROPHIC, "a" * 22 + "!"), 3)

    rows = [
        Row.of(NAME_POST, "RE2 (ours)", posts, "ms", "64 a's + '!': refused with 422 naming value"),
        Row.of(NAME_DECODE, "RE2 (ours)", decodes, "ms", "64 a's + '!': refused as malformed"),
        Row.of(NAME_DECODE, "Python re (before)", before, "ms", "22 a's; doubles per a"),
    ]
    rows += _schema_rows()
    rows += _health_rows(post)
    return rows


def _schema_rows() -> list[Row]:
    import jsonschema

    from controlplane.protocol import json_schema

    def chain(links: int) -> dict[str, Any]:
        definitions: dict[str, Any] = {"a0": {"type": "integer"}}
        for level in range(1, links + 1):
            below = {"$ref": f"#/$defs/a{level - 1}"}
            definitions[f"a{level}"] = {"allOf": [below, below]}
        return {"$defs": definitions, "$ref": f"#/$defs/a{links}"}

    def ours() -> None:
        with contextlib.suppress(json_schema.SchemaProblem):
            json_schema.validate(1, chain(40))

    return [
        Row.of(NAME_SCHEMA, "step budget (ours)", _timed_ms(ours, 20), "ms", "40 links: refused"),
        Row.of(
            NAME_SCHEMA,
            "plain jsonschema (before)",
            _timed_ms(lambda: jsonschema.validate(1, chain(12)), 3),
            "ms",
            "12 links; doubles per link",
        ),
    ]


def _health_rows(post: Any) -> list[Row]:
    from django.test import Client as HttpClient

    health = HttpClient(HTTP_HOST="localhost")
    alone = _timed_ms(lambda: health.get("/healthz", secure=True), 200)
    stop = threading.Event()

    def attack() -> None:
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            post()

    attackers = [threading.Thread(target=attack, daemon=True) for _ in range(2)]
    for attacker in attackers:
        attacker.start()
    try:
        loaded = _timed_ms(lambda: health.get("/healthz", secure=True), 200)
    finally:
        stop.set()
        for attacker in attackers:
            attacker.join()
    return [
        Row.of(NAME_HEALTH, "alone", alone, "ms", f"p99 {percentile(alone, 0.99):.2f} ms"),
        Row.of(
            NAME_HEALTH,
            "2 threads posting hostile patterns",
            loaded,
            "ms",
            f"p99 {percentile(loaded, 0.99):.2f} ms",
        ),
    ]


def _timed_ms(fn: Any, times: int) -> list[float]:
    samples = []
    for _ in range(times):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return samples
