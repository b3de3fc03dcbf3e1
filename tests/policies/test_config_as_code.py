from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.db import transaction
from django.test import Client

from controlplane.accounts.actors import Actor
from controlplane.audit.models import AuditEntry
from controlplane.policies.actions import do_create_policy, do_delete_policy, do_update_policy
from controlplane.policies.config_as_code import apply_import, dump, export_environment, parse
from controlplane.policies.models import Environment, Policy, PolicyVersion
from controlplane.protocol.schema import PolicyError

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def populated(production: Environment, system: Actor) -> Environment:
    do_create_policy(production, "breaker", "payments", {"open_for": 30}, system)
    do_create_policy(production, "rate_limit", "api", {"limit": 100}, system)
    do_create_policy(production, "config", "db.password", {"value": "pw", "secret": True}, system)
    return production


def _export(environment: Environment, tmp_path: Path, fmt: str = "yaml") -> Path:
    path = tmp_path / f"policies.{fmt}"
    call_command("export_policies", environment.name, "--format", fmt, "--output", str(path))
    return path


def _edit(path: Path, change: Any) -> None:
    document = yaml.safe_load(path.read_text())
    change(document)
    path.write_text(yaml.safe_dump(document))


def test_export_hides_secrets(populated: Environment, tmp_path: Path) -> None:
    document = yaml.safe_load(_export(populated, tmp_path).read_text())
    assert document["policies"]["config"]["db.password"]["value"] is None
    assert document["policies"]["rate_limit"]["api"]["limit"] == 100


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_importing_an_export_changes_nothing(
    populated: Environment, tmp_path: Path, capsys: Any, fmt: str
) -> None:
    path = _export(populated, tmp_path, fmt)
    versions = PolicyVersion.objects.count()
    call_command("import_policies", str(path))
    assert "Applied 0 change(s)" in capsys.readouterr().out
    assert PolicyVersion.objects.count() == versions
    assert Policy.objects.get(name="db.password").spec["value"] == "pw"


def test_dry_run_prints_the_diff_and_changes_nothing(
    populated: Environment, tmp_path: Path, capsys: Any
) -> None:
    path = _export(populated, tmp_path)
    _edit(path, lambda d: d["policies"]["rate_limit"]["api"].update(limit=250))
    call_command("import_policies", str(path), "--dry-run")
    out = capsys.readouterr().out
    assert "update rate_limit api\n  Limit: 100 requests -> 250 requests" in out
    assert "Would apply 1 change(s)" in out
    assert Policy.objects.get(name="api").spec["limit"] == 100


def test_import_applies_everything_under_one_correlation_id_and_is_idempotent(
    populated: Environment, tmp_path: Path, capsys: Any
) -> None:
    path = _export(populated, tmp_path)

    def change(document: dict[str, Any]) -> None:
        document["policies"]["rate_limit"]["api"]["limit"] = 250
        document["policies"]["cache"] = {"prices": {"ttl": 30}}
        del document["policies"]["breaker"]

    _edit(path, change)
    call_command("import_policies", str(path), "--prune", "--reason", "sync from git")
    entries = list(AuditEntry.objects.exclude(correlation_id=None))
    assert sorted((e.action, e.object_name) for e in entries) == [
        ("policy.create", "prices"),
        ("policy.delete", "payments"),
        ("policy.update", "api"),
    ]
    assert len({e.correlation_id for e in entries}) == 1
    assert {e.reason for e in entries} == {"sync from git"}
    assert Policy.objects.get(name="payments").deleted

    capsys.readouterr()
    call_command("import_policies", str(path), "--prune")
    assert "Applied 0 change(s)" in capsys.readouterr().out


def test_a_bad_field_anywhere_changes_nothing_and_names_the_path(
    populated: Environment, tmp_path: Path
) -> None:
    path = _export(populated, tmp_path)

    def change(document: dict[str, Any]) -> None:
        document["policies"]["rate_limit"]["api"]["limit"] = 250  # valid...
        document["policies"]["breaker"]["payments"]["open_for"] = "later"  # ...but this is not

    _edit(path, change)
    versions = PolicyVersion.objects.count()
    with pytest.raises(CommandError) as caught:
        call_command("import_policies", str(path))
    assert "policies.breaker.payments.open_for" in str(caught.value)
    assert PolicyVersion.objects.count() == versions
    assert Policy.objects.get(name="api").spec["limit"] == 100


