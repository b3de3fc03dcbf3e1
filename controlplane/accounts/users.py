"""People and their roles, managed in the product's own pages: each change is one action.

Every ``do_*`` here runs in one durable transaction and writes its audit entry in
it; what leaves the database (the signal that closes websockets) leaves once the
transaction has committed. A user's role everywhere is their role group
(``roles.ensure_role_groups``); a role in one environment is a ``RoleGrant``.
Environments belong to the policies app, which imports this one: they are read
here through the app registry, never imported.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import partial
from importlib import import_module
from typing import Any

from django.apps import apps
from django.conf import settings
from django.contrib.auth import SESSION_KEY
from django.contrib.auth.models import Group, User
from django.contrib.auth.tokens import default_token_generator
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.urls import reverse
from django.utils import timezone
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from controlplane.accounts.actions import do_revoke_tokens_of
from controlplane.accounts.actors import Actor
from controlplane.accounts.models import RoleGrant
from controlplane.accounts.roles import ORDER, Role, group_name, role_of
from controlplane.accounts.signals import announce_deactivation
from controlplane.audit.record import record
from controlplane.protocol.schema import InvalidValue, PolicyError, check_text

logger = logging.getLogger(__name__)

# The paths beside /users/<username>/: a user named so could not open their page.
RESERVED_USERNAMES = frozenset({"new", "invite"})
MAX_REASON = 1000
EVERYWHERE = "role_everywhere"


def grant_field(environment: str) -> str:
    """The name of the role in ``environment``: form field, error key and audit field."""
    return f"role_in_{environment}"


def environment_names() -> list[str]:
    """Every environment's name, in order."""
    environment = apps.get_model("policies", "Environment")
    return list(environment._default_manager.order_by("name").values_list("name", flat=True))


def role_everywhere(user: User) -> Role | None:
    """The role ``user``'s role group gives everywhere (not counting superuser powers);
    reads prefetched groups where there are some."""
    names = {group.name for group in user.groups.all()}
    held = [role for role in ORDER if group_name(role) in names]
    return held[-1] if held else None


def grants_by_environment(user: User) -> dict[str, Role]:
    """The roles ``user`` was granted in single environments, by environment name."""
    return {
        grant.environment.name: Role(grant.role)
        for grant in RoleGrant.objects.filter(user=user).select_related("environment")
    }


def role_state(user: User) -> dict[str, str | None]:
    """What an audit entry shows of ``user``'s roles: the role everywhere and each grant."""
    state: dict[str, str | None] = {EVERYWHERE: _value(role_everywhere(user))}
    for environment, role in grants_by_environment(user).items():
        state[grant_field(environment)] = role.value
    return state


def _value(role: Role | None) -> str | None:
    return None if role is None else role.value


def _parse_role(value: str | Role | None, field: str, errors: dict[str, list[str]]) -> Role | None:
    """``value`` as a role (empty or "none": no role), or an error under ``field``."""
    if value is None or value in ("", "none"):
        return None
    try:
        return Role(value)
    except ValueError:
        errors[field] = [f"Choose none or one of: {', '.join(r.value for r in ORDER)}."]
        return None


def _parse_grants(
    grants: Mapping[str, str | Role | None], errors: dict[str, list[str]]
) -> dict[str, Role]:
    """The grants that give a role, checked against the environments that exist."""
    known = set(environment_names())
    parsed: dict[str, Role] = {}
    for environment, value in grants.items():
        field = grant_field(environment)
        if environment not in known:
            errors[field] = [f"There is no environment named {environment!r}."]
            continue
        role = _parse_role(value, field, errors)
        if role is not None:
            parsed[environment] = role
    return parsed


def _check_username(username: str, errors: dict[str, list[str]]) -> None:
    if not username or len(username) > 150:
        errors["username"] = ["Give a username of 1 to 150 characters."]
        return
    try:
        UnicodeUsernameValidator()(username)
    except ValidationError:
        errors["username"] = ["Use letters, digits and @ . + - _ only."]
        return
    if username.lower() in RESERVED_USERNAMES:
        errors["username"] = [f"{username!r} names a page of the product: choose another."]
    elif User.objects.filter(username__iexact=username).exists():
        errors["username"] = [f"A user named {username!r} already exists."]


def _check_email(email: str, errors: dict[str, list[str]]) -> None:
    if not email:
        return
    try:
        validate_email(email)
    except ValidationError:
        errors["email"] = ["Enter an email address such as name@example.com, or none."]


def _check_reason(reason: str, *, required: bool) -> str:
    reason = reason.strip()
    if required and not reason:
        raise PolicyError({"reason": ["Say why."]})
    if len(reason) > MAX_REASON:
        raise PolicyError({"reason": [f"Use at most {MAX_REASON} characters."]})
    try:
        return check_text(reason)
    except InvalidValue as exc:
        raise PolicyError({"reason": [str(exc)]}) from None


