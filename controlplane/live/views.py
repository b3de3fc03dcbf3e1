from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import redis
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from controlplane.accounts.actors import Actor
from controlplane.accounts.roles import Role, abilities_in, grants_of, role_required
from controlplane.live.history import (
    RATE_WINDOW,
    SERIES,
    SPARKLINES,
    Instance,
    read_history,
    read_minutes,
)
from controlplane.live.home import home_context
from controlplane.live.models import BreakerEvent, DiscoveredName
from controlplane.live.widgets import live_snapshot, overview, table_rows
from controlplane.policies.access import environment_for, environments_for
from controlplane.policies.actions import do_create_policy
from controlplane.policies.models import Environment, Override, PolicyVersion
from controlplane.policies.overrides import (
    OPERATOR_ACTIONS,
    RedisUnavailableError,
    active_overrides,
    do_clear_override,
    do_purge_cache,
    do_reset_breaker,
    do_set_override,
)
from controlplane.policies.request_views import announce_opened, propose
from controlplane.policies.requests import Proposal
from controlplane.policies.views import confirm_saved
from controlplane.protocol.schema import PolicyError
from controlplane.redis_connection import get_redis

INSTANCES_PER_PAGE = 100  # a fleet of 10,000 is searched and paged, never one table

# What each override button does: (kind, action) -> state to set, or a verb.
ACTIONS = {(kind, a.action): a.does for kind, actions in OPERATOR_ACTIONS.items() for a in actions}


@role_required(Role.VIEWER)
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    """What is wrong right now, in each environment the user may view (``live/home.py``)."""
    environments = environments_for(grants_of(request.user))
    return render(
        request, "live/home.html", {**home_context(environments), "rate_window": RATE_WINDOW}
    )


def _environment(request: HttpRequest, name: str, needed: Role = Role.VIEWER) -> Environment:
    """The environment ``name``, if the user holds ``needed`` in it (else 403)."""
    return environment_for(grants_of(request.user), needed, name)


@role_required(Role.VIEWER)
@require_GET
def live_overview(request: HttpRequest, environment: str) -> HttpResponse:
    env = _environment(request, environment)
    overrides = active_overrides(env)
    context = overview(env, overrides=overrides)
    # The banner: emergency actions in force, which no approval held back (read once).
    context["overrides_in_force"] = sorted(overrides.values(), key=lambda o: o.created_at)
    context["can"] = can = abilities_in(request.user, environment)
    context["row_html"] = {
        kind: table_rows(rows, operate=can["operate"]) for kind, rows in context["rows"].items()
    }
    return render(request, "live/overview.html", context)


@role_required(Role.VIEWER)
@require_GET
def sparklines(request: HttpRequest, environment: str) -> JsonResponse:
    """The overview rows' last 15 minutes, per minute (``history.read_minutes``)."""
    env = _environment(request, environment)
    fields = {
        f"{kind}:{name}"
        for kind, name in env.policies.filter(deleted=False, kind__in=SPARKLINES).values_list(
            "kind", "name"
        )
    }
    try:
        data = read_minutes(get_redis(), env.keys(), fields)
    except redis.RedisError:
        return JsonResponse({"error": "Redis cannot be reached"}, status=503)
    return JsonResponse(data)


@role_required(Role.VIEWER)
@require_GET
def instances(request: HttpRequest, environment: str) -> HttpResponse:
    """The instances, problems first, ``INSTANCES_PER_PAGE`` at a time: searched by ``q``
    (service, instance, host or implementation) and filtered by ``status``."""
    env = _environment(request, environment)
    snapshot = live_snapshot(env, policies=[])  # the instances alone: no figure, no state
    implementations = Counter(i.implementation_label for i in snapshot.instances)
    sync = snapshot.sync(env.revision)
    by_status = {
        "behind": sync.behind,
        "applying": sync.applying,
        "in_sync": sync.in_sync,
        "gone": sync.gone,
    }
    query = request.GET.get("q", "").strip()[:200]
    wanted = request.GET.get("status", "")
    if wanted not in by_status:
        wanted = ""
    rows = [
        (instance, status)
        for status, listed in by_status.items()
        if wanted in ("", status)
        for instance in sorted(listed, key=lambda i: (i.service, i.instance))
        if _instance_matches(instance, query.casefold())
    ]
    page = Paginator(rows, INSTANCES_PER_PAGE).get_page(request.GET.get("page"))
    return render(
        request,
        "live/instances.html",
        {
            "environment": env,
            "snapshot": snapshot,
            "sync": sync,
            "rows": page.object_list,
            "page": page,
            "matching": len(rows),
            "query": query,
            "status": wanted,
            "kept": _kept(request, "page"),
            "counts": {status: len(listed) for status, listed in by_status.items()},
            "implementations": implementations.most_common(),
        },
    )


