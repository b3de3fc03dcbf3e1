"""The only exceptions the client library raises into its caller's code."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from controlplane.client.limiter import Decision


class ControlPlaneError(Exception):
    """Base class of the exceptions the client library raises on purpose."""


class CircuitOpenError(ControlPlaneError):
    """The breaker rejected the call: it is open, forced open, or out of half-open probes."""

    def __init__(self, name: str, state: str, retry_after: float | None = None) -> None:
        self.name = name
        self.state = state
        self.retry_after = retry_after
        hint = f"; retry in {retry_after:.1f}s" if retry_after is not None else ""
        super().__init__(f"circuit {name!r} is {state}{hint}")


class RateLimitExceeded(ControlPlaneError):
    """The rate limiter refused the request; ``decision`` has the headers' values."""

    def __init__(self, name: str, decision: Decision) -> None:
        self.name = name
        self.decision = decision
        self.retry_after = decision.retry_after
        super().__init__(f"rate limit {name!r} exceeded; retry in {decision.retry_after:.2f}s")