def admins_everywhere() -> QuerySet[User]:
    """Active users who hold the admin role everywhere: by the admin group, or superusers."""
    return User.objects.filter(
        Q(is_superuser=True) | Q(groups__name=group_name(Role.ADMIN)), is_active=True
    ).distinct()


def _lock_admins() -> None:
    """Serialize the actions that could remove the last admin: two admins demoting each
    other at once would otherwise both see the other one still there."""
    Group.objects.select_for_update().filter(name=group_name(Role.ADMIN)).first()


def _is_last_admin(user: User) -> bool:
    return role_of(user) == Role.ADMIN and not admins_everywhere().exclude(pk=user.pk).exists()


def _check_may_touch(user: User, actor: Actor, field: str) -> None:
    """Only a superuser changes a superuser's account (as in the Django admin)."""
    if user.is_superuser and not getattr(actor.user, "is_superuser", False):
        raise PolicyError({field: ["Only a superuser changes a superuser's account."]})


def _apply_roles(
    user: User, everywhere: Role | None, grants: Mapping[str, Role], actor: Actor
) -> None:
    """Make ``user``'s role group and grants exactly these (their other groups stay)."""
    role_groups = Group.objects.filter(name__in=[group_name(role) for role in ORDER])
    user.groups.remove(*role_groups)
    if everywhere is not None:
        user.groups.add(Group.objects.get(name=group_name(everywhere)))
    held = grants_by_environment(user)
    RoleGrant.objects.filter(user=user).exclude(environment__name__in=list(grants)).delete()
    environment = apps.get_model("policies", "Environment")
    ids = dict(environment._default_manager.filter(name__in=list(grants)).values_list("name", "pk"))
    for name, role in grants.items():
        if held.get(name) != role:
            RoleGrant.objects.update_or_create(
                user=user,
                environment_id=ids[name],
                defaults={"role": role.value, "granted_by_name": actor.name},
            )
    # The object may be a request's user: make it read its roles again.
    for cached in ("_controlplane_grants", "_perm_cache", "_group_perm_cache"):
        user.__dict__.pop(cached, None)


def _state_changes(
    before: Mapping[str, str | None], after: Mapping[str, str | None]
) -> dict[str, list[Any]]:
    return {
        field: [before.get(field), after.get(field)]
        for field in sorted(set(before) | set(after), key=lambda f: (f != EVERYWHERE, f))
        if before.get(field) != after.get(field)
    }


def invite_path(user: User) -> str:
    """The one-time path where ``user`` sets their password: it stops working once they
    have (the token hashes their password), or after ``PASSWORD_RESET_TIMEOUT``."""
    uid = urlsafe_base64_encode(force_bytes(user.pk))
    return reverse("user-invite", args=[uid, default_token_generator.make_token(user)])


def do_create_user(
    username: str,
    email: str,
    role_everywhere: str | Role | None,
    grants: Mapping[str, str | Role | None],
    actor: Actor,
) -> tuple[User, str]:
    """Create a user without a password; return them and the path of their invite link,
    where they choose one. ``grants`` maps environment names to roles (none: no grant)."""
    # As create_user will store it (NFKC): "ﬁ" and "fi" are one name.
    username, email = User.normalize_username(username.strip()), email.strip()
    errors: dict[str, list[str]] = {}
    _check_username(username, errors)
    _check_email(email, errors)
    everywhere = _parse_role(role_everywhere, EVERYWHERE, errors)
    parsed = _parse_grants(grants, errors)
    if errors:
        raise PolicyError(errors)
    try:
        with transaction.atomic(durable=True):
            user = User.objects.create_user(username, email=email)  # an unusable password
            _apply_roles(user, everywhere, parsed, actor)
            changes = {"email": [None, email], **_state_changes({}, role_state(user))}
            record(actor, "user.create", kind="user", name=username, changes=changes)
    except IntegrityError:  # created by someone else since the check
        raise PolicyError({"username": [f"A user named {username!r} already exists."]}) from None
    return user, invite_path(user)


def do_invite_again(user: User, actor: Actor) -> str:
    """A new invite link for ``user``, who lost theirs; refused once they have chosen a
    password (an admin must not be able to take over an account through it)."""
    if user.has_usable_password():
        raise PolicyError({"password": [f"{user.get_username()} has chosen a password already."]})
    if not user.is_active:
        raise PolicyError({"is_active": [f"{user.get_username()} is deactivated."]})
    with transaction.atomic(durable=True):
        record(actor, "user.invite", kind="user", name=user.get_username())
    return invite_path(user)