def _kept(request: HttpRequest, *dropped: str) -> str:
    """The page's query string without ``dropped``: what a pager's links keep."""
    kept = request.GET.copy()
    for name in dropped:
        kept.pop(name, None)
    return kept.urlencode()


def _instance_matches(instance: Instance, query: str) -> bool:
    """Whether ``query`` (case-folded) is part of what the instances page shows of it."""
    if not query:
        return True
    shown = (instance.service, instance.instance, instance.host, instance.implementation_label)
    return any(query in text.casefold() for text in shown)


@role_required(Role.VIEWER)
@require_GET
def discovered(request: HttpRequest, environment: str) -> HttpResponse:
    env = _environment(request, environment)
    managed = set(env.policies.filter(deleted=False).values_list("kind", "name"))
    names = [
        d for d in DiscoveredName.objects.filter(environment=env) if (d.kind, d.name) not in managed
    ]
    can = abilities_in(request.user, env.name)
    return render(request, "live/discovered.html", {"environment": env, "names": names, "can": can})


@role_required(Role.EDITOR)
@require_POST
def adopt(request: HttpRequest, environment: str, discovered_id: int) -> HttpResponse:
    """Create a policy from the code defaults a client reported."""
    env = _environment(request, environment, Role.EDITOR)
    found = get_object_or_404(DiscoveredName, pk=discovered_id, environment=env)
    reason = request.POST.get("reason") or "Adopted from the code defaults"
    try:
        if env.guarded:  # a new policy waits for approval like any other change
            proposal = Proposal("create", found.kind, found.name, dict(found.defaults))
            return announce_opened(request, propose(request, env, [proposal], reason))
        do_create_policy(
            env,
            found.kind,
            found.name,
            found.defaults,
            Actor.from_request(request),
            reason,
            audit_action="policy.adopt",
        )
    except PolicyError as exc:
        messages.error(request, f"Could not adopt {found.name}: {exc}")
        return redirect("live-discovered", env.name)
    confirm_saved(request, f"Adopted {found.kind} {found.name}; it is now managed here.")
    return redirect("policy-detail", env.name, found.kind, found.name)


def _expiry(post: QueryDict) -> datetime | None:
    """When an override ends, from the panel's choice: None is "until lifted".

    ``expires_in_minutes`` is a preset (``10``, ``60``, ``240``), ``custom`` (then
    ``custom_minutes`` holds the number) or empty; ``expires_at`` an absolute time
    with its offset (ISO 8601), for a caller that knows the moment rather than the delay.
    """
    minutes = post.get("expires_in_minutes", "").strip()
    field = "expires_in_minutes"
    if minutes == "custom":
        minutes, field = post.get("custom_minutes", "").strip(), "custom_minutes"
        if not minutes:
            raise PolicyError({field: ["Enter a number of minutes, or pick a preset."]})
    if minutes:
        try:
            delay = timedelta(minutes=float(minutes))
            if delay <= timedelta(0):
                raise ValueError(minutes)
            return timezone.now() + delay
        except (ValueError, OverflowError):
            raise PolicyError({field: ["Enter a number of minutes above 0."]}) from None
    absolute = post.get("expires_at", "").strip()
    if not absolute:
        return None
    try:
        moment = datetime.fromisoformat(absolute)
    except ValueError:
        raise PolicyError({"expires_at": ["Enter a date and time (ISO 8601)."]}) from None
    if timezone.is_naive(moment):
        raise PolicyError({"expires_at": ["Add the time zone offset, e.g. +01:00 or Z."]})
    return moment


# What the confirmation says an action did, by its value in the form.
DONE = {a.action: a.label for actions in OPERATOR_ACTIONS.values() for a in actions} | {
    "lift": "Override lifted"
}