def test_not_a_document_is_refused(populated: Environment, tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("version: 1\npolicies: [oops")
    with pytest.raises(CommandError, match="Not valid"):
        call_command("import_policies", str(path), "--environment", "production")


def test_import_page_previews_then_applies(
    client: Client, editor: User, populated: Environment
) -> None:
    client.force_login(editor)
    document = export_environment(populated)
    document["policies"]["rate_limit"]["api"]["limit"] = 7
    text = dump(document, "yaml")
    preview = client.post("/e/production/import/", {"text": text, "action": "preview"})
    assert 'data-change="update rate_limit:api"' in preview.content.decode()
    assert Policy.objects.get(name="api").spec["limit"] == 100
    applied = client.post("/e/production/import/", {"text": text, "action": "apply"})
    assert applied.status_code == 302
    assert Policy.objects.get(name="api").spec["limit"] == 7
    assert AuditEntry.objects.get(action="policy.update").actor_name == "erin"


def test_export_page_downloads_yaml(client: Client, viewer: User, populated: Environment) -> None:
    client.force_login(viewer)
    response = client.get("/e/production/export.yaml")
    assert response["Content-Disposition"] == 'attachment; filename="production-policies.yaml"'
    document = yaml.safe_load(response.content)
    assert document["environment"] == "production"
    assert document["policies"]["config"]["db.password"]["value"] is None


def _nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # Deep enough to exhaust a recursive parser: refused, not a RecursionError.
        (_nested(5000), "nests deeper than"),
        ("version: 1\npolicies: " + _nested(5000), "nests deeper than"),
        ('{"version": 1, "policies": ' + _nested(5000) + "}", "nests deeper than"),
        # A billion laughs: nine lines standing for 10^9 values, refused by the node budget.
        (
            "a: &a [1,1,1,1,1,1,1,1,1,1]\n"
            + "".join(
                f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n"
                for i in range(8)
            )
            + "version: 1\npolicies: {config: {x: {value_type: json, value: *i}}}\n",
            "has more than 100,000 members",
        ),
    ],
)
def test_import_over_the_limits_is_refused_naming_the_file(
    client: Client, editor: User, populated: Environment, text: str, message: str
) -> None:
    client.force_login(editor)
    versions = PolicyVersion.objects.count()
    for action in ("preview", "apply"):
        response = client.post("/e/production/import/", {"text": text, "action": action})
        assert response.status_code == 422
        assert message in response.content.decode()
    assert PolicyVersion.objects.count() == versions


def test_an_oversized_upload_is_refused_unread(
    client: Client, editor: User, populated: Environment
) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    from controlplane.protocol.limits import MAX_IMPORT_BYTES

    client.force_login(editor)
    upload = SimpleUploadedFile("big.yaml", b"#" * (MAX_IMPORT_BYTES + 1))
    response = client.post("/e/production/import/", {"file": upload, "action": "preview"})
    assert response.status_code == 422
    assert "The file is over 8 MiB." in response.content.decode()


def test_a_value_a_little_too_deep_is_refused_naming_its_path(
    populated: Environment, tmp_path: Path
) -> None:
    path = tmp_path / "deep.json"
    path.write_text(
        '{"version": 1, "policies": {"config": {"deep": {"value_type": "json", "value": '
        + _nested(40)
        + "}}}}"
    )
    with pytest.raises(CommandError) as caught:
        call_command("import_policies", str(path), "--environment", "production")
    assert "policies.config.deep.value" in str(caught.value)
    assert "nests deeper than 32 levels" in str(caught.value)
    assert not Policy.objects.filter(name="deep").exists()


def test_an_import_reason_over_its_bound_changes_nothing(
    client: Client, editor: User, populated: Environment
) -> None:
    client.force_login(editor)
    document = export_environment(populated)
    document["policies"]["rate_limit"]["api"]["limit"] = 7
    response = client.post(
        "/e/production/import/",
        {"text": dump(document, "yaml"), "action": "apply", "reason": "x" * 1001},
    )
    assert response.status_code == 422
    assert "Use at most 1000 characters" in response.content.decode()
    assert Policy.objects.get(name="api").spec["limit"] == 100


