"""Property-based: whatever bytes sit in an environment's policy store (policies and
overrides hashes, meta key) and in the breaker states the dashboard reads, next to
valid documents, the dashboard's pages answer below 500, a reconciler pass raises
nothing and leaves Redis equal to the database, and a client's ``start()`` holds every
valid policy that was not overwritten."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client as WebClient
from hypothesis import example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from controlplane.accounts.actors import Actor
from controlplane.client import Client
from controlplane.policies.actions import do_create_environment, do_create_policy
from controlplane.policies.models import Environment
from controlplane.policies.overrides import do_set_override
from controlplane.policies.publish import policy_document
from controlplane.policies.reconcile import expected_documents, reconcile_all
from controlplane.protocol.connection import connect
from controlplane.protocol.documents import PROTOCOL_VERSION, MetaDocument, PolicyDocument, dumps
from controlplane.protocol.limits import MAX_DOCUMENT_BYTES
from tests.properties import PROPERTIES, json_loads_values

pytestmark = pytest.mark.django_db(transaction=True)

SPECS: dict[str, dict[str, Any]] = {
    "breaker:payments": {"open_for": 5},
    "rate_limit:api": {"limit": 10},
    "cache:prices": {"ttl": 5},
    "config:banner": {"value": "hello"},
}
# Fields that exist, fields that do not, a kind from a newer control plane, and names
# no protocol field can have (not UTF-8, no kind, braces, far too long).
FIELDS = st.sampled_from(
    [
        *(field.encode() for field in SPECS),
        b"config:other",
        b"breaker:ghost",
        b"future_kind:x",
        b"nonsense",
        b"config:\xff",
        b"\xfe\xff",
        b"config:{a}",
        b"config:" + b"a" * 300,
    ]
)
_OVERLONG = b'{"schema":1,"kind":"config","name":"banner","spec":"' + b"a" * MAX_DOCUMENT_BYTES
_HUGE_NUMBERS = st.sampled_from(
    [10**400, -(10**400), 1e308, -1e308, float("nan"), float("inf"), 2**63, -1]
)


@pytest.fixture
def valid(system: Actor) -> dict[str, Environment]:
    """Two environments with one policy of each kind and an override, all published."""
    environments = {name: do_create_environment(name, system) for name in ("production", "staging")}
    for environment in environments.values():
        for field, spec in SPECS.items():
            kind, _, name = field.partition(":")
            do_create_policy(environment, kind, name, spec, system)
        do_set_override(environment, "rate_limit", "api", "bypass", system, "tests")
    return environments


@pytest.fixture
def raw_redis() -> redis.Redis:
    """The test's Redis with bytes replies, as hostile bytes are written and compared."""
    return connect(settings.REDIS_URL)


@pytest.fixture
def web(viewer: User) -> WebClient:
    web = WebClient()
    web.force_login(viewer)
    return web


def _document(data: st.DataObject, valid: list[str]) -> Any:
    """One of the ``valid`` documents, with members replaced."""
    document = json.loads(data.draw(st.sampled_from(valid)))
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        target = document
        if isinstance(document.get("spec"), dict) and data.draw(st.booleans()):
            target = document["spec"]
        member = data.draw(st.sampled_from(sorted(target)) | st.text(max_size=6))
        target[member] = data.draw(json_loads_values | _HUGE_NUMBERS)
    return document


def hostile(data: st.DataObject, valid: list[str]) -> bytes:
    """A value where one of the ``valid`` documents belongs: each way it can be wrong."""
    choice = data.draw(
        st.sampled_from(
            ["bytes", "not utf-8", "json", "document", "document", "other's", "deep", "long"]
        ),
        label="value",
    )
    if choice == "bytes":
        return data.draw(st.binary(max_size=64))
    if choice == "not utf-8":
        text = json.dumps(_document(data, valid)).encode()
        at = data.draw(st.integers(min_value=0, max_value=20))
        return text[:at] + data.draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"]))
    if choice == "json":
        return json.dumps(data.draw(json_loads_values)).encode()
    if choice == "other's":  # a valid document, filed under a field that may not be its own
        return data.draw(st.sampled_from(valid)).encode()
    if choice == "deep":
        depth = data.draw(st.sampled_from([40, 1_000, 100_000]))
        return b'{"schema":1,"spec":' + b"[" * depth + b"]" * depth + b"}"
    if choice == "long":
        return _OVERLONG
    return json.dumps(_document(data, valid)).encode()


