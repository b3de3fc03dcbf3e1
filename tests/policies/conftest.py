from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.contrib.auth.models import User
from django.db import transaction

from controlplane.accounts.actors import Actor
from controlplane.accounts.roles import Role
from controlplane.policies.actions import do_create_policy
from controlplane.policies.forms import PolicyForm
from controlplane.policies.models import Environment, Policy
from controlplane.policies.signals import row_changed
from tests.conftest import make_user


@pytest.fixture
def announced() -> Iterator[list[tuple[str, str, bool]]]:
    """Each ``row_changed`` heard: (environment, field, whether its transaction had committed)."""
    heard: list[tuple[str, str, bool]] = []

    def listener(sender: object, *, environment: str, field: str, **kwargs: object) -> None:
        heard.append((environment, field, not transaction.get_connection().in_atomic_block))

    row_changed.connect(listener)
    try:
        yield heard
    finally:
        row_changed.disconnect(listener)


def form_data(form: PolicyForm, **changes: str) -> dict[str, str]:
    """What a browser sends for ``form`` as it is first shown, with ``changes``."""
    data = {
        name: "on" if value is True else str(value)
        for name, value in form.initial.items()
        if value is not False and value is not None
    }
    data.update(changes)
    return data


def edit_form_data(policy: Policy, **changes: str) -> dict[str, str]:
    """What the edit page of ``policy`` sends as loaded now, with ``changes``."""
    form = PolicyForm(
        policy.kind, current=policy.spec, creating=False, tags=policy.tags, team=policy.team
    )
    return form_data(form, expected_version=str(policy.version), **changes)


@pytest.fixture
def api(guarded: Environment, system: Actor) -> Policy:
    """A rate limiter in guarded production (tests of other files define their own)."""
    return do_create_policy(
        guarded, "rate_limit", "api", {"limit": 100, "period": 60}, system, "initial"
    )


@pytest.fixture
def bob(db: None) -> User:
    """A second editor, to review what another proposed."""
    return make_user("bob", Role.EDITOR)
