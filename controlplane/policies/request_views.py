"""Change requests in the product's pages: the queue, one request, and its review.

The steps themselves (open, review, withdraw, schedule, rebase, apply) live in
``policies/requests.py``; these views only look the request up for someone holding
a role in its environment, call a step, and say what happened. The edit, delete,
restore and import pages of a guarded environment open requests through
``propose`` and announce them with ``announce_opened``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from controlplane.accounts.actors import Actor
from controlplane.accounts.roles import Role, grants_of, includes
from controlplane.policies.access import check_role
from controlplane.policies.diff import spec_diff
from controlplane.policies.models import ChangeRequest, ChangeReview, Environment
from controlplane.policies.requests import (
    Proposal,
    approvals,
    item_states,
    open_request,
    rebase,
    review,
    schedule,
    withdraw,
)
from controlplane.protocol.schema import KIND_LABELS, PolicyError

Status = ChangeRequest.Status
PENDING = (Status.OPEN, Status.APPROVED)
RECENT_CLOSED = 50  # the queue lists this many closed requests after the pending ones
# How the fields a step may refuse are called in its error message.
FIELD_LABELS = {
    "decision": "Review",
    "comment": "Comment",
    "reason": "Reason",
    "apply_at": "Apply at",
    "request": "Change request",
    "action": "Action",
}
STEPS = ("approve", "reject", "withdraw", "schedule", "rebase")


def approvers_phrase(environment: Environment) -> str:
    """``1 approval by an editor`` / ``2 approvals by admins``: who must approve there."""
    count = environment.approvals_required
    role = environment.approver_role
    if count == 1:
        return f"1 approval by {'an' if role[0] in 'aeiou' else 'a'} {role}"
    return f"{count} approvals by {role}s"


def guarded_notice(environment: Environment) -> str:
    """What a form of a guarded environment says before anyone saves (empty elsewhere)."""
    if not environment.guarded:
        return ""
    return (
        f"Changes in {environment.name} need {approvers_phrase(environment)}: "
        "saving proposes a change request, which applies once approved."
    )


def propose(
    request: HttpRequest,
    environment: Environment,
    proposals: Sequence[Proposal],
    reason: str,
) -> ChangeRequest:
    """Open a change request as the signed-in user (``PolicyError`` names the field)."""
    return open_request(environment, proposals, Actor.from_request(request), reason)


def announce_opened(request: HttpRequest, change_request: ChangeRequest) -> HttpResponse:
    """Say that the change waits for approval, and go to its request."""
    count = change_request.environment.approvals_required
    messages.success(
        request,
        f"Your change waits for {count} approval{'s' if count != 1 else ''}: "
        f"change request #{change_request.pk}.",
    )
    return redirect("request-detail", change_request.pk)


def _viewable_environments(request: HttpRequest) -> list[str]:
    """The environments whose requests the user may see; 403 if none."""
    names = list(Environment.objects.values_list("name", flat=True))
    viewable = grants_of(request.user).environments_with(Role.VIEWER, names)
    if not viewable:
        raise PermissionDenied("This needs the viewer role.")
    return viewable


def _with_approvals(requests: QuerySet[ChangeRequest]) -> QuerySet[ChangeRequest]:
    """The requests with their count of approvals that count (``approval_count``)."""
    counted = Q(reviews__decision=ChangeReview.Decision.APPROVE, reviews__dismissed=False)
    return requests.select_related("environment").annotate(
        approval_count=Count("reviews", filter=counted)
    )


@login_required
@require_GET
def request_queue(request: HttpRequest) -> HttpResponse:
    """Pending requests first (oldest waiting first), then the recently closed ones,
    of the environments the user may view; filtered by ``status`` and ``environment``."""
    viewable = _viewable_environments(request)
    status = request.GET.get("status", "")
    environment = request.GET.get("environment", "")
    requests = ChangeRequest.objects.filter(environment__name__in=viewable)
    if environment in viewable:
        requests = requests.filter(environment__name=environment)
    if status == "pending":
        requests = requests.filter(status__in=PENDING)
    elif status in Status.values:
        requests = requests.filter(status=status)
    pending = _with_approvals(requests.filter(status__in=PENDING).order_by("created_at"))
    closed = _with_approvals(requests.exclude(status__in=PENDING).order_by("-updated_at"))
    return render(
        request,
        "policies/requests.html",
        {
            "pending": list(pending),
            "closed": list(closed[:RECENT_CLOSED]),
            "environments": viewable,
            "statuses": ["pending", *Status.values],
            "status": status,
            "environment": environment,
        },
    )


def _request_for(request: HttpRequest, pk: int, needed: Role) -> tuple[ChangeRequest, Role | None]:
    """The change request ``pk`` and the user's role in its environment, which must
    include ``needed`` (403), checked before saying whether it exists (404)."""
    grants = grants_of(request.user)
    change_request = ChangeRequest.objects.select_related("environment").filter(pk=pk).first()
    if change_request is None:
        check_role(grants.highest(), needed)
        raise Http404("No such change request.")
    check_role(grants, needed, change_request.environment.name)
    return change_request, grants.role_in(change_request.environment.name)


def _is_author(change_request: ChangeRequest, user: AbstractBaseUser | AnonymousUser) -> bool:
    """Whether the signed-in user proposed it (what the page offers; the steps check again)."""
    return change_request.author_id is not None and change_request.author_id == user.pk


def _items(change_request: ChangeRequest) -> list[dict[str, Any]]:
    """Each item with its diff against its base and, if its policy moved, the three ways."""
    rows = []
    for state in item_states(change_request):
        item = state.item
        rows.append(
            {
                "item": item,
                "kind_label": KIND_LABELS[item.kind],
                "diff": spec_diff(item.kind, item.base_spec, item.spec),
                "moved": state.moved and change_request.is_pending,
                "state": state,
                "three_way": state.three_way() if state.moved else [],
                "base_heading": f"Base (v{item.base_version}, when proposed)",
                "theirs_heading": f"Theirs (v{state.current_version}, live now"
                + (f" by {state.current_author})" if state.current_author else ")"),
            }
        )
    return rows


@login_required
@require_GET
def request_detail(request: HttpRequest, request_id: int) -> HttpResponse:
    """One request: what it changes, its reviews, and what the user may do with it."""
    change_request, held = _request_for(request, request_id, Role.VIEWER)
    environment = change_request.environment
    items = _items(change_request)
    author = _is_author(change_request, request.user)
    is_open = change_request.status == Status.OPEN
    approver = includes(held, Role(environment.approver_role))
    return render(
        request,
        "policies/request_detail.html",
        {
            "change_request": change_request,
            "environment": environment,
            "items": items,
            "reviews": list(change_request.reviews.all()),
            "approval_count": len(approvals(change_request)),
            "is_author": author,
            "may_review": is_open and approver and not author,
            # Approved but not applied yet (planned, or to rebase): it may still be stopped.
            "may_reject": change_request.status == Status.APPROVED and approver and not author,
            "own_request": is_open and author,
            "may_withdraw": change_request.is_pending and author,
            "may_schedule": change_request.is_pending and author,
            "may_rebase": (author or includes(held, Role.EDITOR))
            and any(row["moved"] for row in items),
            "approver_role": environment.approver_role,
        },
    )


def parse_apply_at(local: str, offset_minutes: str) -> datetime | None:
    """The browser's ``datetime-local`` value at its zone's offset (minutes east of UTC,
    which the page's script sends; none: UTC) as an aware time; empty: None."""
    local = local.strip()
    if not local:
        return None
    try:
        moment = datetime.fromisoformat(local)
        offset = int(offset_minutes or 0)
    except ValueError:
        raise PolicyError({"apply_at": ["Enter a date and time, like 2026-12-24 09:00."]}) from None
    if moment.tzinfo is not None:
        return moment
    if not -24 * 60 < offset < 24 * 60:
        raise PolicyError({"apply_at": ["The time zone's offset is out of range."]})
    return moment.replace(tzinfo=timezone(timedelta(minutes=offset)))


def _step(request: HttpRequest, change_request: ChangeRequest, held: Role | None) -> str:
    """Take the step the form asks for; what to tell the user."""
    actor = Actor.from_request(request)
    step = request.POST.get("action", "")
    comment = str(request.POST.get("comment", ""))
    if step in ("approve", "reject"):
        done = review(change_request, actor, held, step, comment)
        if step == "reject":
            return f"Rejected change request #{done.pk}."
        return _approved_message(done)
    if step == "withdraw":
        withdraw(change_request, actor, comment)
        return f"Withdrew change request #{change_request.pk}: nothing of it applies."
    if step == "schedule":
        apply_at = parse_apply_at(
            str(request.POST.get("apply_at", "")), str(request.POST.get("apply_at_offset", ""))
        )
        done = schedule(change_request, actor, apply_at)
        if done.status == Status.APPLIED:
            return f"Applied change request #{done.pk}."
        return "Planned for the time chosen." if apply_at else "It applies as soon as approved."
    if step == "rebase":
        rebase(change_request, actor, held)
        return (
            f"Rebased change request #{change_request.pk} on what is live now: "
            "it waits for approval again."
        )
    raise PolicyError({"action": [f"Choose one of: {', '.join(STEPS)}."]})


def _approved_message(change_request: ChangeRequest) -> str:
    if change_request.status == Status.APPLIED:
        return f"Approved: change request #{change_request.pk} is applied."
    if change_request.status == Status.APPROVED and change_request.blocked_reason:
        return f"Approved, but it cannot apply yet. {change_request.blocked_reason}"
    if change_request.status == Status.APPROVED:
        return f"Approved: change request #{change_request.pk} applies at its planned time."
    count = len(approvals(change_request))
    needed = change_request.environment.approvals_to_apply
    return f"Approved: {count} of {needed} approvals."


@login_required
@require_POST
def request_act(request: HttpRequest, request_id: int) -> HttpResponse:
    """Approve, reject, withdraw, schedule or rebase (``action``); back to the request."""
    change_request, held = _request_for(request, request_id, Role.EDITOR)
    try:
        messages.success(request, _step(request, change_request, held))
    except PolicyError as exc:
        for field, errors in exc.errors.items():
            label = FIELD_LABELS.get(field, field)
            messages.error(request, f"{label}: {' '.join(errors)} Nothing was changed.")
    return redirect("request-detail", change_request.pk)
