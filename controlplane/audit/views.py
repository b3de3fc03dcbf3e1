from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from django import forms
from django.contrib.auth.decorators import login_required, permission_required
from django.core.paginator import Paginator
from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from controlplane.audit.models import AuditEntry, AuditEntryQuerySet
from controlplane.audit.templatetags.humane import absolute, as_datetime
from controlplane.protocol.schema import KIND_LABELS, field_label, shown_value

# The log checks its own permission, which every role holds from viewer up, and asks
# it again per environment (``accounts.backends``): it imports nothing of ``accounts``,
# which records here.
READ_PERMISSION = "audit.view_auditentry"
can_read_log = permission_required(READ_PERMISSION, raise_exception=True)
PAGE_SIZE = 50
EXPORT_COLUMNS = (
    "at",
    "actor_name",
    "actor_token",
    "source_ip",
    "action",
    "environment",
    "object_kind",
    "object_name",
    "reason",
    "changes",
    "correlation_id",
)
# What each action is called on the page; the raw name stays in the row's data-action,
# the filter and the exports. An action missing here is shown from its name.
ACTION_LABELS = {
    "policy.create": "Policy created",
    "policy.update": "Policy changed",
    "policy.delete": "Policy deleted",
    "policy.rollback": "Policy restored",
    "policy.adopt": "Policy adopted",
    "policy.purge": "Cache purged",
    "override.set": "Override set",
    "override.clear": "Override lifted",
    "override.expire": "Override expired",
    "override.reset": "Breaker reset",
    "environment.create": "Environment created",
    "environment.update": "Environment rules changed",
    "token.create": "API token created",
    "token.revoke": "API token revoked",
    "webhook.create": "Webhook added",
    "webhook.delete": "Webhook removed",
    "webhook.enable": "Webhook switched on",
    "webhook.disable": "Webhook switched off",
    "webhook.redeliver": "Webhook delivery sent again",
    "user.create": "User created",
    "user.update": "User changed",
    "user.delete": "User deleted",
    "user.roles": "Roles changed",
    "user.invite": "Invite link made",
    "user.deactivate": "User deactivated",
    "user.reactivate": "User reactivated",
    "login.failed_burst": "Failed log-ins",
    "change_request.open": "Change proposed",
    "change_request.approve": "Change request approved by a reviewer",
    "change_request.approved": "Change request fully approved",
    "change_request.reject": "Change request rejected",
    "change_request.withdraw": "Change request withdrawn",
    "change_request.schedule": "Change request planned",
    "change_request.rebase": "Change request rebased",
    "change_request.apply": "Change request applied",
    "change_request.blocked": "Change request needs a rebase",
}


def action_label(action: str) -> str:
    return ACTION_LABELS.get(action) or action.replace(".", " ").replace("_", " ").capitalize()


@dataclass(frozen=True)
class ChangeRow:
    """One changed field of an entry as the log shows it: its label, values with units."""

    field: str
    label: str
    old: str
    new: str


def _changed_value(kind: str, field: str, value: Any) -> str:
    if field.endswith("_at") and isinstance(value, str):
        moment = as_datetime(value)
        if moment is not None:
            return absolute(moment)
    return shown_value(kind, field, value)


def change_rows(entry: AuditEntry) -> list[ChangeRow]:
    kind = entry.object_kind
    return [
        ChangeRow(
            field,
            field_label(kind, field),
            _changed_value(kind, field, values[0] if values else None),
            _changed_value(kind, field, values[1] if len(values) > 1 else None),
        )
        for field, values in entry.changes.items()
        if isinstance(values, list)
    ]


