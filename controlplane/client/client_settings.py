"""What ``Client()`` uses when an argument is not given: the process environment, then
the program's name (the service only). There is no default environment and no default
Redis: a service that guessed either would run on code defaults, unseen by the fleet.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Final

logger = logging.getLogger("controlplane.client")

ENVIRONMENT_VARIABLE: Final = "CONTROLPLANE_ENVIRONMENT"
REDIS_URL_VARIABLE: Final = "CONTROLPLANE_REDIS_URL"
SERVICE_VARIABLE: Final = "CONTROLPLANE_SERVICE"

# Programs that start other people's code: their name says nothing about the service.
LAUNCHERS: Final = frozenset(
    {
        "celery",
        "daphne",
        "granian",
        "gunicorn",
        "hypercorn",
        "ipython",
        "manage",
        "python",
        "rq",
        "uvicorn",
        "uwsgi",
        "waitress-serve",
    }
)

_launcher_logged = False


def required(value: object, parameter: str, variable: str) -> str:
    """``value``, else the environment variable ``variable``; a ``ValueError`` naming
    both when neither is set (or either is blank)."""
    if value is None:
        from_environment = os.environ.get(variable)
        if from_environment is None:
            raise ValueError(f"{parameter}: give Client({parameter}=...) or set {variable}")
        if not from_environment.strip():
            raise ValueError(f"{parameter}: {variable} is set but empty")
        return from_environment.strip()
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{parameter}: give a non-empty string, not {value!r}")
    return value.strip()


def service_name(service: object) -> str:
    """The explicit name, else ``CONTROLPLANE_SERVICE``, else the program's name."""
    if service is not None and not isinstance(service, str):
        raise ValueError(f"service: give a string, not {service!r}")
    if service:
        return service
    from_environment = os.environ.get(SERVICE_VARIABLE, "").strip()
    if from_environment:
        return from_environment
    name = program_name()
    global _launcher_logged
    if name in LAUNCHERS and not _launcher_logged:
        _launcher_logged = True
        logger.warning(
            "Reporting as service %r, the name of the program that launched this one; "
            "give Client(service=...) or set %s to name the service",
            name,
            SERVICE_VARIABLE,
        )
    return name


def program_name() -> str:
    """``myapp.jobs`` for ``python -m myapp.jobs``; ``worker`` for ``worker.py``, ``bin/worker``."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    module = getattr(spec, "name", None)
    if isinstance(module, str) and module:  # python -m package.module
        return module.removesuffix(".__main__")
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] not in ("", "-c", "-") else ""
    name = os.path.basename(argv0)
    for suffix in (".py", ".pyz", ".exe"):
        name = name.removesuffix(suffix)
    return name or "python"
