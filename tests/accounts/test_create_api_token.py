"""manage.py create_api_token: a token for automation, its secret printed once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
import redis
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.utils import timezone

from controlplane.accounts.actors import Actor
from controlplane.accounts.management.commands.create_api_token import Command
from controlplane.accounts.models import ApiToken, hash_token
from controlplane.audit.models import AuditEntry
from controlplane.policies.actions import do_create_policy
from controlplane.policies.models import Environment
from controlplane.protocol.breaker_state import BreakerState

pytestmark = pytest.mark.django_db(transaction=True)


def create(*args: str) -> list[str]:
    """Run the command; return the lines it printed."""
    out = StringIO()
    call_command("create_api_token", *args, stdout=out)
    return out.getvalue().splitlines()


def test_the_secret_is_printed_last_and_stored_hashed() -> None:
    lines = create("--label", "deploy-bot", "--role", "editor", "--expires", "30d")

    secret = lines[-1]
    token = ApiToken.objects.get(label="deploy-bot")
    assert token.token_hash == hash_token(secret) and secret.startswith("rcp_")
    assert secret not in token.prefix + token.token_hash
    assert (token.role, token.created_by, token.status) == ("editor", None, "active")
    assert token.expires_at is not None
    assert abs(token.expires_at - (timezone.now() + timedelta(days=30))) < timedelta(minutes=1)
    assert lines[:-1] == [
        f"Created API token 'deploy-bot' (role editor, expires {token.expires_at.isoformat()})."
        " Its secret, shown only this once:"
    ]


def test_quiet_prints_the_secret_alone() -> None:
    out = StringIO()
    call_command("create_api_token", "--label", "ci", "--quiet", stdout=out)
    token = ApiToken.objects.get(label="ci")
    assert token.token_hash == hash_token(out.getvalue().removesuffix("\n"))
    assert out.getvalue().count("\n") == 1
    assert (token.role, token.expires_at) == ("viewer", None)  # the defaults


def test_the_audit_says_the_token_was_created_from_the_command_line() -> None:
    create("--label", "deploy-bot", "--role", "operator")
    entry = AuditEntry.objects.get(action="token.create")
    assert (entry.actor_name, entry.actor_user, entry.actor_token, entry.source_ip) == (
        "manage.py create_api_token",
        None,
        "",
        None,
    )
    assert (entry.object_kind, entry.object_name) == ("token", "deploy-bot")
    assert entry.changes == {
        "role": [None, "operator"],
        "expires_at": [None, None],
        "environments": [None, []],
    }
    assert ApiToken.objects.get().created_by_name == "manage.py create_api_token"


@pytest.mark.parametrize(
    ("expires", "expected"),
    [
        ("2099-01-31", datetime(2099, 1, 31, tzinfo=UTC)),
        ("2099-01-31T18:30:00", datetime(2099, 1, 31, 18, 30, tzinfo=UTC)),
        ("2099-01-31T18:30:00+02:00", datetime(2099, 1, 31, 16, 30, tzinfo=UTC)),
        ("12h", timedelta(hours=12)),
        ("1d12h", timedelta(days=1, hours=12)),
        (" 90d ", timedelta(days=90)),
    ],
)
def test_expires_takes_a_date_a_date_and_time_or_a_duration(
    expires: str, expected: datetime | timedelta
) -> None:
    before = timezone.now()
    create("--label", "bot", "--expires", expires)
    expires_at = ApiToken.objects.get().expires_at
    assert expires_at is not None
    if isinstance(expected, datetime):
        assert expires_at == expected
    else:
        assert before + expected <= expires_at <= timezone.now() + expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--label", ""], "--label: Give the token a name of 1 to 100 characters."),
        (["--label", " " * 3], "--label: Give the token a name"),
        (["--label", "x" * 101], "--label: Give the token a name"),
        (["--label", "nul\x00"], "--label: Text cannot contain NUL characters."),
        (["--label", "bot", "--expires", "2000-01-01"], "--expires: Must be in the future."),
        (["--label", "bot", "--expires", "0d"], "--expires: Must be in the future."),
        (["--label", "bot", "--expires", "30"], "--expires: Enter a date (2027-01-31)"),
        (["--label", "bot", "--expires", "soon"], "--expires: Enter a date"),
        (["--label", "bot", "--expires", "2099-02-31"], "--expires: Enter a date"),
        (["--label", "bot", "--expires=-1d"], "--expires: Enter a date"),
        (["--label", "bot", "--expires", "99999999999d"], "--expires: That is beyond any date."),
        (["--label", "bot", "--role", "root"], "argument --role: invalid choice: 'root'"),
        (["--role", "viewer"], "the following arguments are required: --label"),
        (["--label", "bot", "--environment", "nowhere"], "--environment: No environment named"),
    ],
)
def test_a_bad_value_creates_nothing_and_names_its_option(args: list[str], message: str) -> None:
    with pytest.raises(CommandError) as refused:
        create(*args)
    assert message in str(refused.value)
    assert not ApiToken.objects.exists()
    assert not AuditEntry.objects.exists()


def test_a_bad_value_exits_non_zero_from_the_command_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        Command().run_from_argv(["manage.py", "create_api_token", "--label", "x" * 101])
    assert exited.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "CommandError: Nothing was created. --label: Give the token" in captured.err
    assert not ApiToken.objects.exists()


def test_the_printed_secret_authenticates_against_the_api(
    client: Client, production: Environment, system: Actor, redis_client: redis.Redis
) -> None:
    do_create_policy(production, "breaker", "payments", {}, system)
    secret = create("--label", "runbook", "--role", "operator", "--expires", "1h")[-1]
    headers = {"Authorization": f"Bearer {secret}"}

    reset = client.post(
        "/api/v1/environments/production/policies/breaker/payments/reset",
        {"reason": "runbook step 3"},
        content_type="application/json",
        headers=headers,
    )

    assert reset.status_code == 200, reset.content
    shared = redis_client.hget(production.keys().breakers, "payments")
    assert BreakerState.decode(shared).state == "closed"
    entry = AuditEntry.objects.get(action="override.reset")
    assert (entry.actor_name, entry.actor_token) == ("token:runbook", "runbook")
    edit = client.patch(
        "/api/v1/environments/production/policies/breaker/payments",
        {"spec": {"minimum_calls": 5}},
        content_type="application/json",
        headers=headers,
    )
    assert edit.status_code == 403  # an operator's token, not an editor's


def test_environment_limits_the_token_to_the_environments_named(
    client: Client, production: Environment, system: Actor
) -> None:
    from controlplane.policies.actions import do_create_environment

    do_create_environment("staging", system)
    do_create_environment("qa", system)
    lines = create(
        "--label", "deployer", "--role", "viewer", "--environment", "staging", "--environment", "qa"
    )

    token = ApiToken.objects.get(label="deployer")
    assert sorted(e.name for e in token.environments.all()) == ["qa", "staging"]
    assert "(role viewer in qa, staging, expires never)" in lines[0]
    entry = AuditEntry.objects.get(action="token.create")
    assert entry.changes["environments"] == [None, ["qa", "staging"]]
    headers = {"Authorization": f"Bearer {lines[-1]}"}
    assert client.get("/api/v1/environments/staging/policies", headers=headers).status_code == 200
    refused = client.get("/api/v1/environments/production/policies", headers=headers)
    assert refused.status_code == 403
    assert "in production" in refused.json()["detail"]
