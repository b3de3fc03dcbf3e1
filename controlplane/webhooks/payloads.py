"""What a delivery's body says: our JSON, or a message Slack-compatible chats show.

Slack, Mattermost and Microsoft Teams incoming webhooks all read ``text``;
Slack and Mattermost also lay out ``blocks``.
"""

from __future__ import annotations

import json
from typing import Any

from controlplane.webhooks.models import Event, Webhook

MAX_DIFF_LINES = 10  # a chat message shows the first fields changed; the JSON has them all


def json_body(event: Event) -> dict[str, Any]:
    """Our format: the event's id (stable across retries), type, environment, time, data."""
    return {
        "id": str(event.id),
        "type": event.type,
        "environment": event.environment,
        "created_at": event.created_at.isoformat(),
        "data": event.payload,
    }


def slack_body(event: Event) -> dict[str, Any]:
    """A chat message: one plain sentence, the fields changed, and the event's id."""
    text = summary(event)
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": _escape(text)}}
    ]
    diff = diff_lines(event.payload.get("diff"))
    if diff:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(diff)}})
    context = f"{event.environment} · {event.type} · {event.id}"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _escape(context)}]})
    return {"text": text, "blocks": blocks}


def render(webhook: Webhook, event: Event) -> bytes:
    """The body sent to ``webhook`` for ``event``, in its format."""
    body = slack_body(event) if webhook.payload_format == Webhook.Format.SLACK else json_body(event)
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def summary(event: Event) -> str:
    """One sentence in plain English saying what happened, and why if a reason was given."""
    data = event.payload
    actor = data.get("actor") or "Someone"
    what = f"{data.get('kind', '')} {data.get('name', '')}".strip()
    where = f"in {event.environment}"
    request = f"change request #{data.get('request')}"
    sentences = {
        "policy.created": f"{actor} created {what} {where}",
        "policy.changed": f"{actor} changed {what} {where}",
        "policy.deleted": f"{actor} deleted {what} {where}",
        "policy.rolled_back": f"{actor} rolled back {what} {where}",
        "override.placed": f"{actor} set {what} to {data.get('state')} {where}",
        "override.lifted": f"{actor} lifted the override of {what} {where}",
        "override.expired": f"The override of {what} {where} expired",
        "change_request.opened": f"{actor} opened {request} {where}",
        "change_request.approved": f"The {request} {where} is approved",
        "change_request.rejected": f"{actor} rejected {request} {where}",
        "change_request.applied": f"The {request} {where} was applied",
        "breaker.opened": f"Breaker {data.get('name')} opened {where} on "
        f"{_instances(data)}{_failure_rate(data)}",
        "breaker.closed": f"Breaker {data.get('name')} closed again {where}",
        "alert.firing": f"Alert firing {where}: {data.get('summary', data.get('rule'))}",
        "alert.resolved": f"Alert resolved {where}: {data.get('summary', data.get('rule'))}",
        "drift.found": f"The reconciler repaired drift {where}: {data.get('summary', '')}",
        "test": f"Test message for webhook {data.get('webhook')} {where}: it works",
    }
    sentence = sentences.get(event.type, f"{event.type} {where}")
    if event.type.startswith("policy.") and data.get("version"):
        sentence += f" (version {data['version']})"
    reason = data.get("reason")
    return f"{sentence}: {reason}" if reason and event.type != "override.expired" else sentence


def _instances(data: dict[str, Any]) -> str:
    count = data.get("instances_open")
    total = data.get("instances_reporting")
    if isinstance(count, int) and isinstance(total, int):
        return f"{count} of {total} instances"
    return "some instances"


def _failure_rate(data: dict[str, Any]) -> str:
    rate = data.get("failure_rate")
    return f" (failure rate {rate:g} %)" if isinstance(rate, int | float) else ""


def diff_lines(diff: Any) -> list[str]:
    """``field: before → after`` for the first fields of a diff (``{field: [before, after]}``)."""
    if not isinstance(diff, dict):
        return []
    lines = []
    for field, change in list(diff.items())[:MAX_DIFF_LINES]:
        before, after = change if isinstance(change, list) and len(change) == 2 else (None, change)
        lines.append(_escape(f"{field}: {_shown(before)} → {_shown(after)}"))
    if len(diff) > MAX_DIFF_LINES:
        lines.append(f"and {len(diff) - MAX_DIFF_LINES} more")
    return lines


def _shown(value: Any) -> str:
    return "none" if value is None else json.dumps(value, ensure_ascii=False)


def _escape(text: str) -> str:
    """Slack's mrkdwn reads ``<``, ``>`` and ``&`` as markup: a name must not become a link."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
