"""Example environments and policies, loaded by ``make run`` for a first look."""

from __future__ import annotations

from typing import Any

from controlplane.accounts.actors import Actor
from controlplane.policies.actions import do_create_environment, do_create_policy
from controlplane.policies.models import Environment

EXAMPLES: dict[str, list[tuple[str, str, dict[str, Any]]]] = {
    "production": [
        (
            "breaker",
            "payments",
            {
                "failure_rate_threshold": 50,
                "window_size": 20,
                "minimum_calls": 10,
                "open_for": "10s",
                "slow_call_duration": "1s",
            },
        ),
        ("breaker", "inventory", {"window_type": "time", "window_size": 60, "open_for": "1m"}),
        (
            "rate_limit",
            "api",
            {"algorithm": "token_bucket", "limit": 100, "period": "1m", "burst": 20, "key": "user"},
        ),
        (
            "rate_limit",
            "login",
            {
                "algorithm": "sliding_window",
                "limit": 5,
                "period": "15m",
                "key": "ip",
                "on_redis_error": "deny",
            },
        ),
        ("cache", "prices", {"ttl": "30s", "stale_ttl": "10s", "local_size": 1000}),
        (
            "config",
            "checkout.max_items",
            {
                "value_type": "integer",
                "value": 50,
                "minimum": 1,
                "maximum": 500,
                "description": "Most items one order may hold.",
            },
        ),
        (
            "config",
            "checkout.banner",
            {"value_type": "string", "value": "", "description": "Text shown above the basket."},
        ),
    ],
    "staging": [
        ("breaker", "payments", {"failure_rate_threshold": 25, "open_for": "10s"}),
        ("rate_limit", "api", {"algorithm": "gcra", "limit": 1000, "period": "1m", "key": "user"}),
    ],
}

# The examples' tags and owner teams (by policy name, the same in every environment),
# so the demo's lists have something to filter by.
EXAMPLE_OWNERS: dict[str, tuple[list[str], str]] = {
    "payments": (["payments", "tier-1"], "Payments"),
    "inventory": (["catalogue"], "Storefront"),
    "api": (["edge", "tier-1"], "Platform"),
    "login": (["edge", "security"], "Identity"),
    "prices": (["catalogue"], "Storefront"),
    "checkout.max_items": (["checkout"], "Payments"),
    "checkout.banner": (["checkout"], "Storefront"),
}


def load_examples() -> list[str]:
    """Create the example environments and policies that do not exist yet."""
    actor = Actor.system("examples")
    created: list[str] = []
    for env_name, policies in EXAMPLES.items():
        environment = Environment.objects.filter(name=env_name).first()
        if environment is None:
            environment = do_create_environment(env_name, actor)
        existing = set(environment.policies.values_list("kind", "name"))
        for kind, name, spec in policies:
            if (kind, name) not in existing:
                tags, team = EXAMPLE_OWNERS.get(name, ([], ""))
                do_create_policy(
                    environment, kind, name, spec, actor, "Example policy", tags=tags, team=team
                )
                created.append(f"{env_name}/{kind}:{name}")
    return created
