"""The live widgets: each one's data, built once for the first render and every push."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import redis
from django.db.models import Q
from django.template.loader import get_template, render_to_string
from django.urls import reverse
from django.utils.html import format_html

from controlplane.live.actions import active_overrides
from controlplane.live.models import Override
from controlplane.live.state import (
    LiveSnapshot,
    PolicyRates,
    breaker_instances,
    read_snapshot,
    top_rejected,
)
from controlplane.policies.models import Environment, Policy
from controlplane.redis_connection import get_redis

logger = logging.getLogger(__name__)


OVERRIDE_ACTIONS: dict[str, list[tuple[str, str]]] = {
    "breaker": [
        ("trip", "trip (forced open)"),
        ("force_closed", "force closed"),
        ("disable", "disable"),
        ("reset", "reset to closed"),
    ],
    "rate_limit": [("block_all", "block all"), ("bypass", "bypass")],
    "cache": [("purge", "purge (new generation)")],
}


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}%"


@dataclass
class Row:
    """One policy on the overview: its published settings, override and live figures.

    Everything a row shows is computed once and formatted in Python: a page of
    1,000 rows spends its time in the template engine otherwise.
    """

    policy: Policy
    rates: PolicyRates
    override: Override | None
    states: dict[str, int]
    top: list[tuple[str, float]]

    @functools.cached_property
    def name(self) -> str:
        return self.policy.name

    @functools.cached_property
    def dom_id(self) -> str:
        return f"live-{self.policy.kind}-{self.policy.name}".replace(".", "_")

    @functools.cached_property
    def observe(self) -> bool:
        return self.policy.spec.get("mode") == "observe"

    @functools.cached_property
    def reached(self) -> str:
        """The state the breaker reached by itself, by how many instances report it."""
        if not self.states:
            return "no reports"
        ordered = sorted(self.states.items(), key=lambda item: -item[1])
        return ", ".join(f"{count} {state.replace('_', '-')}" for state, count in ordered)

    @functools.cached_property
    def detail_url(self) -> str:
        return _detail_url(self.policy.environment.name, self.policy.kind, self.policy.name)

    @functools.cached_property
    def worst_state(self) -> str:
        for state in ("open", "forced_open", "half_open", "disabled", "forced_closed", "closed"):
            if self.states.get(state):
                return state
        return "unknown"

    @functools.cached_property
    def state_class(self) -> str:
        return self.worst_state.replace("_", "")

    @functools.cached_property
    def state_label(self) -> str:
        return self.worst_state.replace("_", " ")

    @functools.cached_property
    def override_label(self) -> str:
        return self.override.state.replace("_", " ") if self.override else ""

    @functools.cached_property
    def override_until(self) -> str:
        if self.override is None or self.override.expires_at is None:
            return ""
        return f" until {self.override.expires_at:%H:%M:%S}"

    @functools.cached_property
    def act_cell(self) -> str:
        return format_html(
            '<td><button type="button" class="small secondary" data-act="{}">Act</button></td>',
            self.policy.field,
        )

    @functools.cached_property
    def failure_text(self) -> str:
        return _percent(self.rates.failure_rate)

    @functools.cached_property
    def slow_text(self) -> str:
        return _percent(self.rates.slow_rate)

    @functools.cached_property
    def calls_text(self) -> str:
        return f"{self.rates.calls_per_second:.1f}"

    @functools.cached_property
    def hit_ratio_text(self) -> str:
        return _percent(self.rates.hit_ratio)

    @functools.cached_property
    def allowed_per_second(self) -> float:
        return self.rates.per_second("allowed")

    @functools.cached_property
    def rejected_per_second(self) -> float:
        return self.rates.per_second("rejected")

    @functools.cached_property
    def allowed_text(self) -> str:
        return f"{self.allowed_per_second:.1f}"

    @functools.cached_property
    def rejected_text(self) -> str:
        return f"{self.rejected_per_second:.1f}"

    @functools.cached_property
    def lookups_per_second(self) -> float:
        return sum(self.rates.per_second(c) for c in ("hits", "local_hits", "stale_hits", "misses"))

    @functools.cached_property
    def lookups_text(self) -> str:
        return f"{self.lookups_per_second:.1f}"

    @functools.cached_property
    def limit_text(self) -> str:
        spec = self.policy.spec
        period = float(spec.get("period", 0))
        shown = f"{period:g}"
        return f"{spec.get('limit')}/{shown}s"


@functools.cache
def _detail_pattern() -> str:
    return reverse("policy-detail", args=["ENV", "KIND", "NAME"])


def _detail_url(environment: str, kind: str, name: str) -> str:
    """The policy page's URL, without a URL reversal per row of a 1,000-row page."""
    return (
        _detail_pattern()
        .replace("ENV", quote(environment))
        .replace("KIND", kind)
        .replace("NAME", quote(name))
    )


