"""Our own generators for every HTML form: whatever an admin posts, no answer is a 5xx,
in DEBUG and in production settings. (The API has schemathesis: tests/api/.)

Each value is either what the form expects or something hostile: overlong text, deep
JSON, formulas, numbers beyond any database integer, names outside the rule.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlplane.accounts.actors import Actor
from controlplane.policies.actions import do_create_policy
from controlplane.policies.config_as_code import dump, export_environment
from controlplane.policies.forms import display_value
from controlplane.policies.models import Environment
from controlplane.policies.overrides import do_set_override
from controlplane.protocol.schema import KINDS, kind_spec

pytestmark = pytest.mark.django_db(transaction=True)

FUZZ = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Text a browser can send (UTF-8: no lone surrogates); NULs are refused at the door,
# and sent anyway.
text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
hostile = st.one_of(
    text,
    st.sampled_from(
        [
            "",
            " ",
            "0",
            "-1",
            "1e309",
            "nan",
            "-inf",
            "true",
            "1h30m",
            "9" * 30,
            "a{b}*",
            '=HYPERLINK("http://x")',
            '{"a": ',
            "null",
            "[1, 2]",
            '{"type": "object"}',
            "x\x00y",
        ]
    ),
    st.integers().map(str),
    st.floats().map(repr),
    st.integers(0, 3000).map(lambda n: "[" * n + "]" * n),
    st.tuples(st.sampled_from("a{=9-"), st.integers(90, 1200)).map(lambda t: t[0] * t[1]),
)
reasonable_reason = st.one_of(st.just("fuzzing"), hostile)


def valid_or_hostile(value: Any) -> st.SearchStrategy[str]:
    return st.one_of(st.just(display_value(value)), hostile)


@pytest.fixture(params=[False, True], ids=["production", "debug"])
def admin_client(
    request: pytest.FixtureRequest, settings: Any, client: Client, admin: User, system: Actor
) -> Client:
    settings.DEBUG = request.param
    client.raise_request_exception = False
    client.force_login(admin)
    return client


@pytest.fixture
def environment(production: Environment, system: Actor) -> Environment:
    for kind in KINDS:
        do_create_policy(production, kind, "fuzzed", {}, system)
    do_set_override(production, "breaker", "fuzzed", "forced_open", system, "fuzz")
    return production


def assert_no_5xx(client: Client, method: str, path: str, data: Any = None) -> None:
    response = getattr(client, method)(path, data) if data is not None else client.get(path)
    if response.status_code >= 500:
        raise AssertionError(f"{method.upper()} {path} {data!r} -> {response.status_code}")
    if hasattr(response, "streaming_content"):
        b"".join(response.streaming_content)  # a streamed export fails while streaming


def policy_form(kind: str, *, with_name: bool) -> st.SearchStrategy[dict[str, Any]]:
    fields = {field.name: valid_or_hostile(field.default) for field in kind_spec(kind).fields}
    required = {"action": st.sampled_from(["save", "preview", ""])}
    if with_name:
        fields["name"] = st.one_of(st.from_regex(r"\A[a-z][a-z0-9_.-]{0,20}\Z"), hostile)
    fields["reason"] = reasonable_reason
    fields["expected_version"] = st.one_of(st.just("1"), hostile)
    return st.fixed_dictionaries(required, optional=fields)


@pytest.mark.parametrize("kind", KINDS)
def test_policy_create_form(admin_client: Client, environment: Environment, kind: str) -> None:
    @FUZZ
    @given(policy_form(kind, with_name=True))
    def post(data: dict[str, Any]) -> None:
        assert_no_5xx(admin_client, "post", f"/e/production/{kind}/new/", data)

    post()


@pytest.mark.parametrize("kind", KINDS)
def test_policy_edit_form(admin_client: Client, environment: Environment, kind: str) -> None:
    @FUZZ
    @given(policy_form(kind, with_name=False))
    def post(data: dict[str, Any]) -> None:
        assert_no_5xx(admin_client, "post", f"/e/production/{kind}/fuzzed/edit/", data)

    post()


def test_policy_delete_restore_and_compare(admin_client: Client, environment: Environment) -> None:
    @FUZZ
    @given(reasonable_reason, hostile, hostile, st.integers(0, 2**70))
    def post(reason: str, first: str, second: str, version: int) -> None:
        base = "/e/production/config/fuzzed/"
        assert_no_5xx(admin_client, "get", f"{base}compare/?a={first}&b={second}")
        assert_no_5xx(
            admin_client, "post", f"{base}versions/{version}/restore/", {"reason": reason}
        )
        assert_no_5xx(admin_client, "post", f"{base}versions/1/restore/", {"reason": reason})
        assert_no_5xx(admin_client, "post", base + "delete/", {"reason": reason})

    post()


def test_environment_create_form(admin_client: Client, environment: Environment) -> None:
    @FUZZ
    @given(
        st.fixed_dictionaries(
            {},
            optional={
                "name": st.one_of(st.from_regex(r"\A[a-z][a-z0-9-]{0,12}\Z"), hostile),
                "description": hostile,
            },
        )
    )
    def post(data: dict[str, Any]) -> None:
        assert_no_5xx(admin_client, "post", "/environments/new/", data)

    post()


def test_import_form(admin_client: Client, environment: Environment) -> None:
    exported = dump(export_environment(environment), "yaml")

    @FUZZ
    @given(
        st.one_of(
            st.just(exported),
            hostile,
            st.builds(lambda head, tail: exported[:head] + tail, st.integers(0, 400), hostile),
        ),
        st.sampled_from(["preview", "apply"]),
        st.booleans(),
        st.booleans(),
        reasonable_reason,
    )
    def post(document: str, action: str, prune: bool, as_file: bool, reason: str) -> None:
        data: dict[str, Any] = {"action": action, "reason": reason}
        if prune:
            data["prune"] = "on"
        if as_file:
            data["file"] = SimpleUploadedFile("policies.yaml", document.encode())
        else:
            data["text"] = document
        assert_no_5xx(admin_client, "post", "/e/production/import/", data)

    post()


def test_override_form(admin_client: Client, environment: Environment) -> None:
    actions = ["trip", "force_closed", "disable", "reset", "block_all", "bypass", "purge", "lift"]

    @FUZZ
    @given(
        st.fixed_dictionaries(
            {
                "action": st.one_of(st.sampled_from(actions), hostile),
                "reason": reasonable_reason,
            },
            optional={
                "policy": st.one_of(
                    st.sampled_from([f"{kind}:fuzzed" for kind in KINDS]),
                    st.builds(lambda kind, name: f"{kind}:{name}", st.sampled_from(KINDS), hostile),
                    hostile,
                ),
                "kind": hostile,
                "name": hostile,
                "expires_in_minutes": st.one_of(st.just("10"), hostile),
                "next": st.one_of(st.just("/e/production/live/"), hostile),
            },
        )
    )
    def post(data: dict[str, Any]) -> None:
        assert_no_5xx(admin_client, "post", "/e/production/override/", data)

    post()


def test_audit_filters_and_exports(admin_client: Client, environment: Environment) -> None:
    names = ["q", "actor", "environment", "kind", "object", "action", "since", "until", "page"]

    @FUZZ
    @given(st.fixed_dictionaries({}, optional=dict.fromkeys(names, hostile)))
    def get(query: dict[str, Any]) -> None:
        for path in ("/audit/", "/audit/export.csv", "/audit/export.json"):
            response = admin_client.get(path, query)
            assert response.status_code < 500, (path, query)
            if hasattr(response, "streaming_content"):
                b"".join(response.streaming_content)

    get()


def test_token_form(admin_client: Client, environment: Environment) -> None:
    @FUZZ
    @given(
        st.fixed_dictionaries(
            {},
            optional={
                "label": st.one_of(st.just("deploy-bot"), hostile),
                "role": st.one_of(
                    st.sampled_from(["viewer", "operator", "editor", "admin"]), hostile
                ),
                "expires_in_days": st.one_of(st.just("90"), hostile),
            },
        )
    )
    def post(data: dict[str, Any]) -> None:
        assert_no_5xx(admin_client, "post", "/tokens/", data)

    post()
