"""Demo traffic: a small simulated service using the client library against a flaky upstream.

``make run`` starts it (``python manage.py demo_traffic``) so that the live page
of ``production`` shows something within a minute: the ``payments`` breaker
opening, going half-open and closing again as the fake payments provider fails
and recovers, the ``api`` limiter rejecting one noisy user, and the ``prices``
cache hitting and missing.

Like our users' services, this module never imports Django: it only uses
:mod:`controlplane.client`. The only exceptions the client library raises into
it are :class:`CircuitOpenError` and :class:`RateLimitExceeded`; anything else
escaping a worker is a bug, which stops the demo and is raised by :func:`run`.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from controlplane.client import CircuitOpenError, Client, RateLimitExceeded
from controlplane.protocol.keys import DEFAULT_PREFIX

logger = logging.getLogger("controlplane.demo")

SERVICE: Final = "demo-shop"
REGULAR_USERS: Final = tuple(f"user-{number:02d}" for number in range(1, 21))
NOISY_USER: Final = "noisy-client"
NOISY_SHARE: Final = 0.25  # of all requests: several times its quota, the others stay within
SKUS: Final = 200
# A few popular products and a long tail: cumulative weights 1, 1/2, 1/3...
_SKU_CUM_WEIGHTS: Final = list(itertools.accumulate(1.0 / rank for rank in range(1, SKUS + 1)))
_MAX_SLOW_SECONDS: Final = 3.0


class Phase(NamedTuple):
    """How the fake payments provider behaves for one part of the cycle."""

    name: str
    failure_rate: float  # share of calls that fail
    slow_rate: float  # share of calls that take longer than the breaker's slow_call_duration


# Each phase lasts ``cycle_seconds``; then the cycle starts over.
PHASES: Final = (
    Phase("healthy", 0.02, 0.01),
    Phase("failing", 0.80, 0.03),
    Phase("recovering", 0.10, 0.02),
)


def phase_at(elapsed: float, cycle_seconds: float) -> Phase:
    """The provider's behaviour ``elapsed`` seconds after the demo started."""
    return PHASES[int(elapsed // cycle_seconds) % len(PHASES)]


class UpstreamError(Exception):
    """The fake payments provider failed (what a real client would raise on a 502)."""


@dataclass
class DemoStats:
    """What the simulated requests came to."""

    requests: int = 0
    ok: int = 0
    rate_limited: int = 0
    circuit_open: int = 0
    upstream_errors: int = 0

    def describe(self) -> str:
        return (
            f"{self.requests} requests: {self.ok} ok, {self.rate_limited} rate-limited, "
            f"{self.circuit_open} rejected by an open circuit, "
            f"{self.upstream_errors} payment errors"
        )


class _Tally:
    """Outcome counters shared by the workers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._total: Counter[str] = Counter()
        self._since_read: Counter[str] = Counter()

    def add(self, outcome: str) -> None:
        with self._lock:
            self._total[outcome] += 1
            self._since_read[outcome] += 1

    @staticmethod
    def _stats(counts: Counter[str]) -> DemoStats:
        return DemoStats(
            requests=sum(counts.values()),
            ok=counts["ok"],
            rate_limited=counts["rate_limited"],
            circuit_open=counts["circuit_open"],
            upstream_errors=counts["upstream_error"],
        )

    def take_recent(self) -> DemoStats:
        with self._lock:
            recent, self._since_read = self._since_read, Counter()
        return self._stats(recent)

    def total(self) -> DemoStats:
        with self._lock:
            return self._stats(self._total.copy())


class FakePayments:
    """The flaky upstream: latency, errors and slow calls following the phase cycle."""

    def __init__(
        self,
        phase: Callable[[], Phase],
        slow_seconds: Callable[[], float],
        sleep: Callable[[float], object],
    ) -> None:
        self._phase = phase
        self._slow_seconds = slow_seconds
        self._sleep = sleep  # returns early when the demo stops

    def charge(self, amount_cents: int, rng: random.Random) -> str:
        phase = self._phase()
        slow = rng.random() < phase.slow_rate
        self._sleep(self._slow_seconds() if slow else rng.uniform(0.005, 0.03))
        if rng.random() < phase.failure_rate:
            raise UpstreamError(f"payments: 502 Bad Gateway charging {amount_cents} cents")
        return f"ch_{rng.getrandbits(48):012x}"


def _catalogue_price(sku: str) -> int:
    """The price of ``sku`` in cents, from a slow "database" (what the cache saves)."""
    time.sleep(0.02)
    return 199 + sum(sku.encode()) * 37 % 9800


class DemoShop:
    """The simulated service: every request is limited, reads config and prices, then pays."""

    def __init__(
        self, client: Client, started: float, cycle_seconds: float, halt: threading.Event
    ) -> None:
        self.client = client
        self.started = started
        self.cycle_seconds = cycle_seconds
        self.tally = _Tally()
        # The code defaults apply where the environment publishes no such policy.
        self.payments = client.breaker(
            "payments",
            failure_rate_threshold=50,
            window_size=20,
            minimum_calls=10,
            open_for=10,
            slow_call_duration=1,
        )
        self.upstream = FakePayments(self.phase, self._slow_seconds, halt.wait)
        self.price_of: Callable[[str], int] = client.cached("prices", ttl=30, stale_ttl=10)(
            _catalogue_price
        )
        self.checkout: Callable[[str, random.Random], str] = client.rate_limited(
            "api", key=lambda user, rng: user, limit=100, period=60, burst=20
        )(self._checkout)

    def phase(self) -> Phase:
        return phase_at(time.monotonic() - self.started, self.cycle_seconds)

    def _slow_seconds(self) -> float:
        """Just over the breaker's slow_call_duration, so slow calls count as slow."""
        threshold = float(self.payments.settings["slow_call_duration"])
        return min(threshold * 1.2, _MAX_SLOW_SECONDS)

    def _checkout(self, user: str, rng: random.Random) -> str:
        max_items: Any = self.client.config.get("checkout.max_items", 10)
        if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
            max_items = 10
        items = rng.randint(1, min(max_items, 4))
        basket = rng.choices(range(SKUS), cum_weights=_SKU_CUM_WEIGHTS, k=items)
        total = sum(self.price_of(f"sku-{number:03d}") for number in basket)
        return self.payments.call(self.upstream.charge, total, rng)

    def request(self, rng: random.Random) -> None:
        """One simulated API request; the expected failures are the demo's point."""
        user = NOISY_USER if rng.random() < NOISY_SHARE else rng.choice(REGULAR_USERS)
        try:
            self.checkout(user, rng)
        except RateLimitExceeded:
            self.tally.add("rate_limited")
        except CircuitOpenError:
            self.tally.add("circuit_open")
        except UpstreamError:
            self.tally.add("upstream_error")
        else:
            self.tally.add("ok")


def run(
    redis_url: str,
    environment: str = "production",
    *,
    key_prefix: str = DEFAULT_PREFIX,
    duration: float | None = None,
    stop_event: threading.Event | None = None,
    cycle_seconds: float = 20.0,
    workers: int = 4,
    requests_per_second: float = 30.0,
    seed: int | None = None,
) -> DemoStats:
    """Send demo traffic as service ``demo-shop`` until ``stop_event`` is set or ``duration`` ends.

    The fake payments provider is healthy for ``cycle_seconds``, then fails 80%
    of calls for ``cycle_seconds``, then recovers for ``cycle_seconds``, and so
    on. ``workers`` threads send ``requests_per_second`` requests in all.
    Returns the outcome counts; raises what stopped a worker if one crashed.
    """
    if cycle_seconds <= 0 or requests_per_second <= 0 or workers < 1:
        raise ValueError("cycle_seconds, requests_per_second and workers must be positive")
    if duration is not None and duration < 0:
        raise ValueError("duration must not be negative")
    stop = stop_event if stop_event is not None else threading.Event()
    halt = threading.Event()  # tells the workers to stop
    errors: list[BaseException] = []
    client = Client(redis_url, environment=environment, service=SERVICE, key_prefix=key_prefix)
    threads: list[threading.Thread] = []
    try:
        client.start()
        started = time.monotonic()
        shop = DemoShop(client, started, cycle_seconds, halt)
        interval = workers / requests_per_second
        master = random.Random(seed)

        def work(rng: random.Random, first: float) -> None:
            try:
                next_at = first
                while not halt.wait(max(0.0, next_at - time.monotonic())):
                    shop.request(rng)
                    # Never catch up in a burst after a slow call: keep the pace from now.
                    next_at = max(next_at + interval, time.monotonic())
            except BaseException as exc:
                errors.append(exc)
                logger.exception("Demo traffic: a worker failed; stopping")
                halt.set()

        for number in range(workers):
            rng = random.Random(master.getrandbits(64))
            first = started + interval * number / workers
            thread = threading.Thread(
                target=work, args=(rng, first), name=f"demo-shop-{number}", daemon=True
            )
            threads.append(thread)
            thread.start()
        logger.info(
            "Demo traffic: service %s sends ~%g requests/s to %s; its payments provider is "
            "healthy, failing and recovering for %gs each, and %s exceeds its api quota",
            SERVICE,
            requests_per_second,
            environment,
            cycle_seconds,
            NOISY_USER,
        )
        _supervise(shop, stop, halt, None if duration is None else started + duration)
    finally:
        halt.set()
        for thread in threads:
            thread.join(timeout=_MAX_SLOW_SECONDS + 2)
        client.close()
    if errors:
        raise errors[0]
    return shop.tally.total()


def _supervise(
    shop: DemoShop, stop: threading.Event, halt: threading.Event, deadline: float | None
) -> None:
    """Wait for the end, logging each change of the provider's phase."""
    phase = shop.phase()
    logger.info("Demo traffic: payments provider is %s", phase.name)
    while not stop.is_set() and not halt.is_set():
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return
        stop.wait(0.25 if deadline is None else min(0.25, deadline - now))
        current = shop.phase()
        if current != phase:
            phase = current
            logger.info(
                "Demo traffic: payments provider is now %s (%d%% errors); last phase: %s",
                phase.name,
                round(phase.failure_rate * 100),
                shop.tally.take_recent().describe(),
            )
