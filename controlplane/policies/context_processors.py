from __future__ import annotations

from django.db.models import Q
from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from controlplane.accounts.roles import Role, grants_of, includes
from controlplane.policies.models import ChangeRequest, ChangeReview

# The roles an environment may ask its approvers to hold (Environment.approver_role).
APPROVER_ROLES = (Role.EDITOR, Role.ADMIN)


def reviewable_count(request: HttpRequest) -> int:
    """How many open requests the user may review: in an environment where they hold
    its approver role, not their own, and not approved by them already (they can do
    nothing more with those). One query."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return 0
    grants = grants_of(user)
    where = Q(pk__in=[])
    for role in APPROVER_ROLES:
        if includes(grants.everywhere, role):
            where |= Q(environment__approver_role=role)
        else:
            names = [name for name, held in grants.environments.items() if includes(held, role)]
            where |= Q(environment__approver_role=role, environment__name__in=names)
    approved = ChangeReview.objects.filter(
        reviewer_id=user.pk, decision=ChangeReview.Decision.APPROVE, dismissed=False
    ).values("request_id")
    requests = ChangeRequest.objects.filter(where, status=ChangeRequest.Status.OPEN)
    return requests.exclude(author_id=user.pk).exclude(pk__in=approved).count()


def change_requests(request: HttpRequest) -> dict[str, object]:
    """``requests_to_review`` for the nav's "Requests (3)", counted only if a page shows it."""
    return {"requests_to_review": SimpleLazyObject(lambda: reviewable_count(request))}