def write_hostile(
    data: st.DataObject, raw_redis: redis.Redis, environment: Environment
) -> set[str]:
    """Write one to three hostile values; return the valid policy fields overwritten."""
    keys = environment.keys()
    expected = expected_documents(environment)
    valid = {
        section: [document for _, (_, document) in sorted(expected[section].items())]
        for section in ("policies", "overrides")
    }
    valid["meta"] = [MetaDocument(environment.name, environment.revision).encode()]
    overwritten: set[str] = set()
    for _ in range(data.draw(st.integers(min_value=1, max_value=3), label="writes")):
        target = data.draw(
            st.sampled_from(["policies", "policies", "overrides", "meta", "breaker states"]),
            label="key",
        )
        if target == "meta":
            raw_redis.set(keys.meta, hostile(data, valid["meta"]))
        elif target == "breaker states":  # what the live pages read of breakers
            field = data.draw(st.sampled_from([b"payments|i1", b"payments", b"\xff|i1"]))
            raw_redis.hset(keys.live_breaker_states, field, data.draw(st.binary(max_size=24)))
        else:
            field = data.draw(FIELDS, label="field")
            raw_redis.hset(getattr(keys, target), field, hostile(data, valid[target]))
            if target == "policies" and field.decode("utf-8", "replace") in SPECS:
                overwritten.add(field.decode())
    return overwritten


def assert_redis_equals_the_database(raw_redis: redis.Redis, environment: Environment) -> None:
    keys = environment.keys()
    expected = expected_documents(environment)
    for section in ("policies", "overrides"):
        stored = raw_redis.hgetall(getattr(keys, section))
        assert stored == {
            field.encode(): document.encode() for field, (_, document) in expected[section].items()
        }, section
    meta = MetaDocument.decode(raw_redis.get(keys.meta))
    assert meta.revision == Environment.objects.get(pk=environment.pk).revision


def pages(environment: Environment) -> list[str]:
    name = environment.name
    return [
        "/",
        f"/e/{name}/live/",
        f"/e/{name}/instances/",
        f"/e/{name}/breaker/payments/",
        f"/e/{name}/rate_limit/api/",
    ]


@pytest.fixture
def started_clients() -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for client in made:
        client.close()


def test_dashboard_answers_with_a_byte_that_is_not_utf8_in_a_policies_hash(
    valid: dict[str, Environment], raw_redis: redis.Redis, web: WebClient
) -> None:
    # Issue 10, item 3: `hset '{rcp:staging}:policies' config:x $'\xff'` made / a 500.
    raw_redis.hset(valid["staging"].keys().policies, "config:x", b"\xff")
    raw_redis.hset(valid["staging"].keys().policies, b"config:\xfe", b"{}")

    response = web.get("/policies/")

    assert response.status_code == 200
    assert 'data-policy="config:banner"' in response.content.decode()


@hypothesis_settings(PROPERTIES, max_examples=30)
@given(data=st.data())
@example(data=[("policies", b"config:x", b"\xff")])  # issue 10, item 3
@example(data=[("meta", b"", b'{"schema":1,"environment":"production","revision":1e300}')])
@example(data=[("policies", b"config:banner", b"[" * 100_000)])
@example(
    data=[
        (
            "policies",
            b"config:banner",
            dumps({"schema": PROTOCOL_VERSION, "kind": "breaker", "name": "payments"}).encode(),
        )
    ]
)
def test_hostile_values_in_the_policy_store_hurt_no_reader(
    valid: dict[str, Environment],
    raw_redis: redis.Redis,
    web: WebClient,
    started_clients: list[Client],
    data: Any,
) -> None:
    production = valid["production"]
    keys = production.keys()
    if isinstance(data, list):  # an explicit example: (key, field, value)
        overwritten = set()
        for target, field, value in data:
            if target == "meta":
                raw_redis.set(keys.meta, value)
            else:
                raw_redis.hset(getattr(keys, target), field, value)
                overwritten |= {field.decode()} & set(SPECS)
    else:
        production.refresh_from_db()
        overwritten = write_hostile(data, raw_redis, production)

    for page in pages(production):
        assert web.get(page).status_code < 500, page

    client = Client(
        settings.REDIS_URL,
        "production",
        "tests",
        key_prefix=settings.REDIS_KEY_PREFIX,
        start_timeout=5.0,
    )
    started_clients.append(client)
    client.start()
    assert client.wait_synced(0)
    for field in SPECS:
        if field not in overwritten:
            kind, _, name = field.partition(":")
            policy = production.policies.get(kind=kind, name=name)
            published = PolicyDocument.decode(policy_document(policy).encode()).spec
            assert client.policy_spec(kind, name) == published, field
    client.close()

    drifts = reconcile_all()  # raises nothing

    assert [drift.environment for drift in drifts] == ["production", "staging"]
    for environment in valid.values():
        assert_redis_equals_the_database(raw_redis, environment)
    raw_redis.delete(keys.live_breaker_states)
