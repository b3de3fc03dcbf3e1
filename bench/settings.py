"""Settings for benchmark runs: the project's, plus django-constance as a peer to compare."""

from __future__ import annotations

import os

os.environ.setdefault("SECRET_KEY", "bench-only-secret-key-5e0a9c3d71b2f864-JkTqWxZmRvNpLsYh")

from controlplane.settings import *  # noqa: E402, F403
from controlplane.settings import INSTALLED_APPS, REDIS_URL  # noqa: E402

INSTALLED_APPS = [*INSTALLED_APPS, "constance"]
CONSTANCE_BACKEND = "constance.backends.redisd.RedisBackend"
CONSTANCE_REDIS_CONNECTION = REDIS_URL
CONSTANCE_CONFIG = {"CHECKOUT_MAX_ITEMS": (10, "Most items one order may hold.")}
RECONCILER_ENABLED = False