def test_a_policy_stored_over_the_limits_is_named_instead_of_failing_the_export(
    client: Client, viewer: User, populated: Environment
) -> None:
    # Saved before the limits applied: written past the validation, as old data is.
    Policy.objects.filter(name="api").update(spec={"limit": 100, "extra": json.loads(_nested(600))})
    client.force_login(viewer)
    for fmt in ("yaml", "json"):
        response = client.get(f"/e/production/export.{fmt}")
        assert response.status_code == 409
        assert "policies.rate_limit.api" in response.content.decode()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"version: 1\nenvironment: [production]\npolicies: {}\n", "Name the environment"),
        (b"version: 1\nenvironment: \xff\n", "Cannot read"),
    ],
)
def test_import_command_refuses_a_file_it_cannot_use(
    populated: Environment, tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "odd.yaml"
    path.write_bytes(content)
    with pytest.raises(CommandError, match=message):
        call_command("import_policies", str(path))


@pytest.mark.parametrize("action", ["create", "update", "delete", "import"])
def test_every_policy_action_is_its_own_durable_transaction(
    production: Environment, system: Actor, action: str
) -> None:
    policy = do_create_policy(production, "cache", "prices", {"ttl": 30}, system)
    document = {"policies": {"cache": {"prices": {"ttl": 60}}}}
    run = {
        "create": lambda: do_create_policy(production, "cache", "stock", {}, system),
        "update": lambda: do_update_policy(policy, {"ttl": 60}, system),
        "delete": lambda: do_delete_policy(policy, system),
        "import": lambda: apply_import(production, document, system),
    }[action]
    with pytest.raises(RuntimeError, match="durable"), transaction.atomic():
        run()
    policy.refresh_from_db()
    assert (policy.version, policy.deleted, policy.spec["ttl"]) == (1, False, 30)
    assert not Policy.objects.filter(name="stock").exists()


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_tags_and_team_round_trip_to_another_environment(
    populated: Environment, system: Actor, fmt: str
) -> None:
    do_update_policy(
        Policy.objects.get(name="payments"), {}, system, tags=["payments", "tier-1"], team="Pay"
    )
    document = export_environment(populated)
    assert document["policies"]["breaker"]["payments"]["tags"] == ["payments", "tier-1"]
    assert document["policies"]["breaker"]["payments"]["team"] == "Pay"
    assert "tags" not in document["policies"]["rate_limit"]["api"]  # written only when set

    del document["policies"]["config"]  # a secret is exported without its value
    staging = Environment.objects.create(name="staging")
    text = dump({**document, "environment": "staging"}, fmt)
    apply_import(staging, parse(text), system)
    copy = Policy.objects.get(environment=staging, name="payments")
    assert (copy.tags, copy.team) == (["payments", "tier-1"], "Pay")
    assert Policy.objects.get(environment=staging, name="api").tags == []
    changes, _ = apply_import(staging, parse(text), system)
    assert changes == []  # the same document again changes nothing


def test_import_changes_tags_without_a_new_version(populated: Environment, system: Actor) -> None:
    document = export_environment(populated)
    document["policies"]["rate_limit"]["api"]["tags"] = ["edge"]
    document["policies"]["rate_limit"]["api"]["team"] = "Platform"
    versions = PolicyVersion.objects.count()

    changes, _ = apply_import(populated, document, system)

    assert [(c.op, c.name, [d.field for d in c.diff]) for c in changes] == [
        ("update", "api", ["tags", "team"])
    ]
    assert PolicyVersion.objects.count() == versions
    api = Policy.objects.get(name="api")
    assert (api.tags, api.team) == (["edge"], "Platform")
    assert AuditEntry.objects.filter(action="policy.update", object_name="api").exists()


def test_bad_tags_in_a_document_change_nothing_and_name_the_path(
    populated: Environment, system: Actor
) -> None:
    document = export_environment(populated)
    document["policies"]["rate_limit"]["api"]["limit"] = 250
    document["policies"]["breaker"]["payments"]["tags"] = ["Not a tag!"]
    document["policies"]["breaker"]["payments"]["team"] = ["a list"]
    with pytest.raises(PolicyError) as caught:
        apply_import(populated, document, system)
    assert set(caught.value.errors) == {
        "policies.breaker.payments.tags",
        "policies.breaker.payments.team",
    }
    assert Policy.objects.get(name="api").spec["limit"] == 100
