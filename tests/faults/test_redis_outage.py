"""Redis killed and restarted empty while services call it and people use the dashboard.

``tests/client/test_outage.py`` covers the library alone through a graceful
stop, and ``tests/policies/test_reconcile.py`` the reconciler alone. Here the
app is served by Daphne, Redis dies with SIGKILL, the reconciler runs as in
production, and what people do during the outage must reach the services
afterwards, with nothing lost from the database or the audit log.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from channels.layers import channel_layers
from django.contrib.auth.models import User

from controlplane.accounts.actors import Actor
from controlplane.audit.models import AuditEntry
from controlplane.client import CircuitOpenError, Client
from controlplane.embedded_redis import RedisServer
from controlplane.policies.models import Environment, Policy
from controlplane.policies.overrides import current_override
from controlplane.policies.reconcile import Reconciler, reconcile_environment
from tests.conftest import wait_for
from tests.daphne import HOST, daphne_servers
from tests.faults.web import BANNER_EDIT, WebSession, banner_form
from tests.live.test_scale_out import Websocket

pytestmark = pytest.mark.django_db(transaction=True)

NOT_YET_PUBLISHED = "Redis cannot be reached: services get this change when it answers again"


def kill(server: RedisServer) -> None:
    """SIGKILL: no shutdown, every connection cut at once, every key lost."""
    assert server.process is not None
    server.process.kill()
    server.process.wait(timeout=10)
    server.process = None


@pytest.fixture
def app(
    disposable_redis: RedisServer, settings: Any, key_prefix: str, transactional_db: None
) -> Iterator[int]:
    """Daphne on a loopback port, its channel layer and policies in the disposable Redis;
    the reconciler runs next to it, as in every production process."""
    layers = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [disposable_redis.url], "prefix": f"{key_prefix}:asgi"},
        }
    }
    settings.CHANNEL_LAYERS = layers
    settings.ALLOWED_HOSTS = [HOST, "localhost"]
    channel_layers.backends.clear()
    with daphne_servers(1, CHANNEL_LAYERS=layers) as (port,):
        # Started after the fork: no thread's database connection may cross it.
        reconciler = Reconciler(interval=0.05, full_interval=0.5)
        reconciler.start()
        try:
            yield port
        finally:
            reconciler.stop()
    channel_layers.backends.clear()


def _breaker_state(client: Client, name: str) -> str:
    """What a call through the breaker meets: ``passed``, or the state that rejected it."""
    try:
        client.breaker(name)(lambda: None)()
    except CircuitOpenError as exc:
        return exc.state
    return "passed"


def _audit_actions() -> list[tuple[str, str]]:
    return list(AuditEntry.objects.order_by("pk").values_list("action", "object_name"))


class Traffic:
    """A service's calls in a thread: counts the intended outcomes, keeps anything else."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.seen: Counter[str] = Counter()
        self.unexpected: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="faults-traffic", daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        limiter = self.client.limiter("api")
        breaker = self.client.breaker("payments")

        @self.client.cached("prices")
        def price(sku: str) -> int:
            return len(sku)

        for call in range(20_000):
            if self._stop.wait(0.002):
                return
            try:
                allowed = limiter.hit(f"user:{call % 5}").allowed
                assert price(f"sku-{call % 7}") == len(f"sku-{call % 7}")
                self.client.config.get("banner", "default")
                breaker(lambda: None)()
                self.seen["ok" if allowed else "limited"] += 1
            except CircuitOpenError as exc:
                self.seen[type(exc).__name__] += 1
            except BaseException as exc:  # anything else is a bug of the library
                self.unexpected.append(exc)


