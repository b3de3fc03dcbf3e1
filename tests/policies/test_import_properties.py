"""Property-based: the import, given any text or a real export with fields mutated, applies
all of it or answers a clear error and changes nothing; never a server error."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils.html import escape
from hypothesis import event, example, given
from hypothesis import strategies as st

from controlplane.accounts.actors import Actor
from controlplane.policies.actions import do_create_policy
from controlplane.policies.config_as_code import dump, export_environment, parse, plan_import
from controlplane.policies.models import Environment
from controlplane.protocol.schema import SPECS, PolicyError
from tests.properties import PROPERTIES, field_values, json_loads_values, json_values, stored_state

pytestmark = pytest.mark.django_db(transaction=True)

IMPORT = "/e/production/import/"
# A YAML alias bomb: a few lines that stand for a thousand million strings.
LAUGHS = "\n".join(
    [
        "version: 1",
        "policies:",
        "  config:",
        "    bomb:",
        "      value_type: json",
        '      a0: &a0 ["lol"]',
    ]
    + [f"      a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    + ["      value: *a8"]
)


@pytest.fixture
def populated(production: Environment, system: Actor) -> Environment:
    do_create_policy(production, "breaker", "payments", {"open_for": 30}, system)
    do_create_policy(production, "rate_limit", "api", {"limit": 100, "period": "1m"}, system)
    do_create_policy(production, "cache", "prices", {"ttl": 5}, system)
    do_create_policy(production, "config", "banner", {"value": "hello"}, system)
    do_create_policy(production, "config", "db.password", {"value": "pw", "secret": True}, system)
    return production


@pytest.fixture
def exported(populated: Environment) -> dict[str, Any]:
    """The export the documents are made from, taken once: examples that apply change
    the environment, and the strategies must draw from the same document every time."""
    return export_environment(populated)


def _entries(document: Any) -> list[tuple[dict[Any, Any], Any]]:
    """Every (mapping, key) pair of the document, at any depth."""
    found: list[tuple[dict[Any, Any], Any]] = []
    pending = [document]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                found.append((item, key))
                pending.append(value)
    return found


def _value_for(key: Any) -> st.SearchStrategy[Any]:
    """A new value for ``key``: one the field might take if it is a policy field."""
    for spec in SPECS.values():
        if key in spec.by_name:
            return field_values(spec.by_name[key])
    return json_loads_values


def mutated(data: st.DataObject, document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with a few entries replaced, removed or added."""
    document = copy.deepcopy(document)
    for _ in range(data.draw(st.integers(min_value=1, max_value=3), label="mutations")):
        entries = _entries(document)
        if not entries:
            break
        parent, key = data.draw(st.sampled_from(entries), label="entry")
        operation = data.draw(st.sampled_from(["replace", "replace", "remove", "add"]))
        if operation == "replace":
            parent[key] = data.draw(_value_for(key), label=f"new {key!r}")
        elif operation == "remove":
            del parent[key]
        else:
            new_key = data.draw(st.text(max_size=8) | st.integers(), label="added key")
            parent[new_key] = data.draw(json_values, label="added value")
    return document


def as_text(data: st.DataObject, document: Any) -> str:
    """The document written as YAML or as JSON (which YAML also reads)."""
    if data.draw(st.booleans(), label="as json"):
        return json.dumps(document, default=str)
    return yaml.safe_dump(document, allow_unicode=True)


documents_as_text = st.text(max_size=200) | st.text(
    alphabet="version: 1\npolicies{}[]-:,'\"!&*#|>?%@` \tbreakerconfig", max_size=200
)


def check_view_answer(response: Any, before: dict[str, Any]) -> None:
    event(f"status {response.status_code}")
    assert response.status_code in (200, 302, 422), response.status_code
    if response.status_code == 302:
        return
    assert stored_state() == before
    if response.status_code == 422:
        errors = response.context["errors"]
        assert errors, "a refused import says what is wrong"
        html = response.content.decode()
        for field, messages in errors.items():
            assert f'data-error-for="{escape(field)}"' in html
            assert all(isinstance(m, str) and m for m in messages)


