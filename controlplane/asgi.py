"""ASGI entry point: Django over HTTP, Channels over websockets, served by Daphne."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
# Build Django before importing anything that touches models.
django_application = get_asgi_application()

from django.core.exceptions import ImproperlyConfigured  # noqa: E402

from controlplane.accounts.checks import check_secret_key  # noqa: E402

# Daphne runs no system checks: refuse to serve with a weak key outside DEBUG.
for problem in check_secret_key():
    raise ImproperlyConfigured(f"{problem.msg} {problem.hint}")

import logging  # noqa: E402

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from controlplane.live import routing as live_routing  # noqa: E402
from controlplane.ops.proxy import TrustedProxies  # noqa: E402
from controlplane.redis_connection import get_redis  # noqa: E402
from controlplane.workers.runner import start_enabled_workers  # noqa: E402

logger = logging.getLogger("controlplane")
database = settings.DATABASES["default"]
logger.info(
    "Database: %s %s%s",
    database["ENGINE"].rsplit(".", 1)[-1],
    database["NAME"],
    "" if settings.DATABASE_URL_SET else " (embedded default; set DATABASE_URL for your own)",
)
logger.info(
    "Redis: %s%s",
    settings.REDIS_URL,
    " (embedded default; set REDIS_URL for your own)" if settings.EMBEDDED_REDIS else "",
)
if settings.EMBEDDED_REDIS:
    get_redis()  # start the embedded server before the first request needs it
# The one place the web processes start the background workers (the reconciler
# and the ingest, as RECONCILER_ENABLED and INGEST_ENABLED say): Daphne has no
# lifespan events, so this runs once, when it loads the application.
workers = start_enabled_workers()

application = TrustedProxies(
    ProtocolTypeRouter(
        {
            "http": django_application,
            "websocket": AllowedHostsOriginValidator(
                AuthMiddlewareStack(URLRouter(live_routing.websocket_urlpatterns))
            ),
        }
    ),
    settings.TRUSTED_PROXIES,
)