def test_dashboard_and_services_through_a_redis_kill(
    app: int,
    disposable_redis: RedisServer,
    production: Environment,
    system: Actor,
    operator: User,
    editor: User,
    client_factory: Callable[..., Client],
    set_policy: Callable[..., Policy],
) -> None:
    set_policy("breaker", "payments")
    set_policy("rate_limit", "api", algorithm="token_bucket", limit=1000, period=1, burst=1000)
    set_policy("cache", "prices", ttl=0.2)
    set_policy("config", "banner", value="before")
    service = client_factory(start_timeout=5).start()
    operating, editing = WebSession(app, operator), WebSession(app, editor)
    assert operating.get("/e/production/live/").status == 200  # sets the CSRF cookies
    assert editing.get(BANNER_EDIT).status == 200

    with Traffic(service) as traffic:
        wait_for(lambda: traffic.seen["ok"] > 50)
        kill(disposable_redis)
        wait_for(lambda: not service.connected)
        calls = traffic.seen["ok"]
        wait_for(lambda: traffic.seen["ok"] > calls + 100)  # services carry on

        # Every page answers; those that show Redis's state say it cannot be reached.
        pages = {
            "/": "Redis cannot be reached: the fleet's state is unknown.",
            "/policies/": "Redis cannot be reached: published versions are unknown.",
            "/e/production/live/": "Redis cannot be reached: live figures are unavailable.",
            "/e/production/breaker/payments/": "Redis cannot be reached: live figures",
            "/e/production/rate_limit/api/": "Redis cannot be reached: live figures",
            "/e/production/config/banner/": "<h1>banner <small>v1</small></h1>",
            "/e/production/instances/": "Redis cannot be reached: the instances' heartbeats",
            "/e/production/discovered/": "<h1>Used in code, not managed here</h1>",
            "/e/production/breaker/payments/events/": "<h1>Transitions of payments</h1>",
            "/audit/": "<h1>Audit log</h1>",
        }
        for path, text in pages.items():
            page = operating.get(path)
            assert (path, page.status) == (path, 200)
            assert text in page.text, path
        series = operating.get("/e/production/breaker/payments/series.json")
        assert (series.status, series.json()) == (503, {"error": "Redis cannot be reached"})
        ready = operating.get("/readyz")
        assert (ready.status, ready.json()["checks"]["redis"]) == (503, "failing")

        # An edit, an override and a purge are saved and audited, and say they wait for Redis.
        edited = editing.follow(
            editing.post(BANNER_EDIT, banner_form("after", 1, "during the outage"))
        )
        assert f"Saved config entry banner. {NOT_YET_PUBLISHED}" in edited.text
        tripped = operating.follow(
            operating.post(
                "/e/production/override/",
                {"policy": "breaker:payments", "action": "trip", "reason": "upstream down"},
            )
        )
        assert f"Force open: breaker payments until lifted. {NOT_YET_PUBLISHED}" in tripped.text
        purged = operating.follow(
            operating.post(
                "/e/production/override/",
                {"policy": "cache:prices", "action": "purge", "reason": "bad prices"},
            )
        )
        assert f"Purge: cache prices. {NOT_YET_PUBLISHED}" in purged.text
        # A reset lives only in Redis: refused whole, the trip is not lifted.
        reset = operating.follow(
            operating.post(
                "/e/production/override/",
                {"policy": "breaker:payments", "action": "reset", "reason": "try again"},
            )
        )
        assert "Nothing was changed. Redis cannot be reached" in reset.text
        override = current_override(production, "breaker", "payments")
        assert override is not None and override.state == "forced_open"
        during = _audit_actions()
        assert during[-3:] == [
            ("policy.update", "banner"),
            ("override.set", "payments"),
            ("policy.purge", "prices"),
        ]
        # The services still run on what they had.
        assert service.config.get("banner") == "before"
        assert _breaker_state(service, "payments") == "passed"

        disposable_redis.start()  # empty: the reconciler restores it from the database
        wait_for(lambda: service.connected, timeout=15)
        wait_for(lambda: service.config.get("banner") == "after", timeout=15)
        wait_for(lambda: _breaker_state(service, "payments") == "forced_open", timeout=15)
        wait_for(lambda: traffic.seen["CircuitOpenError"] > 0, timeout=15)
        assert service.policy_spec("cache", "prices")["generation"] == 1
        wait_for(lambda: operating.get("/readyz").status == 200, timeout=15)
        assert "Redis cannot be reached" not in operating.get("/").text

        # Now the reset goes through: the trip is lifted and the breaker closes everywhere.
        reset = operating.follow(
            operating.post(
                "/e/production/override/",
                {"policy": "breaker:payments", "action": "reset", "reason": "upstream back"},
            )
        )
        assert "Reset to closed: breaker payments." in reset.text
        assert NOT_YET_PUBLISHED not in reset.text
        wait_for(lambda: _breaker_state(service, "payments") == "passed", timeout=15)

    assert traffic.unexpected == []
    assert traffic.seen["ok"] > 0
    assert _audit_actions() == [
        *during,
        ("override.reset", "payments"),  # the lift is part of the reset: one row
    ]
    banner = Policy.objects.get(environment=production, kind="config", name="banner")
    assert (banner.version, banner.spec["value"]) == (2, "after")
    assert reconcile_environment(production, repair=False).clean  # Redis holds it all


def test_live_page_websocket_through_a_redis_kill(
    app: int,
    disposable_redis: RedisServer,
    production: Environment,
    set_policy: Callable[..., Policy],
    viewer: User,
    operator: User,
) -> None:
    set_policy("breaker", "payments")
    viewing, operating = WebSession(app, viewer), WebSession(app, operator)
    assert operating.get("/e/production/live/").status == 200
    cookie = f"sessionid={viewing.cookies['sessionid']}"

    def override(action: str) -> None:
        answer = operating.post(
            "/e/production/override/",
            {"policy": "breaker:payments", "action": action, "reason": f"{action} test"},
        )
        assert answer.status == 302

    def row_shows(websocket: Websocket, text: str) -> str:
        deadline = time.monotonic() + 30
        received: list[str] = []
        while True:
            try:
                html = websocket.receive(deadline)
            except TimeoutError:
                raise AssertionError(f"no row with {text!r}; received {received}") from None
            if 'id="live-breaker-payments"' in html and text in html:
                return html
            received.append(html)

    websocket = Websocket(app, "/ws/live/production/", cookie)
    try:
        override("disable")
        row_shows(websocket, "disabled by olga")
        kill(disposable_redis)
        # The server closes the page's socket (htmx then reconnects, backing off) ...
        deadline = time.monotonic() + 30
        with pytest.raises(ConnectionError):
            while True:
                websocket.receive(deadline)
    finally:
        websocket.close()
    # ... and refuses it while the channel layer is gone.
    assert _connect(app, cookie) is None

    disposable_redis.start()
    reconnected = wait_for(lambda: _connect(app, cookie), timeout=15)
    try:
        override("trip")
        html = row_shows(reconnected, "forced open by olga")
        assert "disabled by olga" not in html.split('id="live-breaker-payments"', 1)[1]
    finally:
        reconnected.close()


def _connect(port: int, cookie: str) -> Websocket | None:
    """One connection attempt of a live page: the socket, or None if the server refused it."""
    try:
        return Websocket(port, "/ws/live/production/", cookie)
    except (AssertionError, OSError):  # a handshake answered other than 101, or none
        return None
