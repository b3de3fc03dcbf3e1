"""Tags and owner team through the API: set on create, replaced by a patch, filtered on."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from controlplane.accounts.roles import Role
from controlplane.policies.models import Environment, Policy, PolicyVersion
from tests.api.conftest import ApiClient

pytestmark = pytest.mark.django_db(transaction=True)

BASE = "/environments/production/policies"


def test_tags_and_team_are_set_replaced_kept_and_filtered(
    api_as: Callable[..., ApiClient], production: Environment
) -> None:
    api = api_as(Role.EDITOR)
    created = api.call(
        "post",
        BASE,
        {"kind": "breaker", "name": "payments", "tags": ["Payments", "tier-1"], "team": "Pay"},
    )
    assert created.status_code == 201, created.content
    assert (created.json()["tags"], created.json()["team"]) == (["payments", "tier-1"], "Pay")
    api.call("post", BASE, {"kind": "cache", "name": "prices", "tags": ["catalogue"]})

    patched = api.call("patch", BASE + "/breaker/payments", {"tags": ["payments"]})
    assert patched.status_code == 200, patched.content
    assert (patched.json()["tags"], patched.json()["team"], patched.json()["version"]) == (
        ["payments"],
        "Pay",  # not given: kept
        1,  # metadata only: no new version
    )
    kept = api.call("patch", BASE + "/breaker/payments", {"spec": {"open_for": 5}})
    assert kept.json()["tags"] == ["payments"]

    def names(query: str) -> list[str]:
        return [p["name"] for p in api.call("get", BASE + query).json()]

    assert names("?tag=payments") == ["payments"]
    assert names("?tag=catalogue") == ["prices"]
    assert names("?team=pay") == ["payments"]
    assert names("?tag=nowhere") == []
    assert sorted(names("")) == ["payments", "prices"]


def test_bad_tags_or_team_answer_422_naming_them_and_change_nothing(
    api_as: Callable[..., ApiClient], production: Environment
) -> None:
    api = api_as(Role.EDITOR)
    response = api.call(
        "post",
        BASE,
        {"kind": "breaker", "name": "payments", "tags": ["not a tag"], "team": "x" * 101},
    )
    assert response.status_code == 422
    assert set(response.json()["errors"]) == {"tags", "team"}
    assert not Policy.objects.exists()

    api.call("post", BASE, {"kind": "breaker", "name": "payments"})
    too_many = api.call("patch", BASE + "/breaker/payments", {"tags": [f"t{i}" for i in range(21)]})
    assert too_many.status_code == 422
    assert list(too_many.json()["errors"]) == ["tags"]
    assert Policy.objects.get().tags == []
    assert PolicyVersion.objects.count() == 1
