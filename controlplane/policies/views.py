from __future__ import annotations

import logging
from collections import defaultdict

import redis
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from controlplane.accounts.roles import Role, role_required
from controlplane.policies.models import Environment, Policy
from controlplane.protocol.documents import PolicyDocument, ProtocolError
from controlplane.redis_connection import get_redis

logger = logging.getLogger(__name__)


def _published_versions(environments: list[Environment]) -> dict[str, dict[str, int]] | None:
    """Return ``{environment: {field: version}}`` as Redis holds it, or None if unreachable."""
    try:
        with get_redis().pipeline(transaction=False) as pipe:
            for environment in environments:
                pipe.hgetall(environment.keys().policies)
            hashes = pipe.execute()
    except redis.RedisError as exc:
        logger.warning("Dashboard cannot read Redis: %s", exc)
        return None
    published: dict[str, dict[str, int]] = {}
    for environment, documents in zip(environments, hashes, strict=True):
        versions = published[environment.name] = {}
        for field, raw in documents.items():
            try:
                versions[field] = PolicyDocument.decode(raw).version
            except ProtocolError:
                versions[field] = -1
    return published


@role_required(Role.VIEWER)
@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    environments = list(Environment.objects.all())
    policies = Policy.objects.filter(deleted=False).select_related("environment")
    by_environment: dict[int, list[Policy]] = defaultdict(list)
    for policy in policies:
        by_environment[policy.environment_id].append(policy)
    published = _published_versions(environments)
    rows = [
        {
            "environment": environment,
            "policies": [
                {
                    "policy": policy,
                    "published_version": (published or {})
                    .get(environment.name, {})
                    .get(policy.field),
                }
                for policy in by_environment[environment.pk]
            ],
        }
        for environment in environments
    ]
    return render(
        request,
        "policies/dashboard.html",
        {"rows": rows, "redis_reachable": published is not None},
    )