class AuditFilterForm(forms.Form):
    q = forms.CharField(label="Search", required=False)
    actor = forms.CharField(required=False)
    environment = forms.CharField(required=False)
    kind = forms.ChoiceField(
        required=False, choices=[("", "any kind"), *KIND_LABELS.items()], label="Kind"
    )
    object = forms.CharField(required=False, label="Object")
    action = forms.CharField(required=False)
    since = forms.DateTimeField(required=False, label="From")
    until = forms.DateTimeField(required=False, label="Until")

    def filter(self, entries: AuditEntryQuerySet) -> AuditEntryQuerySet:
        data = self.cleaned_data
        if data.get("q"):
            text = data["q"]
            entries = entries.filter(
                Q(actor_name__icontains=text)
                | Q(object_name__icontains=text)
                | Q(reason__icontains=text)
                | Q(action__icontains=text)
                | Q(environment__icontains=text)
            )
        entries = entries.matching(
            actor=data.get("actor"),
            environment=data.get("environment"),
            kind=data.get("kind"),
            object=data.get("object"),
            action=data.get("action"),
        )
        if data.get("since"):
            entries = entries.filter(at__gte=data["since"])
        if data.get("until"):
            entries = entries.filter(at__lte=data["until"])
        return entries


def entries_readable(may_read: Callable[[str], bool]) -> AuditEntryQuerySet:
    """The entries of the environments ``may_read`` answers True for ("": no environment).

    Asked per environment name the log holds, so entries of an environment that
    no longer exists follow the role held everywhere.
    """
    entries = AuditEntry.objects.all()
    names = entries.order_by().values_list("environment", flat=True).distinct()
    return entries.filter(environment__in=[name for name in names if may_read(name)])


def _filtered(request: HttpRequest) -> tuple[AuditFilterForm, QuerySet[AuditEntry]]:
    form = AuditFilterForm(request.GET)
    user: Any = request.user  # has_perm's object here is an environment's name, not a model
    entries = entries_readable(lambda name: user.has_perm(READ_PERMISSION, name))
    return form, form.filter(entries) if form.is_valid() else entries.none()


@login_required
@can_read_log
@require_GET
def audit_log(request: HttpRequest) -> HttpResponse:
    form, entries = _filtered(request)
    page = Paginator(entries, PAGE_SIZE).get_page(request.GET.get("page"))
    for entry in page:
        entry.action_label = action_label(entry.action)  # type: ignore[attr-defined]
        entry.change_rows = change_rows(entry)  # type: ignore[attr-defined]
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "audit/log.html",
        {"form": form, "page": page, "query": query.urlencode()},
    )


def _row(entry: AuditEntry) -> dict[str, Any]:
    return {
        "at": entry.at.isoformat(),
        "actor_name": entry.actor_name,
        "actor_token": entry.actor_token,
        "source_ip": entry.source_ip or "",
        "action": entry.action,
        "environment": entry.environment,
        "object_kind": entry.object_kind,
        "object_name": entry.object_name,
        "reason": entry.reason,
        "changes": entry.changes,
        "correlation_id": str(entry.correlation_id) if entry.correlation_id else "",
    }


class _Echo:
    def write(self, value: str) -> str:
        return value


# A spreadsheet runs a cell that starts with one of these as a formula (OWASP, CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> str:
    """``value`` as a CSV cell no spreadsheet runs: a leading quote keeps a formula text."""
    text = str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _csv_lines(entries: QuerySet[AuditEntry]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(EXPORT_COLUMNS)
    for entry in entries.iterator(chunk_size=1000):
        row = _row(entry)
        row["changes"] = json.dumps(row["changes"], sort_keys=True)
        yield writer.writerow([csv_cell(row[c]) for c in EXPORT_COLUMNS])


def _json_lines(entries: QuerySet[AuditEntry]) -> Iterator[str]:
    yield "["
    for index, entry in enumerate(entries.iterator(chunk_size=1000)):
        yield ("," if index else "") + json.dumps(_row(entry), sort_keys=True)
    yield "]"


@login_required
@can_read_log
@require_GET
def audit_export(request: HttpRequest, fmt: str) -> StreamingHttpResponse:
    """Export what the filter shows, streamed so a large log does not fill memory."""
    _, entries = _filtered(request)
    if fmt == "csv":
        response = StreamingHttpResponse(_csv_lines(entries), content_type="text/csv")
    elif fmt == "json":
        response = StreamingHttpResponse(_json_lines(entries), content_type="application/json")
    else:
        raise Http404("Export as csv or json.")
    response["Content-Disposition"] = f'attachment; filename="audit-log.{fmt}"'
    return response
