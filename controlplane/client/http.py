"""What every HTTP integration shares, written once and free of any framework.

The Django middleware (``controlplane.client.django``) and the ASGI middleware
(``controlplane.client.asgi``) both use these: which limiters apply to a request
(:class:`Rules`), the subject a policy's ``key`` gives a request
(:func:`subject_for`, :func:`forwarded_client`), and the response headers
(:func:`rate_limit_headers`, :func:`retry_after`).

Headers follow draft-ietf-httpapi-ratelimit-headers-12: ``RateLimit-Policy``
lists each applied limiter's policy (``"api";q=100;w=60``: its limit and period)
and ``RateLimit`` its current state (``"api";r=37;t=12``: requests remaining and
seconds until the quota is whole again). The older ``RateLimit-Limit``,
``RateLimit-Remaining`` and ``RateLimit-Reset`` fields stay for older clients,
from the most restrictive limiter; ``RateLimit-Limit`` is the policy's limit.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from controlplane.client.limiter import GLOBAL_SUBJECT, Decision
from controlplane.client.metrics import ClientMetrics
from controlplane.protocol.schema import RATE_LIMIT

if TYPE_CHECKING:
    from controlplane.client.client import Client
    from controlplane.client.errors import RateLimitExceeded
    from controlplane.client.limiter import RateLimiter

logger = logging.getLogger("controlplane.client")

RATE_LIMITED_BODY = b"Too Many Requests\n"
CIRCUIT_OPEN_BODY = b"Service Unavailable\n"
TEXT_PLAIN = "text/plain; charset=utf-8"
_METHOD = re.compile(r"^[A-Z]+$")


class RuleError(ValueError):
    """A rate-limit rule that cannot be understood; the message names the entry."""


# Rules


@dataclass(frozen=True, slots=True)
class Rule:
    """Limiters ``names`` apply to requests whose path starts with ``prefix``.

    ``methods`` restricts the rule to those HTTP methods (None: every method).
    """

    prefix: str
    methods: frozenset[str] | None
    names: tuple[str, ...]

    def matches(self, method: str, path: str) -> bool:
        return path.startswith(self.prefix) and (self.methods is None or method in self.methods)


class Rules:
    """Which limiters apply to a request, from a setting of one of these forms.

    * a limiter name, or a list of them: applied to every request;
    * a mapping of ``"[METHODS ]PREFIX"`` to a name or a list of names: applied
      to requests whose path starts with ``PREFIX`` (``""`` matches everything)
      and, when ``METHODS`` is given (``"POST"``, ``"POST,PUT"``), whose method
      is one of them::

          {"/api/": ["api"], "POST /login/": "login", "": "everything"}

    Every matching rule applies; each limiter at most once, in settings order.
    """

    def __init__(self, value: Any, setting: str = "rules") -> None:
        self.setting = setting
        self.rules: tuple[Rule, ...] = tuple(self._parse(value))

    def _parse(self, value: Any) -> Iterable[Rule]:
        if value is None:
            return []
        if isinstance(value, Mapping):
            return [self._rule(key, names) for key, names in value.items()]
        return [Rule("", None, self._names(value, "the list"))]

    def _rule(self, key: Any, names: Any) -> Rule:
        if not isinstance(key, str):
            raise RuleError(f"{self.setting}: the key {key!r} is not a string")
        parts = key.split()
        if len(parts) > 2:
            raise RuleError(
                f"{self.setting}: the key {key!r} is not of the form '[METHODS ]PREFIX' "
                "(for example 'POST /login/' or '/api/')"
            )
        methods: frozenset[str] | None = None
        prefix = parts[-1] if parts else ""
        if len(parts) == 2:
            methods = frozenset(method.strip() for method in parts[0].split(","))
            bad = sorted(method for method in methods if not _METHOD.match(method))
            if bad:
                raise RuleError(
                    f"{self.setting}: the key {key!r} names {', '.join(map(repr, bad))}, "
                    "not an HTTP method in capitals (GET, POST, ...)"
                )
        elif parts and _METHOD.match(prefix):
            methods, prefix = frozenset({prefix}), ""
        if prefix and not prefix.startswith("/"):
            raise RuleError(
                f"{self.setting}: the key {key!r} has the path prefix {prefix!r}, "
                "which does not start with '/'"
            )
        return Rule(prefix, methods, self._names(names, f"the key {key!r}"))

    def _names(self, value: Any, where: str) -> tuple[str, ...]:
        names = (value,) if isinstance(value, str) else value
        if not isinstance(names, list | tuple) or not all(
            isinstance(name, str) and name for name in names
        ):
            raise RuleError(
                f"{self.setting}: {where} gives {value!r}; give a limiter name, or a list of them"
            )
        return tuple(names)

    def names_for(self, method: str, path: str) -> list[str]:
        """The limiter names that apply to a request, each once, in settings order."""
        names: dict[str, None] = {}
        for rule in self.rules:
            if rule.matches(method, path):
                names.update(dict.fromkeys(rule.names))
        return list(names)

    def all_names(self) -> list[str]:
        names: dict[str, None] = {}
        for rule in self.rules:
            names.update(dict.fromkeys(rule.names))
        return list(names)


# Subjects


def forwarded_client(forwarded_for: str, trusted: int) -> str | None:
    """The client address in an ``X-Forwarded-For`` value written by ``trusted`` proxies.

    Each proxy appends the address it received from, so only the last ``trusted``
    entries are theirs; anything left of them came from the client and may be forged.
    An entry that is not an IP address (a proxy misconfigured, or a client's claim
    where fewer proxies than trusted wrote the header) gives None: the caller falls
    back to the connection's own peer address rather than key limits or the audit
    log on arbitrary text.
    """
    if trusted <= 0:
        return None
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    if not hops:
        return None
    hop = hops[-min(trusted, len(hops))]
    try:
        return str(ipaddress.ip_address(hop))
    except ValueError:
        return None


def subject_for(
    key: str, *, ip: str, user: Any = None, endpoint: str = "", custom: Any = None
) -> str:
    """The subject of a request under a policy's ``key``.

    ``user`` is the authenticated user's identifier (None when anonymous),
    ``endpoint`` the route or path, ``custom`` the registered key function's
    value already prefixed with its name (None when it gave nothing). Whatever
    is missing falls back to the client address.
    """
    if key == "global":
        return GLOBAL_SUBJECT
    if key == "user" and user is not None:
        return f"user:{user}"
    if key == "endpoint" and endpoint:
        return f"endpoint:{endpoint}"
    if key == "custom" and custom is not None:
        return str(custom)
    return f"ip:{ip}"


# Checks and headers


@dataclass(frozen=True, slots=True)
class Check:
    """One limiter's decision on a request, with the policy the headers describe."""

    name: str
    limit: int
    period: float
    decision: Decision

    @classmethod
    def of(cls, limiter: RateLimiter, decision: Decision) -> Check:
        settings = limiter.settings
        return cls(limiter.name, settings.limit, settings.period, decision)


