from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

from controlplane.protocol.documents import OVERRIDE_STATES
from controlplane.protocol.keys import NAME_PATTERN, KeyLayout, policy_field
from controlplane.protocol.schema import KIND_LABELS, InvalidValue, PolicyError, check_text

name_validator = RegexValidator(
    NAME_PATTERN, "Use letters, digits, dots, dashes and underscores, starting with a letter."
)


class Environment(models.Model):
    """A set of policies published together (``production``, ``staging``...)."""

    name = models.CharField(max_length=100, unique=True, validators=[name_validator])
    description = models.CharField(max_length=300, blank=True)
    # Raised by one for every change in the environment; the revision of a
    # published document orders it against every other one.
    revision = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    # The environment's rules for changes to its policies, set by admins. Overrides
    # (trip, force closed, block, purge) are never held for approval: they exist for
    # incidents; they keep their own reason, expiry and audit.
    require_reason = models.BooleanField(
        default=False, help_text="Every change to a policy must say why."
    )
    approvals_required = models.PositiveSmallIntegerField(
        default=0,
        help_text="How many other people must approve a change before it applies "
        "(0: changes apply at once).",
    )
    approver_role = models.CharField(
        max_length=20,
        default="editor",
        choices=[("editor", "editor"), ("admin", "admin")],
        help_text="The least role, in this environment, of those who may approve.",
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def guarded(self) -> bool:
        """Whether changes to its policies wait for approval (a change request)."""
        return self.approvals_required > 0

    @property
    def approvals_to_apply(self) -> int:
        """How many approvals a request here needs now: the rule, but at least one (a
        request opened while the environment was guarded, or through the API, still
        waits for someone else)."""
        return max(self.approvals_required, 1)

    def keys(self) -> KeyLayout:
        return KeyLayout(self.name, settings.REDIS_KEY_PREFIX)


class Kind(models.TextChoices):
    BREAKER = "breaker", KIND_LABELS["breaker"]
    RATE_LIMIT = "rate_limit", KIND_LABELS["rate_limit"]
    CACHE = "cache", KIND_LABELS["cache"]
    CONFIG = "config", KIND_LABELS["config"]


class Policy(models.Model):
    """The current state of one policy; its history is in ``PolicyVersion``.

    A deleted policy keeps its row (``deleted``), so its history stays whole,
    it is published as a tombstone, and creating it again continues the
    version numbers.
    """

    environment = models.ForeignKey(Environment, on_delete=models.PROTECT, related_name="policies")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    name = models.CharField(max_length=100, validators=[name_validator])
    spec: models.JSONField[dict[str, Any], dict[str, Any]] = models.JSONField(default=dict)
    version = models.PositiveIntegerField(default=0)
    revision = models.BigIntegerField(default=0)
    deleted = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.CharField(max_length=150, blank=True)
    # Metadata for people finding policies, kept here and not in the spec: a change
    # of them is audited but is no new version and is not published (clients never
    # read them). Validated by check_tags and check_team.
    tags: models.JSONField[list[str], list[str]] = models.JSONField(default=list, blank=True)
    team = models.CharField(max_length=100, blank=True)

    class Meta:
        ordering = ["environment__name", "kind", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["environment", "kind", "name"], name="policy_unique_name_per_kind"
            )
        ]
        verbose_name_plural = "policies"
        permissions = [("override_policy", "Can trip, reset and override policies")]

    def __str__(self) -> str:
        return f"{self.environment.name}/{self.field}"

    @property
    def field(self) -> str:
        """The policy's field in the environment's Redis hash."""
        return policy_field(self.kind, self.name)


class PolicyVersion(models.Model):
    """One immutable version of a policy: who changed it, when, why, and its full content."""

    class Action(models.TextChoices):
        CREATE = "create"
        UPDATE = "update"
        DELETE = "delete"
        ROLLBACK = "rollback"

    policy = models.ForeignKey(Policy, on_delete=models.PROTECT, related_name="versions")
    version = models.PositiveIntegerField()
    revision = models.BigIntegerField()
    action = models.CharField(max_length=20, choices=Action.choices)
    spec: models.JSONField[dict[str, Any], dict[str, Any]] = models.JSONField(default=dict)
    deleted = models.BooleanField(default=False)
    # The author's name is kept as text too, so deleting a user keeps the record.
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    author_name = models.CharField(max_length=150)
    # The bound of every reason (a change's, an override's, a reset's): see check_reason.
    reason = models.TextField(blank=True, max_length=1000)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["policy", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["policy", "version"], name="policy_version_unique")
        ]

    def __str__(self) -> str:
        return f"{self.policy} v{self.version}"


