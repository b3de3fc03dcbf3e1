"""Changes to API tokens; each one is audited."""

from __future__ import annotations

from datetime import datetime

from django.db import transaction
from django.utils import timezone

from controlplane.accounts.actors import Actor
from controlplane.accounts.models import TOKEN_PREFIX, ApiToken, hash_token
from controlplane.accounts.roles import Role
from controlplane.audit.record import record
from controlplane.protocol.schema import PolicyError


def do_create_token(
    label: str, role: Role | str, actor: Actor, expires_at: datetime | None = None
) -> tuple[ApiToken, str]:
    """Create a token; return it and its secret, which is never stored nor shown again."""
    errors: dict[str, list[str]] = {}
    label = label.strip()
    if not label or len(label) > 100:
        errors["label"] = ["Give the token a name of 1 to 100 characters."]
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
        record(
            actor,
            "token.create",
            kind="token",
            name=label,
            changes={
                "role": [None, str(role)],
                "expires_at": [None, expires_at.isoformat() if expires_at else None],
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


def authenticate_token(secret: str) -> ApiToken | None:
    """Return the usable token whose secret this is, recording its use."""
    if not secret.startswith(TOKEN_PREFIX):
        return None
    token = ApiToken.objects.filter(token_hash=hash_token(secret)).first()
    if token is None or not token.is_usable():
        return None
    now = timezone.now()
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token