def live_snapshot(environment: Environment, policies: list[str] | None = None) -> LiveSnapshot:
    try:
        return read_snapshot(get_redis(), environment.keys(), policies=policies)
    except redis.RedisError as exc:
        logger.warning("Live pages cannot read Redis: %s", exc)
        return LiveSnapshot(rates={}, breaker_states={}, instances=[], redis_ok=False)


LIVE_KINDS = ("breaker", "rate_limit", "cache")


def overview(environment: Environment, only: set[str] | None = None) -> dict[str, Any]:
    """The overview's context; with ``only``, the rows of those policy fields alone.

    A constant number of queries and Redis round trips, whatever the number of
    policies; with ``only``, the work is proportional to the rows asked for.
    """
    policies = environment.policies.filter(deleted=False, kind__in=LIVE_KINDS)
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
    selected = list(policies.order_by("kind", "name"))
    snapshot = live_snapshot(environment, None if only is None else [p.field for p in selected])
    overrides = active_overrides(environment)
    limiters = [p.name for p in selected if p.kind == "rate_limit"]
    tops: dict[str, list[tuple[str, float]]] = {}
    if limiters and snapshot.redis_ok:
        try:
            tops = top_rejected(get_redis(), environment.keys(), limiters)
        except redis.RedisError:
            tops = {}
    rows: dict[str, list[Row]] = {kind: [] for kind in LIVE_KINDS}
    for policy in selected:
        rows[policy.kind].append(
            Row(
                policy=policy,
                rates=snapshot.rates_for(policy.field),
                override=overrides.get(policy.field),
                states=snapshot.breaker_states.get(policy.name, {})
                if policy.kind == "breaker"
                else {},
                top=tops.get(policy.name, []),
            )
        )
    in_sync = sum(1 for i in snapshot.instances if i.revision >= environment.revision)
    return {
        "environment": environment,
        "rows": rows,
        "override_actions": OVERRIDE_ACTIONS,
        "snapshot": snapshot,
        "instances_in_sync": in_sync,
        "instances_behind": len(snapshot.instances) - in_sync,
    }


ROW_TEMPLATES = {
    "breaker": "live/_breaker_row.html",
    "rate_limit": "live/_limiter_row.html",
    "cache": "live/_cache_row.html",
}


def render_rows(
    environment: Environment, changed: set[str], variants: dict[str, dict[str, bool]]
) -> dict[str, dict[str, str]]:
    """Each variant's HTML per row (``kind:name``, and ``@summary``), from one data read.

    A row is rendered once, with the operators' Act cell; the variants without
    the right to operate get the same HTML without that cell.
    """
    fields = {c for c in changed if not c.startswith("@")}
    context = overview(environment, only=fields)
    rendered: dict[str, dict[str, str]] = {variant: {} for variant in variants}
    full = {"view": True, "operate": True}
    for kind, kind_rows in context["rows"].items():
        template = get_template(ROW_TEMPLATES[kind])
        for row in kind_rows:
            html = template.render({"row": row, "can": full, "oob": True})
            without_act = html.replace(row.act_cell, "", 1)
            for variant, can in variants.items():
                rendered[variant][row.policy.field] = html if can.get("operate") else without_act
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
        policy = environment.policies.filter(kind=kind, name=name, deleted=False).first()
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
        except redis.RedisError:
            instances = []
    return {
        "policy": policy,
        "row": rows[0] if rows else None,
        "instances": instances,
        "snapshot": context["snapshot"],
        "override_actions": OVERRIDE_ACTIONS,
    }