def check_applied(environment: Environment, text: str, prune: bool) -> None:
    """Once applied, the environment matches the document: importing it again changes nothing."""
    assert plan_import(environment, parse(text), prune=prune) == []


def post(client: Client, text: str, action: str, prune: bool) -> Any:
    return client.post(
        IMPORT, {"text": text, "action": action, **({"prune": "on"} if prune else {})}
    )


@PROPERTIES
@given(data=st.data())
def test_import_view_applies_a_mutated_export_whole_or_not_at_all(
    client: Client,
    editor: User,
    populated: Environment,
    exported: dict[str, Any],
    data: st.DataObject,
) -> None:
    client.force_login(editor)
    text = as_text(data, mutated(data, exported))
    action = data.draw(st.sampled_from(["apply", "preview"]), label="action")
    prune = data.draw(st.booleans(), label="prune")
    before = stored_state()
    response = post(client, text, action, prune)
    check_view_answer(response, before)
    if response.status_code == 302:
        check_applied(populated, text, prune)


@PROPERTIES
@given(text=documents_as_text)
@example(text=LAUGHS)
@example(text="version: 1\npolicies:\n  breaker:\n    payments: [1, 2]\n")
@example(text="version: 1\npolicies:\n  breaker:\n    payments: text\n")
@example(text="version: 1\npolicies:\n  breaker:\n    1: {}\n")
@example(text="version: 1\npolicies: {config: {x: {value_type: json, value: {at: 2025-01-01}}}}")
@example(text='{"version": 1, "policies": {"config": {"x": {"value_type": "json", "value": NaN}}}}')
def test_import_view_answers_any_text_clearly(
    client: Client, editor: User, populated: Environment, text: str
) -> None:
    client.force_login(editor)
    before = stored_state()
    response = post(client, text, "apply", prune=False)
    check_view_answer(response, before)
    if response.status_code == 302:
        check_applied(populated, text, prune=False)


@PROPERTIES
@given(data=st.data())
@example(data=None)
def test_import_command_applies_whole_or_fails_with_a_message(
    populated: Environment, exported: dict[str, Any], tmp_path: Path, data: st.DataObject | None
) -> None:
    if data is None:  # a document naming an environment that is not a name
        document: Any = {"version": 1, "environment": ["production"], "policies": {}}
        text, options = json.dumps(document), {}
    else:
        document = mutated(data, exported)
        text = as_text(data, document)
        options = data.draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "environment": st.just("production"),
                    "dry_run": st.booleans(),
                    "prune": st.booleans(),
                },
            ),
            label="options",
        )
    path = tmp_path / "policies.yaml"
    path.write_text(text)
    before = stored_state()
    try:
        call_command("import_policies", str(path), stdout=io.StringIO(), **options)
    except CommandError as exc:
        event("refused")
        assert str(exc)
        assert stored_state() == before
        return
    event("applied")
    if options.get("dry_run"):
        assert stored_state() == before
    else:
        check_applied(populated, text, bool(options.get("prune")))


def test_a_refused_import_reports_every_bad_policy_at_once(populated: Environment) -> None:
    document = export_environment(populated)
    document["policies"]["breaker"]["payments"]["open_for"] = "soon"
    document["policies"]["cache"]["prices"] = ["not", "a", "mapping"]
    with pytest.raises(PolicyError) as caught:
        plan_import(populated, parse(dump(document, "yaml")))
    assert set(caught.value.errors) == {
        "policies.breaker.payments.open_for",
        "policies.cache.prices",
    }


def test_a_json_export_with_an_emoji_imports_unchanged_through_the_page(
    client: Client, editor: User, populated: Environment, system: Actor
) -> None:
    do_create_policy(populated, "config", "greeting", {"value": "hello 😀"}, system)
    text = dump(export_environment(populated), "json")
    assert "\\ud83d\\ude00" in text  # how JSON writes it; YAML read it as two lone surrogates
    client.force_login(editor)
    response = post(client, text, "preview", prune=False)
    assert response.status_code == 200
    assert response.context["changes"] == []
