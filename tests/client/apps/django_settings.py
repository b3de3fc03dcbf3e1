"""A tiny Django project served by a real gunicorn in tests/client/test_servers.py.

Its client is created and configured here, when the settings load (in the
gunicorn master with --preload), and started in each worker by the gunicorn
hooks of controlplane.client.gunicorn: the documented recipe.
"""

from __future__ import annotations

import os

from controlplane.client import Client, configure

SECRET_KEY = "test-servers-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS: list[str] = ["controlplane.client.django_app"]
DATABASES: dict[str, object] = {}
ROOT_URLCONF = "tests.client.apps.django_wsgi"
MIDDLEWARE = ["controlplane.client.django.RateLimitMiddleware"]
USE_TZ = True
CONTROLPLANE_RATE_LIMITS = {"/api/": "api", "POST /login/": "login"}
CONTROLPLANE_RATE_LIMIT_DEFAULTS = {"login": {"limit": 3, "period": 3600, "key": "global"}}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}

CONTROLPLANE_CLIENT = configure(
    Client(
        os.environ["CP_REDIS_URL"],
        environment=os.environ.get("CP_ENVIRONMENT", "production"),
        service="shop",
        key_prefix=os.environ["CP_KEY_PREFIX"],
        heartbeat_interval=float(os.environ.get("CP_HEARTBEAT", "5")),
        start_timeout=5.0,
    )
)
