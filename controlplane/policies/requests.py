"""Change requests: how changes to a guarded environment wait for approval.

An environment whose ``approvals_required`` is above zero is guarded: an edit,
create, delete, restore or import of its policies opens a ``ChangeRequest``
instead of applying (``open_request``). Reviewers holding the environment's
``approver_role`` there approve or reject it (``review``); nobody reviews their
own. Once approved by enough people it applies (``apply_request``) through the
same steps as a direct edit, each locked on the version it was based on; a
request whose base moved must be rebased first (``rebase``), which dismisses the
approvals given to what it proposed before. The author may withdraw it, and may
plan it for a time (``apply_at``): the reconciler applies due requests
(``apply_due_requests``) with the same checks at that moment.

Overrides (trip, force closed, block, purge) never go through here: they exist
for incidents. Every step is audited (``change_request.*``), with before and after.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from controlplane.accounts.actors import Actor
from controlplane.accounts.roles import Role, includes
from controlplane.audit.record import record, spec_changes
from controlplane.policies.actions import (
    create_policy,
    delete_policy,
    rollback_policy,
    update_policy,
)
from controlplane.policies.config_as_code import PlannedChange
from controlplane.policies.diff import ThreeWayDiff, rebase_spec, three_way
from controlplane.policies.models import (
    ChangeItem,
    ChangeRequest,
    ChangeReview,
    Environment,
    Policy,
    PolicyVersion,
    check_length,
    check_reason,
    check_tags,
    check_team,
)
from controlplane.protocol.schema import KIND_LABELS, PolicyError, kind_spec, validate_name
from controlplane.protocol.schema import validate_spec as validate_policy_spec

logger = logging.getLogger(__name__)

Status = ChangeRequest.Status
Op = ChangeItem.Op


@dataclass(frozen=True)
class Proposal:
    """One policy's change as its author proposes it.

    ``base_version`` is the version the author saw (None: the current one);
    ``spec`` the whole new spec (None for a delete, or a rollback: the version's);
    ``tags`` and ``team`` None keep the policy's.
    """

    op: str
    kind: str
    name: str
    spec: dict[str, Any] | None = None
    base_version: int | None = None
    tags: list[str] | None = None
    team: str | None = None
    rollback_to: int | None = None


class NeedsRebase(Exception):
    """The request cannot apply: policies it changes moved since it was based on them."""

    def __init__(self, request: ChangeRequest, moved: list[str]) -> None:
        self.request = request
        self.moved = moved
        super().__init__(
            f"Change request #{request.pk} needs a rebase: {', '.join(moved)} changed since "
            "it was proposed."
        )


def _current(environment: Environment, kind: str, name: str) -> Policy | None:
    return Policy.objects.filter(environment=environment, kind=kind, name=name).first()


def _live_spec(policy: Policy | None) -> dict[str, Any] | None:
    return None if policy is None or policy.deleted else dict(policy.spec)


def _item_for(environment: Environment, proposal: Proposal) -> ChangeItem:
    """Validate ``proposal`` against the policy as it is now; the unsaved item."""
    kind_spec(proposal.kind)
    validate_name(proposal.name)
    policy = _current(environment, proposal.kind, proposal.name)
    live = _live_spec(policy)
    version = 0 if policy is None else policy.version
    label = f"{KIND_LABELS[proposal.kind].lower()} {proposal.name!r}"
    if proposal.base_version is not None and proposal.base_version != version:
        raise PolicyError(
            {
                "base_version": [
                    f"The {label} is at version {version}, not {proposal.base_version}: "
                    "someone changed it meanwhile. Review it again."
                ]
            }
        )
    spec = proposal.spec
    if proposal.op == Op.CREATE:
        if live is not None:
            raise PolicyError({"name": [f"A {label} already exists in {environment.name}."]})
        spec = validate_policy_spec(proposal.kind, proposal.spec or {})
    elif live is None:
        raise PolicyError({"name": [f"There is no {label} in {environment.name}."]})
    elif proposal.op == Op.UPDATE:
        spec = validate_policy_spec(proposal.kind, proposal.spec or {}, base=live)
    elif proposal.op == Op.ROLLBACK:
        assert policy is not None
        target = (
            policy.versions.filter(version=proposal.rollback_to).first()
            if proposal.rollback_to is not None and proposal.rollback_to < policy.version
            else None
        )
        if target is None:
            raise PolicyError(
                {
                    "rollback_to": [
                        f"The {label} is at v{version}: it has no earlier version "
                        f"{proposal.rollback_to} to restore."
                    ]
                }
            )
        spec = None if target.deleted else validate_policy_spec(proposal.kind, target.spec)
    elif proposal.op == Op.DELETE:
        spec = None
    else:
        raise PolicyError({"op": [f"Unknown change {proposal.op!r}."]})
    return ChangeItem(
        op=proposal.op,
        kind=proposal.kind,
        name=proposal.name,
        base_version=version,
        base_spec=live,
        spec=spec,
        tags=None if proposal.tags is None else check_tags(proposal.tags),
        team=None if proposal.team is None else check_team(proposal.team),
        rollback_to=proposal.rollback_to,
    )


def _title(environment: Environment, items: Sequence[ChangeItem]) -> str:
    if len(items) == 1:
        item = items[0]
        verb = {"create": "Create", "update": "Change", "delete": "Delete"}.get(item.op)
        if item.op == Op.ROLLBACK:
            return f"Restore v{item.rollback_to} of {item.name}"
        return f"{verb} {KIND_LABELS[item.kind].lower()} {item.name}"
    return f"{len(items)} changes to {environment.name}"


def item_changes(item: ChangeItem) -> dict[str, list[Any]]:
    """What the item changes against its base, as the audit records it."""
    changes = spec_changes(item.kind, item.base_spec, item.spec)
    if item.op == Op.DELETE:
        changes["deleted"] = [False, True]
    if item.tags is not None:
        changes["tags"] = [None, item.tags]
    if item.team is not None:
        changes["team"] = [None, item.team]
    return changes


def _audit_changes(items: Sequence[ChangeItem]) -> dict[str, list[Any]]:
    """One item's changes as they are; several prefixed by their policy."""
    if len(items) == 1:
        return item_changes(items[0])
    return {
        f"{item.field}.{name}": values
        for item in items
        for name, values in item_changes(item).items()
    }


def _check_apply_at(apply_at: datetime | None) -> datetime | None:
    """``apply_at`` in UTC, if it is in the future. A time whose offset moves it past
    the calendar's end is refused here: stored, it would fail every later read."""
    if apply_at is None:
        return None
    try:
        apply_at = apply_at.astimezone(UTC)
    except OverflowError:
        raise PolicyError({"apply_at": ["The time is out of range."]}) from None
    if apply_at <= timezone.now():
        raise PolicyError({"apply_at": ["Choose a time in the future (or none: at once)."]})
    return apply_at


def open_request(
    environment: Environment,
    proposals: Sequence[Proposal],
    actor: Actor,
    reason: str,
    *,
    apply_at: datetime | None = None,
    title: str = "",
) -> ChangeRequest:
    """Open a request for ``proposals`` in ``environment``: nothing applies yet.

    Every proposal is validated now against its policy's current version (a
    stale ``base_version`` is refused, as a direct edit would be), so a request
    in the queue is always one that could apply. A reason is required.
    """
    errors: dict[str, list[str]] = {}
    reason = reason.strip()
    try:
        check_reason(reason)
        check_length(title, ChangeRequest, "title")
    except PolicyError as exc:
        errors.update(exc.errors)
    if not reason:
        errors["reason"] = ["Say why: reviewers read it before approving."]
    if not proposals:
        errors["changes"] = ["There is nothing to change."]
    # Each item applies locked on its base: a second one for the same policy never could.
    seen: set[tuple[str, str]] = set()
    for proposal in proposals:
        if (proposal.kind, proposal.name) in seen:
            errors["changes"] = [f"Change {proposal.kind} {proposal.name} once, in one item."]
        seen.add((proposal.kind, proposal.name))
    try:
        apply_at = _check_apply_at(apply_at)
    except PolicyError as exc:
        errors.update(exc.errors)
    items: list[ChangeItem] = []
    for proposal in proposals:
        try:
            items.append(_item_for(environment, proposal))
        except PolicyError as exc:
            prefix = "" if len(proposals) == 1 else f"{proposal.kind}.{proposal.name}."
            for field_name, messages in exc.errors.items():
                errors.setdefault(prefix + field_name, []).extend(messages)
    if errors:
        raise PolicyError(errors)
    with transaction.atomic(durable=True):
        request = ChangeRequest.objects.create(
            environment=environment,
            title=title or _title(environment, items),
            reason=reason,
            author=actor.user,  # type: ignore[misc]
            author_name=actor.name,
            author_token=actor.token,
            apply_at=apply_at,
        )
        for item in items:
            item.request = request
        ChangeItem.objects.bulk_create(items)
        _audit(request, actor, "open", reason, _audit_changes(items))
    return request


def _audit(
    request: ChangeRequest,
    actor: Actor,
    step: str,
    reason: str = "",
    changes: dict[str, list[Any]] | None = None,
) -> None:
    items = list(request.items.all())
    only = items[0] if len(items) == 1 else None
    record(
        actor,
        f"change_request.{step}",
        environment=request.environment.name,
        kind=only.kind if only else "change_request",
        name=only.name if only else f"#{request.pk}",
        reason=reason,
        changes={"request": [None, request.pk], **(changes or {})},
    )


def _lock(request: ChangeRequest) -> ChangeRequest:
    requests = ChangeRequest.objects.select_for_update().select_related("environment")
    return requests.get(pk=request.pk)


def _set_status(
    request: ChangeRequest, actor: Actor, status: str, step: str, reason: str = ""
) -> None:
    before = request.status
    request.status = status
    if status in (Status.REJECTED, Status.WITHDRAWN):
        request.closed_by_name = actor.name
    request.save()
    _audit(request, actor, step, reason, {"status": [before, status]})


def _same_person(user_id: int | None, name: str, actor: Actor) -> bool:
    """Whether ``actor`` is the person recorded as ``user_id`` (or, for no user, ``name``):
    their page session and each of their API tokens are one person."""
    if user_id is not None and actor.user is not None:
        return bool(user_id == actor.user.pk)
    return name == actor.name


def _is_author(request: ChangeRequest, actor: Actor) -> bool:
    return _same_person(request.author_id, request.author_name, actor)


def approvals(request: ChangeRequest) -> list[ChangeReview]:
    """The approvals that count: given to what the request proposes now."""
    return [
        review
        for review in request.reviews.all()
        if review.decision == ChangeReview.Decision.APPROVE and not review.dismissed
    ]


def review(
    request: ChangeRequest,
    actor: Actor,
    held: Role | None,
    decision: str,
    comment: str = "",
) -> ChangeRequest:
    """Approve or reject ``request`` as ``actor``, who holds ``held`` in its environment.

    Refused (``PolicyError`` naming ``decision``) to its author, to someone below the
    environment's approver role, to someone who approved it already (unless its
    approvals reach a number the environment lowered since: then it completes), and
    once it is closed. A rejection needs a comment; an approved request that has not
    applied yet (planned, or waiting for a rebase) may still be rejected: a reviewer
    who finds a problem before 09:00 must be able to stop it, not only its author.
    The approval that reaches the number the environment requires applies the
    request, unless it is planned for later; if its base moved meanwhile it stays
    approved and says it needs a rebase.
    """
    comment = comment.strip()
    check_length(comment, ChangeReview, "comment", name="comment")
    if decision not in ChangeReview.Decision.values:
        raise PolicyError({"decision": ["Approve or reject."]})
    with transaction.atomic(durable=True):
        locked = _lock(request)
        environment = locked.environment
        needed = Role(environment.approver_role)
        rejecting_approved = (
            decision == ChangeReview.Decision.REJECT and locked.status == Status.APPROVED
        )
        if locked.status != Status.OPEN and not rejecting_approved:
            raise PolicyError(
                {"decision": [f"Change request #{locked.pk} is {locked.status}: no more reviews."]}
            )
        if _is_author(locked, actor):
            raise PolicyError({"decision": ["Nobody reviews their own change request."]})
        if not includes(held, needed):
            raise PolicyError(
                {"decision": [f"Reviewing changes in {environment.name} needs the {needed} role."]}
            )
        if decision == ChangeReview.Decision.REJECT and not comment:
            raise PolicyError({"comment": ["Say why it is rejected: its author reads it."]})
        if decision == ChangeReview.Decision.APPROVE and any(
            _same_person(r.reviewer_id, r.reviewer_name, actor) for r in approvals(locked)
        ):
            # Approving again only completes a request whose approvals reach a number
            # the environment lowered since; else it would wait for someone else forever.
            if len(approvals(locked)) < environment.approvals_required:
                raise PolicyError({"decision": ["You approved this request already."]})
        else:
            ChangeReview.objects.create(
                request=locked,
                reviewer=actor.user,  # type: ignore[misc]
                reviewer_name=actor.name,
                decision=decision,
                comment=comment,
            )
            if decision == ChangeReview.Decision.REJECT:
                _set_status(locked, actor, Status.REJECTED, "reject", comment)
                return locked
            given = len(approvals(locked))
            _audit(locked, actor, "approve", comment, {"approvals": [None, given]})
        if len(approvals(locked)) >= environment.approvals_required:
            _set_status(locked, actor, Status.APPROVED, "approved")
    if locked.status == Status.APPROVED and locked.apply_at is None:
        try:
            return apply_request(locked, actor)
        except NeedsRebase:
            locked.refresh_from_db()
    return locked


def withdraw(request: ChangeRequest, actor: Actor, reason: str = "") -> ChangeRequest:
    """The author takes their pending request back; nothing of it applies."""
    check_reason(reason)
    with transaction.atomic(durable=True):
        locked = _lock(request)
        if not _is_author(locked, actor):
            raise PolicyError({"request": ["Only its author withdraws a change request."]})
        if not locked.is_pending:
            raise PolicyError({"request": [f"Change request #{locked.pk} is {locked.status}."]})
        _set_status(locked, actor, Status.WITHDRAWN, "withdraw", reason)
    return locked


def schedule(request: ChangeRequest, actor: Actor, apply_at: datetime | None) -> ChangeRequest:
    """Plan the request for ``apply_at`` (None: at once once approved); author only."""
    apply_at = _check_apply_at(apply_at)
    with transaction.atomic(durable=True):
        locked = _lock(request)
        if not _is_author(locked, actor):
            raise PolicyError({"apply_at": ["Only its author plans a change request."]})
        if not locked.is_pending:
            raise PolicyError({"apply_at": [f"Change request #{locked.pk} is {locked.status}."]})
        before = locked.apply_at
        locked.apply_at = apply_at
        locked.save(update_fields=["apply_at", "updated_at"])
        _audit(
            locked,
            actor,
            "schedule",
            changes={
                "apply_at": [
                    before.isoformat() if before else None,
                    apply_at.isoformat() if apply_at else None,
                ]
            },
        )
    if locked.status == Status.APPROVED and apply_at is None:
        try:
            return apply_request(locked, actor)
        except NeedsRebase:
            locked.refresh_from_db()
    return locked


@dataclass(frozen=True)
class ItemState:
    """One item against its policy now: whether its base moved, and the three-way view."""

    item: ChangeItem
    current_version: int
    current_spec: dict[str, Any] | None
    current_author: str

    @property
    def moved(self) -> bool:
        return self.current_version != self.item.base_version

    def three_way(self) -> list[ThreeWayDiff]:
        """Base, theirs (now) and mine (proposed), field by field."""
        return three_way(self.item.kind, self.item.base_spec, self.current_spec, self.item.spec)


def item_states(request: ChangeRequest, *, lock: bool = False) -> list[ItemState]:
    """Every item of ``request`` against its policy as it is now."""
    states = []
    for item in request.items.all():
        policies = Policy.objects.filter(
            environment_id=request.environment_id, kind=item.kind, name=item.name
        )
        policy = (policies.select_for_update() if lock else policies).first()
        author = ""
        if policy is not None and policy.version != item.base_version:
            author = (
                PolicyVersion.objects.filter(policy=policy, version=policy.version)
                .values_list("author_name", flat=True)
                .first()
                or ""
            )
        states.append(
            ItemState(item, 0 if policy is None else policy.version, _live_spec(policy), author)
        )
    return states


def _moved(states: Sequence[ItemState]) -> list[str]:
    return [
        f"{s.item.name} (now v{s.current_version} by {s.current_author or 'someone'})"
        for s in states
        if s.moved
    ]


def rebase(request: ChangeRequest, actor: Actor, held: Role | None) -> ChangeRequest:
    """Re-apply the request's changes on top of what its policies are now.

    Each moved item keeps the fields its author changed and takes the others'
    new values (``rebase_spec``); its base becomes the current version. What the
    request proposes changed, so the approvals given before are dismissed and it
    waits for approval again. Its author or an editor of the environment may do it.
    """
    with transaction.atomic(durable=True):
        locked = _lock(request)
        if not (_is_author(locked, actor) or includes(held, Role.EDITOR)):
            raise PolicyError({"request": ["Its author or an editor rebases a change request."]})
        if not locked.is_pending:
            raise PolicyError({"request": [f"Change request #{locked.pk} is {locked.status}."]})
        states = item_states(locked, lock=True)
        changes: dict[str, list[Any]] = {}
        for state in states:
            if not state.moved:
                continue
            item = state.item
            changes[f"{item.field}.base_version"] = [item.base_version, state.current_version]
            if state.current_spec is None and item.op in (Op.UPDATE, Op.DELETE, Op.ROLLBACK):
                raise PolicyError(
                    {"request": [f"{item.name} was deleted meanwhile: withdraw this request."]}
                )
            if item.op == Op.CREATE and state.current_spec is not None:
                item.op = Op.UPDATE
            if item.spec is not None:
                item.spec = validate_policy_spec(
                    item.kind, rebase_spec(item.base_spec, state.current_spec, item.spec)
                )
            item.base_version = state.current_version
            item.base_spec = state.current_spec
            item.save()
        if not changes:
            raise PolicyError({"request": ["Nothing moved: it needs no rebase."]})
        dismissed = locked.reviews.filter(dismissed=False).update(dismissed=True)
        if dismissed:
            changes["approvals"] = [dismissed, 0]
        before = locked.status
        locked.status = Status.OPEN
        locked.blocked_reason = ""
        locked.save()
        if before != Status.OPEN:
            changes["status"] = [before, Status.OPEN]
        _audit(locked, actor, "rebase", changes=changes)
    return locked


def apply_request(request: ChangeRequest, actor: Actor) -> ChangeRequest:
    """Apply an approved request, all of it or none, as its author's change.

    Each policy is locked and must still be at the version the request was based
    on; if one moved, nothing applies: the request stays approved, says why, and
    ``NeedsRebase`` is raised. The policies' versions name the author and the
    request's reason; the audit's ``change_request.apply`` names who applied it.
    """
    correlation = uuid.uuid4()
    with transaction.atomic(durable=True):
        locked = _lock(request)
        if locked.status != Status.APPROVED:
            raise PolicyError(
                {"request": [f"Change request #{locked.pk} is {locked.status}, not approved."]}
            )
        states = item_states(locked, lock=True)
        moved = _moved(states)
        if not moved:
            author = Actor(
                name=locked.author_name,
                user=locked.author,
                token=locked.author_token,
                correlation_id=correlation,
            )
            reason = f"{locked.reason} (change request #{locked.pk})"
            for state in states:
                _apply_item(locked.environment, state.item, author, reason)
            locked.status = Status.APPLIED
            locked.applied_at = timezone.now()
            locked.blocked_reason = ""
            locked.save()
            _audit(
                locked,
                replace(actor, correlation_id=correlation),
                "apply",
                changes={"status": [Status.APPROVED, Status.APPLIED]},
            )
            return locked
    blocked = f"Needs a rebase: {', '.join(moved)} changed since it was proposed."
    with transaction.atomic(durable=True):
        locked = _lock(request)
        if locked.blocked_reason != blocked:
            locked.blocked_reason = blocked
            locked.save(update_fields=["blocked_reason", "updated_at"])
            _audit(locked, actor, "blocked", blocked)
    raise NeedsRebase(locked, moved)


def _apply_item(environment: Environment, item: ChangeItem, author: Actor, reason: str) -> None:
    """One item through the same step as a direct change, locked on its base version."""
    policy = _current(environment, item.kind, item.name)
    if item.op == Op.CREATE:
        assert item.spec is not None
        create_policy(
            environment,
            item.kind,
            item.name,
            item.spec,
            author,
            reason,
            tags=item.tags,
            team=item.team,
        )
        return
    assert policy is not None
    if item.op == Op.UPDATE:
        assert item.spec is not None
        update_policy(
            policy,
            item.spec,
            author,
            reason,
            expected_version=item.base_version,
            tags=item.tags,
            team=item.team,
        )
    elif item.op == Op.DELETE:
        delete_policy(policy, author, reason, expected_version=item.base_version)
    elif item.op == Op.ROLLBACK:
        assert item.rollback_to is not None
        rollback_policy(
            policy, item.rollback_to, author, reason, expected_version=item.base_version
        )


def apply_due_requests(now: datetime | None = None) -> list[ChangeRequest]:
    """Apply the approved requests whose time has come (the reconciler calls this).

    Each applies with the same checks as at approval; one that needs a rebase
    stays approved, with why, and is tried again only after it is rebased and
    approved again (its ``blocked_reason`` keeps it out of this loop).
    """
    now = now or timezone.now()
    due = ChangeRequest.objects.filter(
        status=Status.APPROVED, apply_at__lte=now, blocked_reason=""
    ).order_by("apply_at", "pk")
    applied = []
    for request in due:
        try:
            applied.append(apply_request(request, Actor.system("scheduler")))
        except NeedsRebase as exc:
            logger.warning("%s", exc)
        except PolicyError as exc:
            logger.warning("Change request #%s did not apply: %s", request.pk, exc)
    return applied


def import_proposals(environment: Environment, changes: Sequence[PlannedChange]) -> list[Proposal]:
    """An import's planned changes as the proposals of one request (the whole file),
    each based on its policy's current version."""
    versions = {
        (kind, name): version
        for kind, name, version in environment.policies.filter(deleted=False).values_list(
            "kind", "name", "version"
        )
    }
    return [
        Proposal(
            change.op,
            change.kind,
            change.name,
            change.spec,
            versions.get((change.kind, change.name), 0) if change.op != Op.CREATE else None,
            None if change.op == Op.DELETE else change.tags,
            None if change.op == Op.DELETE else change.team,
        )
        for change in changes
    ]


def pending_requests(environments: Sequence[str]) -> Any:
    """The open and approved requests of these environments, newest first."""
    return ChangeRequest.objects.filter(
        environment__name__in=list(environments), status__in=[Status.OPEN, Status.APPROVED]
    ).select_related("environment")
