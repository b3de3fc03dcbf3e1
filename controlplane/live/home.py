"""The home page: what is wrong right now, per environment, at a glance.

Each environment gets one card built from the same reads as its live overview
(``widgets.overview``: the published policies, the fleet's last seconds of
counters, breaker states and heartbeats, the overrides in force) plus, for its
caches only, the minute before, to tell a hit ratio that fell from one that was
always low. A card lists its problems worst first and says "All clear" when
there are none. Pushes re-render an environment's card when its state changes
(transitions, overrides, instances) and, for figures, at most every
``push.HOME_FIGURES_INTERVAL`` seconds; viewers get the card only when its HTML changed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import quote

import redis
from django.conf import settings
from django.template.loader import render_to_string
from django.utils import timezone

from controlplane.live.history import (
    COUNTERS_BY_KIND,
    RATE_WINDOW,
    REPORT_GRACE,
    PolicyRates,
    finite_number,
    undecoded,
)
from controlplane.live.widgets import (
    UNREADABLE,
    Row,
    overview,
    rejected_subjects,
    row_dom_id,
)
from controlplane.policies.models import Environment, Override
from controlplane.redis_connection import get_redis

# A limiter is rejecting from this share of its decisions over the rate window.
REJECTING_SHARE = 1.0  # percent
# A cache's hit ratio "fell" when it is this many points under the minute before,
# with at least this many lookups a second now (a handful of misses is not news).
HIT_RATIO_DROP = 20.0
MIN_LOOKUPS_PER_SECOND = 1.0
BASELINE_SECONDS = 60
CACHE_COUNTERS = COUNTERS_BY_KIND["cache"]
SEVERITY_ORDER = {"critical": 0, "warning": 1, "notice": 2}


@dataclass(frozen=True)
class Problem:
    """One thing wrong in an environment, as its card lists it."""

    severity: str  # critical, warning or notice
    kind: str  # breaker, rate_limit, cache, instances, override
    name: str
    headline: str  # "payments is open"
    detail: str  # figures, with their window
    url: str  # where to look closer: the policy's page
    live_url: str = ""  # its row on the live overview, where operators act
    since: datetime | None = None  # when it began, where known (a breaker's opening)


@dataclass(frozen=True)
class InForce:
    """An override in force, as a card lists it: who, why, until when, and where to act."""

    override: Override
    live_url: str


@dataclass
class EnvironmentHealth:
    environment: Environment
    problems: list[Problem] = field(default_factory=list)
    overrides: list[InForce] = field(default_factory=list)
    instances: int = 0
    in_sync: int = 0
    policies: int = 0
    redis_ok: bool = True

    @property
    def all_clear(self) -> bool:
        return self.redis_ok and not self.problems and not self.overrides

    @property
    def worst(self) -> str:
        if not self.redis_ok:
            return "unknown"
        if self.problems:
            return min((p.severity for p in self.problems), key=SEVERITY_ORDER.__getitem__)
        return "notice" if self.overrides else "ok"

    @property
    def dom_id(self) -> str:
        return f"home-{self.environment.name}".replace(".", "_")


def live_row_url(environment: str, kind: str, name: str) -> str:
    """The row of a policy on its environment's live overview."""
    return f"/e/{quote(environment)}/live/#{row_dom_id(kind, name)}"


def _row_url(row: Row) -> str:
    return live_row_url(row.environment, row.kind, row.name)


