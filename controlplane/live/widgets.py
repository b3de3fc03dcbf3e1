"""The live widgets: each one's data, built once for the first render and every push.

A row of the overview is a Jinja2 partial per kind (``templates/live/_*_row.jinja``),
the one source of that row's HTML for the page and for every push. It is
rendered from a tuple of exactly the values it shows (``Row.view``), and the
HTML is kept by that tuple: a row whose values did not change is not rendered
again, whether a page or a push asks for it, so a push can leave out the rows
that would not change (``push.send_now``). Django's template engine spent about
0.15 ms a row, too much for a page or a second of counters of 1,000 policies.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple
from urllib.parse import quote

import jinja2
import redis
from django.conf import settings
from django.db.models import Q
from django.db.models.fields.json import KT
from django.template.loader import get_template, render_to_string
from django.urls import reverse
from django.utils import timezone
from markupsafe import Markup

from controlplane.audit.templatetags.humane import absolute, clock_time
from controlplane.live.history import (
    LiveSnapshot,
    PolicyRates,
    breaker_instances,
    read_snapshot,
    top_rejected,
)
from controlplane.live.models import BreakerEvent
from controlplane.policies.access import find_policy
from controlplane.policies.models import Environment, Override, Policy
from controlplane.policies.overrides import OPERATOR_ACTIONS, OperatorAction, active_overrides
from controlplane.protocol.schema import KIND_LABELS
from controlplane.redis_connection import get_redis

logger = logging.getLogger(__name__)


class ActionGroups(NamedTuple):
    """A kind's actions as the override panel groups them."""

    held: tuple[OperatorAction, ...]  # states held until lifted or expired
    once: tuple[OperatorAction, ...]  # done once, now: reset, purge


# The override panel's choices by kind, as the templates list them.
OVERRIDE_ACTIONS: dict[str, ActionGroups] = {
    kind: ActionGroups(tuple(a for a in actions if not a.once), tuple(a for a in actions if a.once))
    for kind, actions in OPERATOR_ACTIONS.items()
}


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}%"


class OverrideBadge(NamedTuple):
    """An override as a row shows it: what, who, why and until when.

    The expiry is an absolute time (``expires``, ISO 8601, and ``until``, as the
    server's zone shows it): the row's HTML is kept by these values, so the page
    (live.js) turns it into the viewer's local time and "in 52 min", and keeps that current.
    """

    label: str
    actor: str
    reason: str
    expires: str  # ISO 8601, "" until lifted
    until: str  # e.g. "21:43 UTC", "" until lifted


def override_badge(override: Override) -> OverrideBadge:
    expires_at = override.expires_at
    if expires_at is None:
        return OverrideBadge(override.label, override.actor_name, override.reason, "", "")
    local = timezone.localtime(expires_at)
    return OverrideBadge(
        override.label,
        override.actor_name,
        override.reason,
        expires_at.isoformat(),
        f"{local:%H:%M} {local.tzname()}",
    )


class BreakerView(NamedTuple):
    """What a breaker's row shows, and nothing else: its HTML is kept by these values."""

    field: str
    dom_id: str
    name: str
    tags: str  # space-separated, for the rows' filter (data-tags)
    detail_url: str
    observe: bool
    state: str
    state_class: str
    state_label: str
    reached: str
    failure: str
    slow: str
    calls: str
    rejected: str  # calls the breaker rejected, per second
    opened_at: str  # the failure rate the breaker opened at, over its own window
    opened_since: tuple[str, str, str] | None  # when it opened: ISO, clock and full time
    override: OverrideBadge | None


class LimiterView(NamedTuple):
    """What a rate limiter's row shows."""

    field: str
    dom_id: str
    name: str
    tags: str
    detail_url: str
    limit: str
    observe: bool
    allowed: str
    rejected: str
    top: tuple[tuple[str, str], ...]
    override: OverrideBadge | None


