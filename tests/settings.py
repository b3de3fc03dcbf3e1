"""Settings for the test suite: the project's settings plus a test secret and fast hashing."""

from __future__ import annotations

import os

# Strong enough for the production checks (accounts.E001), which some tests run.
os.environ.setdefault("SECRET_KEY", "tests-only-secret-key-8d6c1f4e2b9a7305-QvXmTzKpLwRsNyHu")

from controlplane.settings import *  # noqa: E402, F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Tests start the reconciler themselves when they need it.
RECONCILER_ENABLED = False
INGEST_ENABLED = False
WEBHOOKS_ENABLED = False
ALERTS_ENABLED = False

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":  # noqa: F405
    # A file, not memory: browser tests serve the app from a Daphne process,
    # which must see the test database.
    DATABASES["default"]["TEST"] = {  # noqa: F405
        "NAME": str(VAR_DIR / f"test-db-{os.getpid()}.sqlite3")  # noqa: F405
    }

# Serve static files from their source folders, as under `make run`; no collectstatic.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True

# The test client and the browser tests speak plain HTTP.
SECURE_SSL_REDIRECT = False
SESSION_COOKIE_SECURE = False
CSRF_COOKIE_SECURE = False
