"""Property-based: the API, sent any JSON body to create or update a policy, answers
4xx naming the field or succeeds; never a server error, and a refusal changes nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st

from controlplane.accounts.actors import Actor
from controlplane.accounts.roles import Role
from controlplane.policies.actions import do_create_policy
from controlplane.policies.models import Environment, Policy
from controlplane.protocol.schema import KINDS, validate_spec
from tests.api.conftest import ApiClient
from tests.properties import PROPERTIES, json_loads_values, kinds, names, spec_data, stored_state

pytestmark = pytest.mark.django_db(transaction=True)

BASE = "/environments/production/policies"
# Text JSON can carry that Python strings hold but databases refuse: NUL, lone surrogates.
awkward_text = st.text(max_size=10) | st.text(
    st.characters(categories=["Cs", "Cc"]), min_size=1, max_size=3
)
reasons = awkward_text | json_loads_values


def create_bodies() -> st.SearchStrategy[Any]:
    """A create body built from the real one with fields mutated, or any JSON at all."""
    real = kinds.flatmap(
        lambda kind: st.fixed_dictionaries(
            {"kind": st.just(kind), "name": names, "spec": spec_data(kind)},
            optional={"reason": reasons},
        )
    )
    mutated = kinds.flatmap(
        lambda kind: st.fixed_dictionaries(
            {},
            optional={
                "kind": st.just(kind) | json_loads_values,
                "name": names | json_loads_values,
                "spec": spec_data(kind) | json_loads_values,
                "reason": reasons,
            },
        )
    )
    return real | mutated | json_loads_values


def update_bodies(kind: str) -> st.SearchStrategy[Any]:
    real = st.fixed_dictionaries(
        {"spec": spec_data(kind) | json_loads_values},
        optional={
            "reason": reasons,
            "expected_version": st.integers() | json_loads_values,
        },
    )
    return real | json_loads_values


@pytest.fixture
def editor_api(
    api_as: Callable[..., ApiClient], production: Environment, system: Actor
) -> ApiClient:
    for kind in KINDS:
        do_create_policy(production, kind, "existing", {}, system)
    return api_as(Role.EDITOR)


def send(api: ApiClient, method: str, path: str, body: Any) -> Any:
    # json.dumps writes NaN and Infinity, which Python's json.loads (and so the API) reads.
    return getattr(api.client, method)(
        "/api/v1" + path,
        data=json.dumps(body),
        content_type="application/json",
        headers=api.headers,
    )


def check_answer(response: Any, before: dict[str, Any]) -> None:
    event(f"status {response.status_code}")
    assert response.status_code < 500, response.content
    if response.status_code < 400:
        return
    assert stored_state() == before
    answer = response.json()
    if response.status_code == 422:
        errors = answer["errors"]
        assert errors and isinstance(errors, dict)
        for field, messages in errors.items():
            assert isinstance(field, str)  # "" too, when a spec has a field named ""
            assert messages and all(isinstance(m, str) and m for m in messages)
    else:
        assert response.status_code in (404, 409), answer
        assert answer["detail"]


@PROPERTIES
@given(body=create_bodies())
@example(body={"kind": "config", "name": "a", "spec": {}, "reason": "\x00"})
@example(body={"kind": "config", "name": "a", "spec": {}, "reason": "\ud800"})
@example(body={"kind": "config", "name": "a", "spec": {"description": "\ud800"}})
@example(body={"kind": "config", "name": "a", "spec": {"value": "nul \x00"}})
def test_create_answers_the_field_or_creates(editor_api: ApiClient, body: Any) -> None:
    before = stored_state()
    response = send(editor_api, "post", BASE, body)
    check_answer(response, before)
    if response.status_code == 201:
        created = response.json()
        policy = Policy.objects.get(kind=created["kind"], name=created["name"], deleted=False)
        assert policy.spec == validate_spec(policy.kind, policy.spec)


@pytest.mark.parametrize("kind", KINDS)
@PROPERTIES
@given(body=st.data())
def test_update_answers_the_field_or_updates(
    editor_api: ApiClient, kind: str, body: st.DataObject
) -> None:
    before = stored_state()
    response = send(editor_api, "patch", f"{BASE}/{kind}/existing", body.draw(update_bodies(kind)))
    check_answer(response, before)
    if response.status_code == 200:
        policy = Policy.objects.get(kind=kind, name="existing")
        assert policy.spec == validate_spec(kind, policy.spec)