class CacheView(NamedTuple):
    """What a cache's row shows."""

    field: str
    dom_id: str
    name: str
    tags: str
    detail_url: str
    hit_ratio: str
    lookups: str
    generation: str


RowView = BreakerView | LimiterView | CacheView


BREAKER_STATES = ("open", "forced_open", "half_open", "disabled", "forced_closed", "closed")


@dataclass
class Row:
    """One policy on the overview: its published settings, override and live figures."""

    kind: str
    name: str
    environment: str
    observe: bool  # the policy's mode is "observe": it reports but does not act
    limit: str  # a rate limiter's "<limit>/<period>s"
    generation: str  # a cache's generation
    rates: PolicyRates
    override: Override | None
    states: dict[str, int]
    top: list[tuple[str, float]]
    opened_at: float | None = None  # failure rate (percent) of the transition to open
    opened_since: datetime | None = None  # when that transition was
    tags: tuple[str, ...] = ()

    @property
    def field(self) -> str:
        return f"{self.kind}:{self.name}"

    @property
    def reached(self) -> str:
        """The state the breaker reached by itself, by how many instances report it."""
        if not self.states:
            return "no reports"
        ordered = sorted(self.states.items(), key=lambda item: -item[1])
        return ", ".join(f"{count} {state.replace('_', '-')}" for state, count in ordered)

    @functools.cached_property
    def worst_state(self) -> str:
        for state in BREAKER_STATES:
            if self.states.get(state):
                return state
        return "unknown"

    @property
    def state_class(self) -> str:
        return self.worst_state.replace("_", "")

    @property
    def state_label(self) -> str:
        return self.worst_state.replace("_", " ")

    @property
    def allowed_per_second(self) -> float:
        return self.rates.per_second("allowed")

    @property
    def rejected_per_second(self) -> float:
        return self.rates.per_second("rejected")

    @property
    def lookups_per_second(self) -> float:
        return sum(self.rates.per_second(c) for c in ("hits", "local_hits", "stale_hits", "misses"))

    @functools.cached_property
    def view(self) -> RowView:
        """The values the row's partial shows, formatted: the row's HTML is kept by them."""
        kind, name, rates, field = self.kind, self.name, self.rates, self.field
        dom_id = row_dom_id(kind, name)
        tags = " ".join(self.tags)
        detail_url = _detail_url(self.environment, kind, name)
        if kind == "cache":
            return CacheView(
                field,
                dom_id,
                name,
                tags,
                detail_url,
                _percent(rates.hit_ratio),
                f"{self.lookups_per_second:.1f}",
                self.generation,
            )
        override = None if self.override is None else override_badge(self.override)
        if kind == "breaker":
            return BreakerView(
                field,
                dom_id,
                name,
                tags,
                detail_url,
                self.observe,
                self.worst_state,
                self.state_class,
                self.state_label,
                self.reached,
                _percent(rates.failure_rate),
                _percent(rates.slow_rate),
                f"{rates.calls_per_second:.1f}",
                f"{rates.per_second('rejected'):.1f}",
                "" if self.opened_at is None else _percent(self.opened_at),
                _moment(self.opened_since),
                override,
            )
        return LimiterView(
            field,
            dom_id,
            name,
            tags,
            detail_url,
            self.limit,
            self.observe,
            f"{self.allowed_per_second:.1f}",
            f"{self.rejected_per_second:.1f}",
            tuple((subject, f"{count:.0f}") for subject, count in self.top),
            override,
        )


def row_dom_id(kind: str, name: str) -> str:
    """The id of a policy's row on the live overview (pushes swap rows by it)."""
    return f"live-{kind}-{name}".replace(".", "_")


ROW_TEMPLATES = {
    "breaker": "live/_breaker_row.jinja",
    "rate_limit": "live/_limiter_row.jinja",
    "cache": "live/_cache_row.jinja",
}
# Rendered rows kept, about 1 KB each with the values they were rendered from:
# 1,000 policies in both variants (with and without the override controls)
# eight times over, 17 MB at most.
ROW_CACHE_SIZE = 16_384