def _share(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole else 0.0


def _breaker_problem(row: Row) -> Problem | None:
    states = row.states
    reporting = sum(states.values())
    window = f"last {RATE_WINDOW} s"
    rates = row.rates
    figures = []
    if row.opened_at is not None:  # what decided, over the breaker's own window
        figures.append(f"opened at {row.opened_at:.1f} % failures")
    if rates.failure_rate is not None:
        calls = rates.calls_per_second
        figures.append(f"failures {rates.failure_rate:.1f} % of {calls:.1f} calls/s")
    rejected = rates.per_second("rejected")
    if rejected:
        figures.append(f"{rejected:.1f} calls/s rejected by the breaker")
    detail = (", ".join(figures) + f" ({window})") if figures else f"no calls ({window})"
    url = row.view.detail_url
    for state, severity, verb in (
        ("open", "critical", "open"),
        ("half_open", "warning", "half-open"),
    ):
        count = states.get(state, 0)
        if count:
            where = "every instance" if count == reporting else f"{count} of {reporting} instances"
            headline = f"{row.name} is {verb} on {where}"
            since = row.opened_since if state == "open" else None
            return Problem(
                severity, "breaker", row.name, headline, detail, url, _row_url(row), since
            )
    return None


def _rejecting_share(row: Row) -> float:
    """The share of a limiter's decisions that were rejections, in percent."""
    allowed, rejected = row.allowed_per_second, row.rejected_per_second
    return _share(rejected, allowed + rejected)


def _limiter_problem(row: Row) -> Problem | None:
    rejected, share = row.rejected_per_second, _rejecting_share(row)
    if not rejected or share < REJECTING_SHARE:
        return None
    top = ", ".join(f"{subject} ({count:.0f})" for subject, count in row.top[:3])
    detail = f"{rejected:.1f}/s rejected, {share:.0f} % of decisions (last {RATE_WINDOW} s)"
    if top:
        detail += f"; most rejected over the last 2 min: {top}"
    severity = "critical" if share >= 50 else "warning"
    headline = f"{row.name} is rejecting"
    return Problem(
        severity, "rate_limit", row.name, headline, detail, row.view.detail_url, _row_url(row)
    )


def _cache_problem(row: Row, before: dict[str, float]) -> Problem | None:
    now_ratio = row.rates.hit_ratio
    if now_ratio is None or row.lookups_per_second < MIN_LOOKUPS_PER_SECOND:
        return None
    was = PolicyRates(before).hit_ratio  # the same ratio, over the minute before
    if was is None or was - now_ratio < HIT_RATIO_DROP:
        return None
    detail = (
        f"hit ratio {now_ratio:.0f} % (last {RATE_WINDOW} s), "
        f"was {was:.0f} % over the {BASELINE_SECONDS} s before"
    )
    headline = f"{row.name} hit ratio fell"
    return Problem(
        "warning", "cache", row.name, headline, detail, row.view.detail_url, _row_url(row)
    )


def _cache_baselines(environment: Environment, names: list[str]) -> dict[str, dict[str, float]]:
    """Each cache's counters summed over the minute before the rate window (one round trip)."""
    if not names:
        return {}
    keys = environment.keys()
    last = int(time.time() - REPORT_GRACE) - 1 - RATE_WINDOW
    seconds = range(last - BASELINE_SECONDS + 1, last + 1)
    fields = [f"cache:{name}|{counter}" for name in names for counter in CACHE_COUNTERS]
    try:
        with get_redis().pipeline(transaction=False) as pipe:
            for second in seconds:
                undecoded(pipe, "HMGET", keys.live_second(second), *fields)
            replies = pipe.execute()
    except redis.RedisError:
        return {}
    sums: dict[str, dict[str, float]] = {name: {} for name in names}
    for reply in replies:
        for index, raw in enumerate(reply):
            value = None if raw is None else finite_number(raw)
            if value is None:
                continue
            name, counter = divmod(index, len(CACHE_COUNTERS))
            counts = sums[names[name]]
            counts[CACHE_COUNTERS[counter]] = counts.get(CACHE_COUNTERS[counter], 0.0) + value
    return sums


def environment_health(
    environment: Environment, overrides: dict[str, Override] | None = None
) -> EnvironmentHealth:
    """What is wrong in ``environment`` right now, worst first.

    ``overrides``: those in force there, if read already (``overrides_in_force``).
    Instances behind are those still on an older revision after their heartbeat
    timeout (``LiveSnapshot.sync``): right after a change they are applying it.
    """
    context = overview(environment, tops=False, overrides=overrides)
    snapshot = context["snapshot"]
    rows: dict[str, list[Row]] = context["rows"]
    rejecting = [row for row in rows["rate_limit"] if _rejecting_share(row) >= REJECTING_SHARE]
    top = rejected_subjects(environment, [row.name for row in rejecting])
    for row in rejecting:
        row.top = top.get(row.name, [])
    health = EnvironmentHealth(
        environment,
        instances=len(snapshot.instances),
        in_sync=context["instances_in_sync"],
        policies=sum(len(kind_rows) for kind_rows in rows.values()),
        redis_ok=snapshot.redis_ok,
    )
    problems = health.problems
    for row in rows["breaker"]:
        if row.override is None:  # an override is listed with who, why and until when
            problem = _breaker_problem(row)
            if problem is not None:
                problems.append(problem)
    for row in rows["rate_limit"]:
        problem = _limiter_problem(row)
        if problem is not None:
            problems.append(problem)
    # Only a cache now under 100 - HIT_RATIO_DROP %, and busy, can have fallen: the
    # minute before is read for those alone (healthy caches cost no read).
    caches = [
        row
        for row in rows["cache"]
        if row.rates.hit_ratio is not None
        and row.rates.hit_ratio < 100.0 - HIT_RATIO_DROP
        and row.lookups_per_second >= MIN_LOOKUPS_PER_SECOND
    ]
    if caches:
        try:
            baselines = _cache_baselines(environment, [row.name for row in caches])
        except UNREADABLE:
            baselines = {}
        for row in caches:
            problem = _cache_problem(row, baselines.get(row.name, {}))
            if problem is not None:
                problems.append(problem)
    sync = context["sync"]
    if sync.behind:
        oldest = min(i.revision for i in sync.behind)
        problems.append(
            Problem(
                "warning",
                "instances",
                "behind",
                f"{len(sync.behind)} of {sync.reporting} instances behind",
                f"still on revision {oldest} after their heartbeat timeout; "
                f"the environment is at revision {environment.revision}",
                f"/e/{quote(environment.name)}/instances/",
            )
        )
    if sync.gone:
        services = sorted({i.service or "unnamed" for i in sync.gone})
        problems.append(
            Problem(
                "warning",
                "instances",
                "gone",
                f"{len(sync.gone)} instance{'s' if len(sync.gone) > 1 else ''} gone silent",
                f"stopped reporting without a goodbye in the last "
                f"{settings.INSTANCES_FORGET_AFTER / 60:.0f} min ({', '.join(services)})",
                f"/e/{quote(environment.name)}/instances/",
            )
        )
    problems.sort(key=lambda p: SEVERITY_ORDER[p.severity])
    in_force = [
        InForce(row.override, _row_url(row))
        for kind_rows in rows.values()
        for row in kind_rows
        if row.override
    ]
    health.overrides = sorted(in_force, key=lambda o: o.override.created_at, reverse=True)
    return health


def overrides_in_force(environments: list[Environment]) -> dict[int, dict[str, Override]]:
    """``active_overrides`` of every one of ``environments``, in one query."""
    ids = [environment.pk for environment in environments]
    in_force = Override.objects.filter(environment_id__in=ids).in_force(timezone.now())
    found: dict[int, dict[str, Override]] = {pk: {} for pk in ids}
    for override in in_force.order_by("revision"):
        found[override.environment_id][override.field] = override
    return found


def home_context(environments: list[Environment] | None = None) -> dict[str, object]:
    """Every environment's card, the ones with the worst problems first."""
    if environments is None:
        environments = list(Environment.objects.order_by("name"))
    overrides = overrides_in_force(environments)
    cards = [environment_health(e, overrides.get(e.pk, {})) for e in environments]
    cards.sort(key=lambda card: (SEVERITY_ORDER.get(card.worst, 3), card.environment.name))
    return {"cards": cards, "all_clear": all(card.all_clear for card in cards)}


def render_card(environment: Environment) -> str:
    """One environment's card, as a push swaps it by id."""
    card = environment_health(environment)
    return render_to_string("live/_home_card.html", {"card": card, "oob": True})
