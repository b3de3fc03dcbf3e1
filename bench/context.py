from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controlplane.accounts.actors import Actor
from controlplane.policies.actions import (
    do_create_environment,
    do_create_policy,
    do_update_policy,
)
from controlplane.policies.models import Environment, Policy


@dataclass
class BenchContext:
    """What every benchmark gets: the run's Redis and a way to publish policies."""

    redis_url: str
    environment: str = "bench"

    def publish(self, kind: str, name: str, spec: dict[str, Any]) -> Policy:
        """Save a policy through the control plane's own action (commit, then publish)."""
        actor = Actor.system("bench")
        environment = Environment.objects.filter(name=self.environment).first()
        if environment is None:
            environment = do_create_environment(self.environment, actor)
        policy = Policy.objects.filter(
            environment=environment, kind=kind, name=name, deleted=False
        ).first()
        if policy is None:
            return do_create_policy(environment, kind, name, spec, actor)
        return do_update_policy(policy, spec, actor)
