"""The client library: enforce the control plane's policies inside a service.

Importable with only ``redis`` installed (``prometheus-client`` optional): it
never imports Django. See ``docs/client.md``.
"""

from __future__ import annotations

from controlplane.client.cache import CachedFunction
from controlplane.client.client import Client
from controlplane.client.decorators import cached, configure, rate_limited, with_circuit_breaker
from controlplane.client.errors import CircuitOpenError, ControlPlaneError, RateLimitExceeded

__all__ = [
    "CachedFunction",
    "CircuitOpenError",
    "Client",
    "ControlPlaneError",
    "RateLimitExceeded",
    "cached",
    "configure",
    "rate_limited",
    "with_circuit_breaker",
]