def email_invite(user: User, link: str) -> tuple[bool, str]:
    """Email ``link`` (a full URL) to ``user`` where email is set up (``EMAIL_HOST``);
    return whether it went, and what went wrong for the admin to read (they have the link)."""
    if not settings.EMAIL_HOST or not user.email:
        return False, ""
    try:
        send_mail(
            "Your account on the resilience control plane",
            f"Hello {user.get_username()},\n\nAn account was made for you. Choose your "
            f"password here (the link works once):\n\n{link}\n",
            None,
            [user.email],
            fail_silently=False,
        )
    except Exception as exc:  # SMTP and socket errors alike: the user exists already
        logger.warning("Could not email the invite of %s: %s", user.get_username(), exc)
        return False, f"Could not email the link to {user.email} ({exc}): send it yourself."
    return True, ""


def do_set_roles(
    user: User,
    role_everywhere: str | Role | None,
    grants: Mapping[str, str | Role | None],
    actor: Actor,
    reason: str = "",
) -> User:
    """Give ``user`` exactly this role everywhere (None: none) and these roles in single
    environments (the environments left out lose their grant). Audited as ``user.roles``
    with each role that changed, before and after; refused if it would leave no admin."""
    errors: dict[str, list[str]] = {}
    everywhere = _parse_role(role_everywhere, EVERYWHERE, errors)
    parsed = _parse_grants(grants, errors)
    reason = _check_reason(reason, required=False)
    if errors:
        raise PolicyError(errors)
    _check_may_touch(user, actor, EVERYWHERE)
    with transaction.atomic(durable=True):
        _lock_admins()
        if everywhere != Role.ADMIN and not user.is_superuser and _is_last_admin(user):
            raise PolicyError(
                {EVERYWHERE: [f"{user.get_username()} is the last admin: make another first."]}
            )
        before = role_state(user)
        _apply_roles(user, everywhere, parsed, actor)
        changes = _state_changes(before, role_state(user))
        if changes:
            record(
                actor,
                "user.roles",
                kind="user",
                name=user.get_username(),
                reason=reason,
                changes=changes,
            )
    return user


def end_sessions_of(user_id: int) -> int:
    """Delete the stored sessions of user ``user_id``; return how many.

    Only stores kept in the database (``db``, ``cached_db``) can be searched; with
    the others (signed cookies, cache) the session lives on, but the user it names
    is inactive, and Django's ``ModelBackend`` turns every such request anonymous.
    A control plane has few sessions: reading each one is cheap enough.
    """
    store = import_module(settings.SESSION_ENGINE).SessionStore
    if not hasattr(store, "get_model_class"):
        return 0
    ended = 0
    for session in store.get_model_class().objects.filter(expire_date__gt=timezone.now()):
        if session.get_decoded().get(SESSION_KEY) == str(user_id):
            store().delete(session.session_key)
            ended += 1
    return ended


def do_deactivate_user(user: User, actor: Actor, reason: str) -> User:
    """Deactivate ``user``: they cannot log in, their API tokens are revoked, their
    sessions end and their open websockets close. Refused for oneself and for the
    last admin (``is_active``)."""
    reason = _check_reason(reason, required=True)
    _check_may_touch(user, actor, "is_active")
    if actor.user is not None and actor.user.pk == user.pk:
        raise PolicyError({"is_active": ["You cannot deactivate yourself."]})
    with transaction.atomic(durable=True):
        _lock_admins()
        locked = User.objects.select_for_update().get(pk=user.pk)
        if not locked.is_active:
            raise PolicyError({"is_active": [f"{locked.get_username()} is inactive already."]})
        if _is_last_admin(locked):
            raise PolicyError(
                {"is_active": [f"{locked.get_username()} is the last admin: make another first."]}
            )
        locked.is_active = False
        locked.save(update_fields=["is_active"])
        record(
            actor,
            "user.deactivate",
            kind="user",
            name=locked.get_username(),
            reason=reason,
            changes={"is_active": [True, False]},
        )
        do_revoke_tokens_of(locked, actor, f"{locked.get_username()} was deactivated: {reason}")
        end_sessions_of(locked.pk)
        transaction.on_commit(partial(announce_deactivation, locked.pk))
    user.is_active = False
    return locked


def do_reactivate_user(user: User, actor: Actor, reason: str = "") -> User:
    """Let ``user`` log in again; the tokens revoked when they left stay revoked."""
    reason = _check_reason(reason, required=False)
    _check_may_touch(user, actor, "is_active")
    with transaction.atomic(durable=True):
        locked = User.objects.select_for_update().get(pk=user.pk)
        if locked.is_active:
            raise PolicyError({"is_active": [f"{locked.get_username()} is active already."]})
        locked.is_active = True
        locked.save(update_fields=["is_active"])
        record(
            actor,
            "user.reactivate",
            kind="user",
            name=locked.get_username(),
            reason=reason,
            changes={"is_active": [False, True]},
        )
    user.is_active = True
    return locked
