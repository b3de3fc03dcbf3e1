"""The shared breaker state: the JSON document of the breakers hash and the events channel.

Only the breaker scripts write it (``lua/breaker_common.lua``, ``write_state``):
clients when their breakers change state, the control plane when an operator
resets one. Clients and the control plane read it here, as untrusted input: a
malformed document raises ``ProtocolError`` (a ``ValueError``) naming what is
wrong. ``docs/protocol.md``, 9.2, is its specification.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Final

from controlplane.protocol.documents import ProtocolError
from controlplane.protocol.keys import PROTOCOL_VERSION

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"
FORCED_OPEN: Final = "forced_open"
FORCED_CLOSED: Final = "forced_closed"
DISABLED: Final = "disabled"
STATES: Final = (CLOSED, OPEN, HALF_OPEN, FORCED_OPEN, FORCED_CLOSED, DISABLED)
SHARED_STATES: Final = (CLOSED, OPEN, HALF_OPEN)  # the others are overrides, never shared


@dataclass(frozen=True)
class BreakerState:
    """A breaker state as stored in the breakers hash and sent on the events channel."""

    name: str
    state: str
    epoch: int
    since: float
    open_until: float | None
    instance: str = ""
    reason: str = ""
    failure_rate: float | None = None
    slow_call_rate: float | None = None

    @classmethod
    def decode(cls, raw: str | bytes) -> BreakerState:
        """Read a stored or published state; ``ProtocolError`` names what is wrong."""
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            raise ProtocolError(f"breaker state: not valid JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise ProtocolError("breaker state: expected a JSON object")
        if type(doc.get("schema")) is not int or doc["schema"] != PROTOCOL_VERSION:
            raise ProtocolError(f"breaker state: unsupported schema {doc.get('schema')!r}")
        name, state, epoch = doc.get("name"), doc.get("state"), doc.get("epoch")
        if not isinstance(name, str) or state not in SHARED_STATES:
            raise ProtocolError(f"breaker state: bad name or state ({name!r}, {state!r})")
        if isinstance(epoch, float) and epoch.is_integer():
            epoch = int(epoch)
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise ProtocolError(f"breaker state {name}: bad epoch {epoch!r}")
        since, open_until = _number(doc.get("since")), _number(doc.get("open_until"))
        if since is None or (state == OPEN and open_until is None):
            raise ProtocolError(f"breaker state {name}: bad since/open_until")
        return cls(
            name=name,
            state=state,
            epoch=epoch,
            since=since,
            open_until=open_until,
            instance=str(doc.get("instance", "")),
            reason=str(doc.get("reason", "")),
            failure_rate=_number(doc.get("failure_rate")),
            slow_call_rate=_number(doc.get("slow_call_rate")),
        )

    def effective(self, server_now: float) -> tuple[str, float]:
        """The state at ``server_now`` and, when open, the seconds it stays open."""
        if self.state == OPEN:
            assert self.open_until is not None
            remaining = self.open_until - server_now
            return (OPEN, remaining) if remaining > 0 else (HALF_OPEN, 0.0)
        return self.state, 0.0


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        return None
    return number if math.isfinite(number) else None
