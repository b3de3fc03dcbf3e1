"""Changes to API tokens; each one is audited."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from controlplane.accounts.actors import Actor
from controlplane.accounts.models import TOKEN_PREFIX, ApiToken, environment_ids, hash_token
from controlplane.accounts.roles import Role
from controlplane.audit.record import record
from controlplane.protocol.schema import InvalidValue, PolicyError, check_text


def do_create_token(
    label: str,
    role: Role | str,
    actor: Actor,
    expires_at: datetime | None = None,
    environments: Iterable[str] = (),
) -> tuple[ApiToken, str]:
    """Create a token; return it and its secret, which is never stored nor shown again.

    ``environments`` names those the token may act in; none: every environment.
    """
    errors: dict[str, list[str]] = {}
    names = sorted(set(environments))
    scope = environment_ids(names)
    missing = sorted(set(names) - set(scope))
    if missing:
        errors["environments"] = [f"No environment named {', '.join(missing)}."]
    label = label.strip()
    if not label or len(label) > 100:
        errors["label"] = ["Give the token a name of 1 to 100 characters."]
    else:
        try:
            check_text(label)
        except InvalidValue as exc:
            errors["label"] = [str(exc)]
    if role not in {r.value for r in Role}:
        errors["role"] = [f"Choose one of: {', '.join(r.value for r in Role)}."]
    if expires_at is not None and expires_at <= timezone.now():
        errors["expires_at"] = ["Must be in the future."]
    if errors:
        raise PolicyError(errors)
    secret = ApiToken.generate()
    with transaction.atomic():
        token = ApiToken.objects.create(
            label=label,
            role=str(role),
            prefix=secret[: len(TOKEN_PREFIX) + 6],
            token_hash=hash_token(secret),
            created_by=actor.user,  # type: ignore[misc]
            created_by_name=actor.name,
            expires_at=expires_at,
        )
        token.environments.set(scope.values())
        record(
            actor,
            "token.create",
            kind="token",
            name=label,
            changes={
                "role": [None, str(role)],
                "expires_at": [None, expires_at.isoformat() if expires_at else None],
                "environments": [None, names],  # []: every environment
            },
        )
    return token, secret


def do_revoke_token(token: ApiToken, actor: Actor, reason: str = "") -> ApiToken:
    with transaction.atomic():
        locked = ApiToken.objects.select_for_update().get(pk=token.pk)
        if locked.revoked_at is None:
            locked.revoked_at = timezone.now()
            locked.save(update_fields=["revoked_at"])
            record(
                actor,
                "token.revoke",
                kind="token",
                name=locked.label,
                reason=reason,
                changes={"revoked": [False, True]},
            )
    return locked


def do_revoke_tokens_of(user: AbstractBaseUser, actor: Actor, reason: str) -> int:
    """Revoke every token ``user`` made that is not revoked yet; return how many."""
    revoked = 0
    with transaction.atomic():
        for token in ApiToken.objects.filter(created_by_id=user.pk, revoked_at__isnull=True):
            do_revoke_token(token, actor, reason)
            revoked += 1
    return revoked


def revoke_tokens_of_deleted_user(sender: Any, instance: AbstractBaseUser, **kwargs: Any) -> None:
    """``pre_delete`` of users: their tokens would otherwise lose their owner and act alone."""
    do_revoke_tokens_of(
        instance, Actor.system("accounts"), f"Its creator {instance.get_username()} was deleted."
    )


def authenticate_token(secret: str) -> ApiToken | None:
    """Return the usable token whose secret this is, recording its use.

    A token whose creator is inactive or holds no role is not usable.
    """
    if not secret.startswith(TOKEN_PREFIX):
        return None
    token = (
        ApiToken.objects.select_related("created_by").filter(token_hash=hash_token(secret)).first()
    )
    if token is None or not token.is_usable() or token.acting_role() is None:
        return None
    now = timezone.now()
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token