def max_length(model: type[models.Model], field: str) -> int:
    """The most characters ``model.field`` may hold, as the model declares it."""
    length = getattr(model._meta.get_field(field), "max_length", None)
    if not isinstance(length, int):
        raise TypeError(f"{model.__name__}.{field} declares no max_length")
    return length


def check_length(value: str, model: type[models.Model], field: str, *, name: str = "") -> str:
    """Return ``value`` if it fits ``model.field``, else raise ``PolicyError`` naming
    ``name`` (default: the field), so the database never has to refuse it."""
    limit = max_length(model, field)
    if len(value) > limit:
        raise PolicyError(
            {name or field: [f"Use at most {limit} characters (this has {len(value)})."]}
        )
    return value


MAX_TAGS = 20
MAX_TAG_LENGTH = 50
TAG_PATTERN = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\Z")


def check_tags(value: Any, *, name: str = "tags") -> list[str]:
    """The tags of a policy, sorted and without repeats, from a list of slugs or a text
    separating them with commas or spaces; else ``PolicyError`` naming ``name``."""
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    if not isinstance(value, Sequence) or not all(isinstance(tag, str) for tag in value):
        raise PolicyError({name: ["Enter a list of tags."]})
    tags = sorted({tag.strip().lower() for tag in value if tag.strip()})
    problems = [
        f"{tag[:60]!r} is not a tag: use lower-case letters, digits and dashes "
        f"(like tier-1), at most {MAX_TAG_LENGTH} characters."
        for tag in tags
        if len(tag) > MAX_TAG_LENGTH or not TAG_PATTERN.match(tag)
    ]
    if len(tags) > MAX_TAGS:
        problems.append(f"Use at most {MAX_TAGS} tags (this has {len(tags)}).")
    if problems:
        raise PolicyError({name: problems})
    return tags


def check_team(value: Any, *, name: str = "team") -> str:
    """The team that owns a policy: one line of text within the field's bound."""
    if not isinstance(value, str):
        raise PolicyError({name: ["Enter the owner team's name as text."]})
    team = value.strip()
    try:
        check_text(team)
    except InvalidValue as exc:
        raise PolicyError({name: [str(exc)]}) from None
    if any(ch in team for ch in "\r\n\t"):
        raise PolicyError({name: ["Write the team's name on one line."]})
    return check_length(team, Policy, "team", name=name)


def check_reason(reason: str, *, name: str = "reason") -> str:
    """Every reason (of a change, an override, a reset, an import) has one bound."""
    return check_length(reason, PolicyVersion, "reason", name=name)


class OverrideQuerySet(models.QuerySet["Override"]):
    """Overrides read as the fleet sees them: the newest row of each policy decides."""

    def newest(self) -> OverrideQuerySet:
        """The newest row of every overridden policy, lifted ones included: one query."""
        newer = Override.objects.filter(
            environment=models.OuterRef("environment"),
            kind=models.OuterRef("kind"),
            name=models.OuterRef("name"),
        ).order_by("-revision")
        return self.filter(revision=models.Subquery(newer.values("revision")[:1]))

    def in_force(self, now: datetime) -> OverrideQuerySet:
        """The overrides that hold at ``now``: newest of their policy, set, not expired."""
        return (
            self.newest()
            .exclude(state="")
            .filter(models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now))
        )

    def expired(self, now: datetime) -> OverrideQuerySet:
        """The overrides still set whose expiry has passed at ``now``: due to be lifted."""
        return self.newest().exclude(state="").filter(expires_at__lte=now)