@role_required(Role.OPERATOR)
@require_POST
def override(request: HttpRequest, environment: str) -> HttpResponse:
    """Trip, force closed, disable, reset, block, bypass, purge or lift, with a reason.

    One action per request, audited once. While Redis is down, an override, a
    lift and a purge are saved and audited, and reach the instances when Redis
    answers again; a reset is refused.
    """
    env = _environment(request, environment, Role.OPERATOR)
    kind, _, name = request.POST.get("policy", "").partition(":")
    if not name:
        kind, name = request.POST.get("kind", ""), request.POST.get("name", "")
    # The panel's "Lift the override" is a button of its own, whatever action is picked.
    actions = request.POST.getlist("action")
    action = "lift" if "lift" in actions else (actions[-1] if actions else "")
    reason = request.POST.get("reason", "").strip()
    actor = Actor.from_request(request)
    back = request.POST.get("next", "")
    # A path of this site only: anything else would be taken for a view's name.
    if not back.startswith("/") or not url_has_allowed_host_and_scheme(
        back, allowed_hosts={request.get_host()}
    ):
        back = ""
    until = ""
    try:
        if not name:
            raise PolicyError({"policy": ["Pick a policy with the Act button of its row."]})
        if action == "lift":
            do_clear_override(env, kind, name, actor, reason)
        elif (kind, action) not in ACTIONS:
            choices = ", ".join(a for k, a in ACTIONS if k == kind) or "none for this kind"
            raise PolicyError({"action": [f"Choose one of: {choices}, lift."]})
        elif ACTIONS[(kind, action)] == "reset":
            do_reset_breaker(env, name, actor, reason)
        elif ACTIONS[(kind, action)] == "purge":
            do_purge_cache(env, name, actor, reason)
        else:
            expires_at = _expiry(request.POST)
            do_set_override(env, kind, name, ACTIONS[(kind, action)], actor, reason, expires_at)
            until = " until lifted" if expires_at is None else f" until {_shown(expires_at)}"
    except (PolicyError, RedisUnavailableError) as exc:
        messages.error(request, f"Nothing was changed. {exc}")
    else:
        confirm_saved(request, f"{DONE[action]}: {kind} {name}{until}.")
    return redirect(back or "live-overview", *([] if back else [env.name]))


def _shown(moment: datetime) -> str:
    local = timezone.localtime(moment)
    return f"{local:%Y-%m-%d %H:%M} {local.tzname()}"


@role_required(Role.VIEWER)
@require_GET
def breaker_events(request: HttpRequest, environment: str, name: str) -> HttpResponse:
    env = _environment(request, environment)
    events = BreakerEvent.objects.filter(environment=env, name=name)[:200]
    return render(
        request, "live/breaker_events.html", {"environment": env, "name": name, "events": events}
    )


@role_required(Role.VIEWER)
@require_GET
def series(request: HttpRequest, environment: str, kind: str, name: str) -> JsonResponse:
    """Per-second figures of one policy for its charts (the last 15 minutes by default)."""
    env = _environment(request, environment)
    if kind not in SERIES:
        raise Http404("No live figures for this kind.")
    try:
        seconds = max(10, min(int(request.GET.get("seconds", 900)), 900))
    except ValueError:
        seconds = 900
    try:
        data = read_history(get_redis(), env.keys(), f"{kind}:{name}", SERIES[kind], seconds)
    except redis.RedisError:
        return JsonResponse({"error": "Redis cannot be reached"}, status=503)
    data["marks"] = _chart_marks(env, kind, name, since=timezone.now() - timedelta(seconds=seconds))
    return JsonResponse(data)


MARKS_SHOWN = 50  # the newest changes and overrides of a chart's window


def _chart_marks(env: Environment, kind: str, name: str, since: datetime) -> list[dict[str, Any]]:
    """The policy's changes and overrides within a chart's window, for its vertical marks."""
    marks = [
        {
            "t": version.created_at.timestamp(),
            "kind": "change",
            "label": f"v{version.version} {version.get_action_display()} by "
            f"{version.author_name}" + (f": {version.reason}" if version.reason else ""),
        }
        for version in PolicyVersion.objects.filter(
            policy__environment=env, policy__kind=kind, policy__name=name, created_at__gte=since
        ).order_by("-created_at")[:MARKS_SHOWN]
    ]
    marks += [
        {
            "t": override.created_at.timestamp(),
            "kind": "override",
            "label": (f"{override.label} by " if override.state else "override lifted by ")
            + override.actor_name
            + (f": {override.reason}" if override.reason else ""),
        }
        for override in Override.objects.filter(
            environment=env, kind=kind, name=name, created_at__gte=since
        ).order_by("-created_at")[:MARKS_SHOWN]
    ]
    return sorted(marks, key=lambda mark: mark["t"])
