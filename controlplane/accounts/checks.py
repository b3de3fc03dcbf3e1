"""The secret key must be strong outside DEBUG: ``check``, ``migrate`` and ``runserver`` refuse.

``SECRET_KEY`` signs what Django signs (messages, password-reset links, session
hashes) and keys the fingerprints of secret config values. Django only warns
about a weak one (``check --deploy``); here it is an error, by Django's own
measure of weak.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks
from django.core.checks.security.base import (
    SECRET_KEY_INSECURE_PREFIX,
    SECRET_KEY_MIN_LENGTH,
    SECRET_KEY_MIN_UNIQUE_CHARACTERS,
)


def secret_key_weakness(key: str) -> str | None:
    """What makes ``key`` weak, or None."""
    if len(key) < SECRET_KEY_MIN_LENGTH:
        return f"is too short ({len(key)} characters; at least {SECRET_KEY_MIN_LENGTH})"
    if len(set(key)) < SECRET_KEY_MIN_UNIQUE_CHARACTERS:
        return (
            f"has too few distinct characters ({len(set(key))}; "
            f"at least {SECRET_KEY_MIN_UNIQUE_CHARACTERS})"
        )
    if key.startswith(SECRET_KEY_INSECURE_PREFIX):
        return f"starts with {SECRET_KEY_INSECURE_PREFIX!r}, Django's mark of a generated test key"
    return None


def check_secret_key(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    if settings.DEBUG:
        return []
    weakness = secret_key_weakness(settings.SECRET_KEY)
    if weakness is None:
        return []
    return [
        checks.Error(
            f"SECRET_KEY {weakness}: a guessable key lets anyone forge what it signs "
            "and try candidates against the fingerprints of secret values.",
            hint="Set SECRET_KEY (or SECRET_KEY_FILE) to a random value, e.g. "
            "python -c 'import secrets; print(secrets.token_urlsafe(50))'; "
            "or DEBUG=true for local development.",
            id="accounts.E001",
        )
    ]