class Override(models.Model):
    """A manual override set by an operator, kept apart from the policy it overrides.

    Each set or clear is a row; the newest row of a policy says what holds now.
    Tripping a breaker never rewrites the stored policy. The table keeps the
    name it had when overrides lived in the live app (``live_override``).
    """

    STATES = [
        (state, state.replace("_", " ")) for states in OVERRIDE_STATES.values() for state in states
    ]

    environment = models.ForeignKey(Environment, on_delete=models.PROTECT, related_name="overrides")
    kind = models.CharField(max_length=20)
    name = models.CharField(max_length=100, validators=[name_validator])
    # Empty: the override was lifted (by hand or because it expired).
    state = models.CharField(max_length=20, choices=STATES, blank=True)
    reason = models.TextField(blank=True)
    actor_name = models.CharField(max_length=150)
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revision = models.BigIntegerField()

    objects = OverrideQuerySet.as_manager()

    class Meta:
        db_table = "live_override"
        ordering = ["-revision"]
        indexes = [
            models.Index(
                fields=["environment", "kind", "name", "-revision"],
                name="live_overri_environ_1806fa_idx",
            )
        ]

    def __str__(self) -> str:
        return f"{self.environment}/{self.kind}:{self.name} {self.state or 'lifted'}"

    @property
    def field(self) -> str:
        return f"{self.kind}:{self.name}"

    @property
    def label(self) -> str:
        """The state as people read it (``forced open``), empty once lifted."""
        return self.get_state_display() if self.state else ""

    def in_force(self, now: datetime) -> bool:
        """Whether this row, if it is its policy's newest, holds at ``now``."""
        return bool(self.state) and (self.expires_at is None or self.expires_at > now)


class ChangeRequest(models.Model):
    """A proposed change to policies of a guarded environment, waiting for approval.

    It holds one item per policy it changes (an import holds many), each with the
    version it was based on; it applies only while every base is still the
    policy's current version, through the same actions as a direct edit.
    """

    class Status(models.TextChoices):
        OPEN = "open"  # waiting for approvals
        APPROVED = "approved"  # approved, waiting for its apply-at time or a rebase
        APPLIED = "applied"
        REJECTED = "rejected"
        WITHDRAWN = "withdrawn"

    environment = models.ForeignKey(
        Environment, on_delete=models.PROTECT, related_name="change_requests"
    )
    title = models.CharField(max_length=200)
    reason = models.TextField(blank=True, max_length=1000)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.OPEN)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="change_requests",
    )
    author_name = models.CharField(max_length=150)
    author_token = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # When to apply once approved (None: at once).
    apply_at = models.DateTimeField(null=True, blank=True)
    applied_at = models.DateTimeField(null=True, blank=True)
    # Why the last attempt to apply it failed (a base that moved): it needs a rebase.
    blocked_reason = models.TextField(blank=True)
    closed_by_name = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["environment", "status"], name="changereq_env_status")]

    def __str__(self) -> str:
        return f"#{self.pk} {self.title}"

    @property
    def is_pending(self) -> bool:
        return self.status in (self.Status.OPEN, self.Status.APPROVED)


class ChangeItem(models.Model):
    """One policy's change within a request: what it was based on and what it proposes."""

    class Op(models.TextChoices):
        CREATE = "create"
        UPDATE = "update"
        DELETE = "delete"
        ROLLBACK = "rollback"

    request = models.ForeignKey(ChangeRequest, on_delete=models.CASCADE, related_name="items")
    op = models.CharField(max_length=20, choices=Op.choices)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    name = models.CharField(max_length=100, validators=[name_validator])
    # The policy's version the change was made against (0: it did not exist), and
    # its spec then (None: absent or deleted), for the three-way view of a rebase.
    base_version = models.PositiveIntegerField(default=0)
    base_spec: models.JSONField[dict[str, Any] | None, dict[str, Any] | None] = models.JSONField(
        null=True, blank=True
    )
    # What it proposes (None: the policy is deleted).
    spec: models.JSONField[dict[str, Any] | None, dict[str, Any] | None] = models.JSONField(
        null=True, blank=True
    )
    # None: keep the policy's.
    tags: models.JSONField[list[str] | None, list[str] | None] = models.JSONField(
        null=True, blank=True
    )
    # None keeps the policy's team, "" clears it: both are needed.
    team = models.CharField(max_length=100, null=True, blank=True)  # noqa: DJ001
    # For a rollback: the version whose content it restores.
    rollback_to = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["request", "kind", "name"]

    def __str__(self) -> str:
        return f"{self.op} {self.kind}:{self.name}"

    @property
    def field(self) -> str:
        return policy_field(self.kind, self.name)


class ChangeReview(models.Model):
    """A reviewer's decision on a request; a rebase dismisses the approvals given before."""

    class Decision(models.TextChoices):
        APPROVE = "approve"
        REJECT = "reject"

    request = models.ForeignKey(ChangeRequest, on_delete=models.CASCADE, related_name="reviews")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    reviewer_name = models.CharField(max_length=150)
    decision = models.CharField(max_length=20, choices=Decision.choices)
    comment = models.TextField(blank=True, max_length=1000)
    dismissed = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"{self.reviewer_name} {self.decision} #{self.request_id}"
