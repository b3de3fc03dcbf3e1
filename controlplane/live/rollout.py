"""After a save: was the revision published, and how many instances applied it?

The policy's page polls ``rollout_status`` once a second (htmx, ``hx-trigger="load
delay:1s"`` on each answer) until every live instance reports the revision, or
``ROLLOUT_TIMEOUT`` seconds after the save, when it names the instances that lag.
Instances report their revision with each heartbeat (every 5 s by default,
docs/protocol.md 12.2), so the count climbs in steps.
"""

from __future__ import annotations

import math
import time
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from controlplane.accounts.roles import Role, grants_of, role_required
from controlplane.live.widgets import live_snapshot
from controlplane.policies.access import environment_for
from controlplane.policies.models import Environment

ROLLOUT_TIMEOUT = 30.0  # seconds after the save: six default heartbeats


def rollout(environment: Environment, revision: int, since: float) -> dict[str, Any]:
    """What the fragment says about ``revision``, saved at ``since`` (Unix time)."""
    snapshot = live_snapshot(environment, policies=[])  # instances and meta: no counters
    elapsed = max(0.0, time.time() - since)
    timed_out = elapsed >= ROLLOUT_TIMEOUT
    published = (
        snapshot.redis_ok
        and snapshot.published_revision is not None
        and snapshot.published_revision >= revision
    )
    instances = snapshot.instances
    lagging = [i for i in instances if i.revision < revision]
    done = timed_out or (published and not lagging)
    return {
        "environment": environment,
        "revision": revision,
        "since": since,
        "redis_ok": snapshot.redis_ok,
        "published": published,
        "total": len(instances),
        "applied": len(instances) - len(lagging),
        "lagging": lagging,
        "timed_out": timed_out,
        "done": done,
        "waited": int(min(elapsed, ROLLOUT_TIMEOUT)),
    }


@role_required(Role.VIEWER)
@require_GET
def rollout_status(request: HttpRequest, environment: str, revision: int) -> HttpResponse:
    """The "published as revision N; applied by X of Y instances" fragment, polled."""
    env = environment_for(grants_of(request.user), Role.VIEWER, environment)
    try:
        since = float(request.GET.get("since", ""))
    except ValueError:
        since = math.nan
    if not math.isfinite(since):
        since = time.time() - ROLLOUT_TIMEOUT  # no start given: answer once, finally
    since = min(since, time.time())
    return render(request, "live/_rollout.html", rollout(env, revision, since))
