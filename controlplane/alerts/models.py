"""The fleet's breaker states and the alert rules, with each rule's state per target.

A ``FleetBreaker`` is one breaker as the whole fleet of an environment sees it:
open while any live instance reports it open or half-open. An ``AlertRule`` is
what an environment's admins want to hear about; an ``AlertState`` is where one
rule stands for one target (a breaker, a limiter, or the instances): pending,
firing, or resolved. Rows change only by conditional updates, so replicas that
evaluate the same state at once never report a change twice.
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from controlplane.policies.models import Environment

ANY = "*"  # a rule's target meaning every breaker (or limiter)


class FleetBreaker(models.Model):
    """One breaker of an environment, fleet-wide: open or closed, and since when."""

    class State(models.TextChoices):
        CLOSED = "closed"
        OPEN = "open"

    environment = models.ForeignKey(
        Environment, on_delete=models.CASCADE, related_name="fleet_breakers"
    )
    name = models.CharField(max_length=200)
    state = models.CharField(max_length=10, choices=State.choices)
    since = models.DateTimeField(default=timezone.now)  # when it took this state
    instances_open = models.PositiveIntegerField(default=0)
    instances_reporting = models.PositiveIntegerField(default=0)
    changed_at = models.DateTimeField(default=timezone.now)  # the last evaluation that changed it

    class Meta:
        ordering = ["environment", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["environment", "name"], name="fleet_breaker_unique_per_environment"
            )
        ]

    def __str__(self) -> str:
        return f"{self.environment_id}/{self.name}: {self.state}"


class AlertRule(models.Model):
    """A condition an environment's admins want to be told about once it lasts."""

    class Kind(models.TextChoices):
        BREAKER_OPEN = "breaker_open", "Breaker open fleet-wide"
        LIMITER_REJECTING = "limiter_rejecting", "Rate limiter rejecting"
        INSTANCES_BEHIND = "instances_behind", "Instances behind the published revision"

    environment = models.ForeignKey(
        Environment, on_delete=models.CASCADE, related_name="alert_rules"
    )
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=30, choices=Kind.choices)
    # A breaker's or a limiter's name; "*" (or blank): any of them. Unused for instances.
    target = models.CharField(max_length=200, blank=True, default=ANY)
    # How long the condition must hold before the rule fires; 0: at the first evaluation.
    minutes = models.FloatField(default=5.0)
    # limiter_rejecting: the share of decisions rejected above which the condition holds.
    percent = models.FloatField(null=True, blank=True)
    enabled = models.BooleanField(default=True)
    created_by_name = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["environment", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["environment", "name"], name="alert_rule_unique_name_per_environment"
            )
        ]

    def __str__(self) -> str:
        return f"{self.environment_id}/{self.name}"

    @property
    def any_target(self) -> bool:
        return self.target in ("", ANY)

    def describe(self) -> str:
        """The rule in a sentence, as its page lists it."""
        target = "any" if self.any_target else self.target
        duration = f"for more than {self.minutes:g} min"
        if self.kind == self.Kind.BREAKER_OPEN:
            return f"Breaker {target} open fleet-wide {duration}"
        if self.kind == self.Kind.LIMITER_REJECTING:
            return f"Rate limiter {target} rejecting more than {self.percent:g} % {duration}"
        return f"Any instance behind the published revision {duration}"


class AlertState(models.Model):
    """Where one rule stands for one target: pending since, firing since, resolved at."""

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="states")
    target = models.CharField(max_length=200)
    pending_since = models.DateTimeField(null=True, blank=True)
    firing_since = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    value = models.FloatField(null=True, blank=True)  # the last figure measured
    summary = models.CharField(max_length=300, blank=True)  # said when it fired

    class Meta:
        ordering = ["rule", "target"]
        constraints = [
            models.UniqueConstraint(fields=["rule", "target"], name="alert_state_unique_target")
        ]

    def __str__(self) -> str:
        return f"{self.rule_id}/{self.target}"