@functools.cache
def _detail_pattern() -> str:
    """The policy page's URL with ``{0}``, ``{1}``, ``{2}`` for the environment, kind and name."""
    pattern = reverse("policy-detail", args=["ENV", "KIND", "NAME"])
    return pattern.replace("ENV", "{0}").replace("KIND", "{1}").replace("NAME", "{2}")


@functools.lru_cache(maxsize=ROW_CACHE_SIZE)
def _detail_url(environment: str, kind: str, name: str) -> str:
    """The policy page's URL, without a URL reversal per row of a 1,000-row page."""
    return _detail_pattern().format(quote(environment), kind, quote(name))


@functools.cache
def _row_templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(settings.BASE_DIR / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a name the view lacks fails, never renders empty
        auto_reload=settings.DEBUG,
    )


def row_html(row: Row, *, operate: bool) -> Markup:
    """One row's HTML (with the override controls if ``operate``), rendered once per values."""
    template = _row_templates().get_template(ROW_TEMPLATES[row.kind])
    return _rendered_row(template, row.view, operate)


@functools.lru_cache(maxsize=ROW_CACHE_SIZE)
def _rendered_row(template: jinja2.Template, view: RowView, operate: bool) -> Markup:
    # Keyed by the template too: a template reloaded in development renders anew.
    # A macro called from Python costs about half a template's render() per row.
    return Markup(template.module.render_row(view, operate))  # type: ignore[attr-defined]


def table_rows(rows: list[Row], *, operate: bool) -> Markup:
    """The rows of one of the overview's tables, as the page's first render shows them."""
    return Markup("\n").join(row_html(row, operate=operate) for row in rows)


# What the live state in Redis holds is untrusted (anyone who can write to Redis wrote
# it). The readers in live/history.py skip a malformed entry; should a value they do not
# expect still raise, the page shows no live figures for that read instead of a 500.
UNREADABLE = (ValueError, TypeError, AttributeError, KeyError, OverflowError, RecursionError)
_unreadable_logged: set[tuple[str, str]] = set()  # (environment, read) logged as unreadable


def _unreadable(environment: Environment, read: str, exc: Exception) -> None:
    """Log an unreadable live read once per environment and read, until it reads again."""
    if (environment.name, read) not in _unreadable_logged:
        _unreadable_logged.add((environment.name, read))
        logger.warning(
            "Ignoring malformed live state of %s in Redis (%s): %s: %s",
            environment.name,
            read,
            type(exc).__name__,
            exc,
        )


def _readable(environment: Environment, read: str) -> None:
    if _unreadable_logged:
        _unreadable_logged.discard((environment.name, read))


def live_snapshot(environment: Environment, policies: list[str] | None = None) -> LiveSnapshot:
    try:
        snapshot = read_snapshot(get_redis(), environment.keys(), policies=policies)
    except redis.RedisError as exc:
        logger.warning("Live pages cannot read Redis: %s", exc)
        return LiveSnapshot(rates={}, breaker_states={}, instances=[], redis_ok=False)
    except UNREADABLE as exc:
        _unreadable(environment, "snapshot", exc)
        return LiveSnapshot(rates={}, breaker_states={}, instances=[])
    _readable(environment, "snapshot")
    return snapshot


LIVE_KINDS = ("breaker", "rate_limit", "cache")
LIVE_KIND_LABELS = [(kind, KIND_LABELS[kind]) for kind in LIVE_KINDS]
# The overview's state filter (static/js/filter.js): "forced" is any manual state.
STATE_FILTERS = [
    ("open", "open"),
    ("half_open", "half-open"),
    ("forced", "forced or disabled"),
    ("closed", "closed"),
]
READ_ALL_ABOVE = 200  # rows asked for, above which overview() reads every row
# The settings a row shows, read from each policy's spec by the database.
SHOWN_SETTINGS = {
    "shown_mode": KT("spec__mode"),
    "shown_limit": KT("spec__limit"),
    "shown_period": KT("spec__period"),
    "shown_generation": KT("spec__generation"),
}


