"""Property-based: the policy forms, posted anything, answer with the field named or save;
never a server error, and a refused post changes nothing."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils.html import escape
from hypothesis import event, given
from hypothesis import strategies as st

from controlplane.accounts.actors import Actor
from controlplane.policies.actions import do_create_policy
from controlplane.policies.forms import PolicyForm, display_value
from controlplane.policies.models import Environment, Policy
from controlplane.protocol.schema import KINDS, SPECS, validate_spec
from tests.properties import PROPERTIES, names, near_valid, stored_state

pytestmark = pytest.mark.django_db(transaction=True)

# What a browser sends for one field: any text, or a near-valid value as a form shows it.
posted_text = st.text(max_size=30)


def posted_fields(kind: str) -> st.SearchStrategy[dict[str, str]]:
    """A whole form as a browser posts it: every field at its default but a few, which
    get any text or a near-valid value."""
    specs = SPECS[kind].fields
    defaults = {f.name: display_value(f.default) for f in specs}
    changed = st.lists(st.sampled_from(specs), unique_by=lambda f: f.name, max_size=3).flatmap(
        lambda chosen: st.fixed_dictionaries(
            {f.name: posted_text | near_valid(f).map(display_value) for f in chosen}
        )
    )
    extra = st.fixed_dictionaries(
        {"action": st.sampled_from(["save", "save", "preview", ""])},
        optional={
            "reason": posted_text,
            "expected_version": posted_text | st.sampled_from(["1", "2"]),
        },
    )
    return st.builds(lambda c, e: {**defaults, **c, **e}, changed, extra)


@pytest.fixture
def existing(production: Environment, system: Actor) -> dict[str, Policy]:
    """One policy of each kind, named ``existing``."""
    starts = {"config": {"value_type": "integer", "value": 3}}
    return {
        kind: do_create_policy(production, kind, "existing", starts.get(kind, {}), system)
        for kind in KINDS
    }


def check_answer(response: Any, before: dict[str, Any], saved: bool) -> None:
    """A redirect once saved; else the form again, each error shown next to its field."""
    assert response.status_code in (200, 302, 400, 409, 422), response.status_code
    if response.status_code == 400:  # refused at the door (controlplane.security)
        assert re.match(rb'The field "[^"]+" holds a NUL character', response.content)
        assert stored_state() == before
        return
    if response.status_code == 302:
        assert saved
        return
    form: PolicyForm = response.context["form"]
    html = response.content.decode()
    if response.status_code == 422:
        assert form.errors, "a refused post names what is wrong"
        for field, messages in form.errors.items():
            assert field in form.fields, f"error not tied to a field: {field} {messages}"
            assert f'data-error-for="{field}"' in html
            for message in messages:
                assert escape(message) in html
    assert stored_state() == before


@pytest.mark.parametrize("kind", KINDS)
@PROPERTIES
@given(name=names, posted=st.data())
def test_create_form_answers_the_field_or_saves(
    client: Client,
    editor: User,
    existing: dict[str, Policy],
    kind: str,
    name: str,
    posted: st.DataObject,
) -> None:
    client.force_login(editor)
    fields = posted.draw(posted_fields(kind))
    before = stored_state()
    response = client.post(f"/e/production/{kind}/new/", {**fields, "name": name})
    # PostgreSQL refuses NUL even in a lookup; no such name can have been saved.
    created = (
        None
        if "\x00" in name
        else Policy.objects.filter(kind=kind, name=name, deleted=False).first()
    )
    event(f"status {response.status_code}")
    check_answer(response, before, saved=created is not None)
    if response.status_code == 302:
        assert created is not None and created.version == 1
        assert created.spec == validate_spec(kind, created.spec)


@pytest.mark.parametrize("kind", KINDS)
@PROPERTIES
@given(posted=st.data())
def test_edit_form_answers_the_field_or_saves(
    client: Client,
    editor: User,
    existing: dict[str, Policy],
    kind: str,
    posted: st.DataObject,
) -> None:
    client.force_login(editor)
    fields = posted.draw(posted_fields(kind))
    before = stored_state()
    version_before = Policy.objects.get(pk=existing[kind].pk).version
    response = client.post(f"/e/production/{kind}/existing/edit/", fields)
    policy = Policy.objects.get(pk=existing[kind].pk)
    event(f"status {response.status_code}")
    # Saving what is already stored is a success that records nothing.
    saved = policy.version == version_before + 1 or stored_state() == before
    check_answer(response, before, saved=saved)
    if response.status_code == 302:
        assert policy.spec == validate_spec(kind, policy.spec)