def exceeded_check(client: Client | None, exception: RateLimitExceeded) -> Check:
    """The check a ``RateLimitExceeded`` describes, for its 429's headers.

    The policy is that of the client's limiter of that name when it has one; it
    is looked up, never created (a name the client never used must not become a
    limiter, nor be reported as discovered). Without it, the decision alone.
    """
    decision = exception.decision
    components = getattr(client, "_components", None) or {}
    limiter = components.get((RATE_LIMIT, exception.name))
    if limiter is not None:
        return Check.of(limiter, decision)
    return Check(exception.name, decision.limit, decision.reset_after, decision)


def most_restrictive(checks: Sequence[Check]) -> Check:
    """The check the legacy headers describe: the longest rejection, else the fewest left."""
    rejected = [check for check in checks if not check.decision.allowed]
    if rejected:
        return max(rejected, key=lambda check: check.decision.retry_after)
    return min(checks, key=lambda check: check.decision.remaining)


def _seconds(value: float) -> int:
    return max(0, math.ceil(value))


def retry_after(seconds: float | None) -> str:
    """A ``Retry-After`` value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds or 0)))


def _sf_string(value: str) -> str:
    """``value`` as a Structured Field String (RFC 9651): quoted, ``\\`` and ``"`` escaped."""
    printable = "".join(ch if " " <= ch <= "~" else "?" for ch in value)
    return '"' + printable.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rate_limit_headers(
    checks: Sequence[Check], current: Callable[[str], str | None] = lambda name: None
) -> dict[str, str]:
    """The ``RateLimit*`` headers of ``checks``, merged with what a response already has.

    ``current(name)`` reads a header the response already carries (set by a view
    decorator, say): its structured entries are kept and this request's limiters
    added; the legacy fields are replaced only by a more restrictive check.
    """
    if not checks:
        return {}
    policies = [f"{_sf_string(c.name)};q={c.limit};w={_seconds(c.period)}" for c in checks]
    states = [
        f"{_sf_string(c.name)};r={c.decision.remaining};t={_seconds(c.decision.reset_after)}"
        for c in checks
    ]
    headers = {
        "RateLimit-Policy": ", ".join(_merged(current("RateLimit-Policy"), policies)),
        "RateLimit": ", ".join(_merged(current("RateLimit"), states)),
    }
    worst = most_restrictive(checks)
    remaining = current("RateLimit-Remaining")
    if remaining is None or not remaining.isdigit() or int(remaining) >= worst.decision.remaining:
        headers["RateLimit-Limit"] = str(worst.limit)
        headers["RateLimit-Remaining"] = str(worst.decision.remaining)
        headers["RateLimit-Reset"] = str(_seconds(worst.decision.reset_after))
    return headers


def _merged(existing: str | None, entries: list[str]) -> list[str]:
    if not existing:
        return entries
    present = [item.strip() for item in existing.split(",") if item.strip()]
    names = {item.split(";", 1)[0] for item in present}
    return present + [entry for entry in entries if entry.split(";", 1)[0] not in names]


def rejection_headers(checks: Sequence[Check]) -> dict[str, str]:
    """The headers of a 429: ``Retry-After`` and the ``RateLimit*`` fields."""
    headers = rate_limit_headers(checks)
    headers["Retry-After"] = retry_after(most_restrictive(checks).decision.retry_after)
    return headers


class OnceLog:
    """Log a message the first time only (per process): a cause is said once, not per request.

    Every occurrence is counted in ``controlplane_client_problems_total{cause}``, the
    cause's kind as label (``no_client``, ``custom_key``, ``async_key``).
    """

    def __init__(self) -> None:
        self._said: set[str] = set()

    def log(self, cause: str, level: int, message: str, *args: object) -> None:
        kind = cause.partition(":")[0].replace("-", "_")
        ClientMetrics.shared().problems.labels(kind).inc()
        if cause not in self._said:
            self._said.add(cause)
            logger.log(level, message, *args)

    def reset(self) -> None:
        self._said.clear()


once = OnceLog()


__all__ = [
    "CIRCUIT_OPEN_BODY",
    "RATE_LIMITED_BODY",
    "Check",
    "Rule",
    "RuleError",
    "Rules",
    "forwarded_client",
    "exceeded_check",
    "most_restrictive",
    "once",
    "rate_limit_headers",
    "rejection_headers",
    "retry_after",
    "subject_for",
]