def overview(
    environment: Environment,
    only: set[str] | None = None,
    *,
    tops: bool = True,
    overrides: dict[str, Override] | None = None,
) -> dict[str, Any]:
    """The overview's context; with ``only``, the rows of those policy fields alone.

    A constant number of queries and Redis round trips, whatever the number of
    policies; with ``only``, the work is proportional to the rows asked for.
    ``tops=False`` leaves out the limiters' top rejected subjects; ``overrides``
    (``active_overrides``) spares reading them, for a caller that read them already.
    """
    policies = environment.policies.filter(deleted=False, kind__in=LIVE_KINDS)
    if only is not None and len(only) > READ_ALL_ABOVE:
        # Many rows (a second of counters): reading them all, and keeping those asked
        # for, costs less than naming each one to the database and to Redis.
        context = overview(environment)
        for kind_rows in context["rows"].values():
            kind_rows[:] = [row for row in kind_rows if row.field in only]
        return context
    if only is not None:
        names: dict[str, list[str]] = {}
        for policy_field in only:
            kind, _, name = policy_field.partition(":")
            if kind in LIVE_KINDS and name:
                names.setdefault(kind, []).append(name)
        condition = Q(pk__in=[])
        for kind, kind_names in names.items():  # at most one term per kind
            condition |= Q(kind=kind, name__in=kind_names)
        policies = policies.filter(condition)
    # Rows show four settings: read alone, they spare decoding 1,000 specs and
    # building 1,000 model instances, which cost more than the rest of the data.
    selected = list(
        policies.order_by("kind", "name")
        .annotate(**SHOWN_SETTINGS)
        .values_list("kind", "name", *SHOWN_SETTINGS, "tags")
    )
    fields = [f"{kind}:{name}" for kind, name, *_ in selected]
    snapshot = live_snapshot(environment, None if only is None else fields)
    if overrides is None:
        overrides = active_overrides(environment)
    limiters = [name for kind, name, *_ in selected if kind == "rate_limit"]
    top = rejected_subjects(environment, limiters) if tops and snapshot.redis_ok else {}
    rows: dict[str, list[Row]] = {kind: [] for kind in LIVE_KINDS}
    selected_rows = zip(selected, fields, strict=True)
    for (kind, name, mode, limit, period, generation, tags), field in selected_rows:
        rows[kind].append(
            Row(
                kind=kind,
                name=name,
                environment=environment.name,
                observe=mode == "observe",
                limit=f"{limit}/{float(period or 0):g}s" if kind == "rate_limit" else "",
                generation="" if generation is None else str(generation),
                rates=snapshot.rates_for(field),
                override=overrides.get(field),
                states=snapshot.breaker_states.get(name, {}) if kind == "breaker" else {},
                top=top.get(name, []),
                tags=tuple(tags or ()),
            )
        )
    _add_opening_rates(environment, rows["breaker"])
    sync = snapshot.sync(environment.revision)
    return {
        "environment": environment,
        "rows": rows,
        "override_actions": OVERRIDE_ACTIONS,
        "tags": sorted({tag for *_, tags in selected for tag in tags or ()}),
        "live_kinds": LIVE_KIND_LABELS,
        "live_states": STATE_FILTERS,
        "snapshot": snapshot,
        "sync": sync,
        "instances_in_sync": len(sync.in_sync),
        "instances_applying": len(sync.applying),
        "instances_behind": len(sync.behind),
        "instances_gone": len(sync.gone),
    }


OPENING_LOOKBACK = timedelta(hours=1)  # an open breaker tries again within its open_for


def _moment(moment: datetime | None) -> tuple[str, str, str] | None:
    """A time as a row shows it: ISO (scripts say "3 min ago"), the clock, the full time."""
    if moment is None:
        return None
    return moment.isoformat(), clock_time(moment), absolute(moment)


