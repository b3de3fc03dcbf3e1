from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client

from controlplane.accounts.actors import Actor
from controlplane.audit.models import AuditEntry
from controlplane.policies.actions import do_create_policy
from controlplane.policies.config_as_code import dump, export_environment
from controlplane.policies.models import Environment, Policy, PolicyVersion

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
    assert "update rate_limit api\n  Limit: 100 -> 250" in out
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
