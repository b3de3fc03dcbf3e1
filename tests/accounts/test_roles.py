"""Grants: the role held per environment, what needs it everywhere, and what pages offer."""

from __future__ import annotations

import pytest

from controlplane.accounts.roles import Grants, Role, abilities, abilities_in

# A viewer everywhere who is an editor in staging.
STELLA = Grants(Role.VIEWER, {"staging": Role.EDITOR})
# An admin everywhere acting through a token limited to staging.
SCOPED_ADMIN = Grants(Role.ADMIN, {}, frozenset({"staging"}))


def test_pages_of_an_environment_offer_what_the_role_there_allows() -> None:
    assert (
        abilities_in(STELLA, "staging")["edit"] and not abilities_in(STELLA, "production")["edit"]
    )
    assert abilities_in(STELLA, "production")["view"]
    assert not abilities_in(SCOPED_ADMIN, "production")["view"]


def test_navigation_offers_the_highest_role_but_administering_needs_admin_everywhere() -> None:
    assert abilities(STELLA)["edit"] and not abilities(STELLA)["administer"]
    assert abilities(Grants(Role.VIEWER, {"staging": Role.ADMIN}))["administer"] is False
    assert abilities(Grants(Role.ADMIN))["administer"]
    assert not abilities(SCOPED_ADMIN)["administer"]  # a scope is not everywhere


@pytest.mark.parametrize(
    ("grants", "everywhere"),
    [
        (STELLA, Role.VIEWER),
        (SCOPED_ADMIN, None),
        (Grants(Role.ADMIN, cap=Role.OPERATOR), Role.OPERATOR),
        (Grants(None, {"staging": Role.ADMIN}), None),
    ],
)
def test_held_everywhere_is_capped_and_none_under_a_scope(
    grants: Grants, everywhere: Role | None
) -> None:
    assert grants.held_everywhere() == everywhere


def test_audit_entries_follow_the_environment_and_those_of_none_need_admin_everywhere() -> None:
    sam = Grants(None, {"staging": Role.VIEWER})
    assert sam.reads_audit_of(None) and sam.reads_audit_of("staging")
    assert not sam.reads_audit_of("production") and not sam.reads_audit_of("")
    assert STELLA.reads_audit_of("deleted-long-ago") and not STELLA.reads_audit_of("")
    assert Grants(Role.ADMIN).reads_audit_of("")
    assert not Grants().reads_audit_of(None)


def test_summary_names_the_grants_above_the_role_everywhere() -> None:
    assert STELLA.summary() == "viewer, editor in staging"
    assert Grants(Role.EDITOR, {"staging": Role.VIEWER}).summary() == "editor"
    assert Grants(None, {"qa": Role.OPERATOR}).summary() == "operator in qa"


@pytest.mark.django_db
def test_migrate_creates_or_repairs_the_role_groups_with_exactly_their_permissions() -> None:
    from django.contrib.auth.models import Group, Permission
    from django.core.management.sql import emit_post_migrate_signal

    from controlplane.accounts.roles import group_name, role_permissions

    def held(role: Role) -> set[str]:
        group = Group.objects.get(name=group_name(role))
        return {
            f"{p.content_type.app_label}.{p.codename}"
            for p in group.permissions.select_related("content_type")
        }

    Group.objects.filter(name=group_name(Role.VIEWER)).delete()
    editor = Group.objects.get(name=group_name(Role.EDITOR))
    editor.permissions.add(Permission.objects.get(codename="delete_group"))
    emit_post_migrate_signal(verbosity=0, interactive=False, db="default")
    for role in (Role.VIEWER, Role.OPERATOR, Role.EDITOR, Role.ADMIN):
        assert held(role) == set(role_permissions(role)), role