def _add_opening_rates(environment: Environment, breakers: list[Row]) -> None:
    """When each open breaker opened and at what failure rate (its last transition to open).

    The rate over the breaker's own window decided, which the fleet's last seconds
    of counters need not show. One query, for the open breakers only.
    """
    open_rows = {row.name: row for row in breakers if row.states.get("open")}
    if not open_rows:
        return
    events = (
        BreakerEvent.objects.filter(
            environment=environment,
            name__in=list(open_rows),
            to_state="open",
            at__gte=timezone.now() - OPENING_LOOKBACK,
        )
        .order_by("name", "-at")
        .values_list("name", "failure_rate", "at")
    )
    for name, failure_rate, at in events:
        row = open_rows[name]
        if row.opened_since is None:  # the newest opening: what decided, and since when
            row.opened_at, row.opened_since = failure_rate, at


def rejected_subjects(
    environment: Environment, limiters: list[str]
) -> dict[str, list[tuple[str, float]]]:
    """The subjects each limiter rejected most (``history.top_rejected``); none if unreadable."""
    if not limiters:
        return {}
    try:
        top = top_rejected(get_redis(), environment.keys(), limiters)
    except redis.RedisError:
        return {}
    except UNREADABLE as exc:
        _unreadable(environment, "rejected subjects", exc)
        return {}
    _readable(environment, "rejected subjects")
    return top


def render_rows(
    environment: Environment, changed: set[str], variants: dict[str, dict[str, bool]]
) -> dict[str, dict[str, str]]:
    """Each variant's HTML per row (``kind:name``, and ``@summary``), from one data read.

    The rows' HTML is the page's (``row_html``): a row whose values have not
    changed since it was last rendered is taken as it is, not rendered again.
    """
    fields = {c for c in changed if not c.startswith("@")}
    context = overview(environment, only=fields)
    rendered: dict[str, dict[str, str]] = {variant: {} for variant in variants}
    for kind_rows in context["rows"].values():
        for row in kind_rows:
            for variant, can in variants.items():
                rendered[variant][row.field] = row_html(row, operate=bool(can.get("operate")))
    summary = get_template("live/_sync_summary.html").render({**context, "oob": True})
    for variant in variants:
        rendered[variant]["@summary"] = summary
    return rendered


def render_push(
    environment: Environment,
    changed: set[str],
    can: dict[str, bool],
    focus: str | None = None,
) -> str:
    """The HTML fragments a websocket push carries: each swaps its element by id.

    ``focus`` (``kind:name``) is set for a policy's own page, which shows that
    policy's live section instead of the overview's rows.
    """
    if focus is not None:
        kind, _, name = focus.partition(":")
        policy = find_policy(environment, kind, name)
        if policy is None or (focus not in changed and "@instances" not in changed):
            return ""
        return render_to_string(
            "live/_policy_live.html", {**policy_live(policy), "can": can, "oob": True}
        )
    return "\n".join(render_rows(environment, changed, {"one": can})["one"].values())


def policy_live(policy: Policy) -> dict[str, Any]:
    """The live section of a policy's page: fleet figures, per-instance states, override."""
    environment = policy.environment
    context = overview(environment, only={policy.field})
    rows = context["rows"].get(policy.kind, [])
    instances: list[tuple[str, str, float]] = []
    if policy.kind == "breaker" and context["snapshot"].redis_ok:
        try:
            alive = {i.instance for i in context["snapshot"].instances}
            instances = [
                item
                for item in breaker_instances(get_redis(), environment.keys(), policy.name)
                if item[0] in alive
            ]
            _readable(environment, "breaker states")
        except redis.RedisError:
            instances = []
        except UNREADABLE as exc:
            _unreadable(environment, "breaker states", exc)
            instances = []
    return {
        "policy": policy,
        "row": rows[0] if rows else None,
        "badge": override_badge(rows[0].override) if rows and rows[0].override else None,
        "instances": instances,
        "snapshot": context["snapshot"],
        "override_actions": OVERRIDE_ACTIONS,
    }
