"""Times as people read them: "3 min ago", "in 52 min", the absolute time and zone on hover.

``{{ value|ago }}`` renders a past or future moment as a ``<time>`` element whose
text is relative and whose title is the absolute time in the server's zone;
``{{ value|until }}`` renders an expiry as "21:43 UTC (in 10 min)". Both take an
aware datetime or a Unix time (what heartbeats carry). ``static/js/live.js``
refreshes the relative part every 30 s and rewrites the absolute part in the
browser's zone; without scripts the server's text stands.
"""

from __future__ import annotations

from datetime import UTC, datetime

from django import template
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

register = template.Library()


def as_datetime(value: datetime | float | int | str | None) -> datetime | None:
    """``value`` as an aware datetime: a datetime, a Unix time or ISO text; None if neither."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    if isinstance(value, datetime):
        return value if timezone.is_aware(value) else timezone.make_aware(value, UTC)
    if isinstance(value, str):
        try:
            return as_datetime(datetime.fromisoformat(value))
        except ValueError:
            return None
    try:
        return datetime.fromtimestamp(float(value), UTC)
    except (ValueError, OverflowError, OSError):
        return None


def relative(moment: datetime, now: datetime | None = None) -> str:
    """``moment`` from ``now``: "just now", "42 s ago", "3 min ago", "in 52 min", "2 d ago"."""
    seconds = ((now or timezone.now()) - moment).total_seconds()
    past, seconds = seconds >= 0, abs(seconds)
    if seconds < 5:
        return "just now" if past else "in a moment"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min"), (1, "s")):
        if seconds >= size or unit == "s":
            text = f"{int(seconds // size)} {unit}"
            break
    return f"{text} ago" if past else f"in {text}"


def absolute(moment: datetime) -> str:
    """``moment`` in the server's zone, with the zone: ``2026-12-06 21:33:05 UTC``."""
    local = timezone.localtime(moment)
    return f"{local:%Y-%m-%d %H:%M:%S} {local.tzname()}"


def clock_time(moment: datetime) -> str:
    """``moment``'s clock time in the server's zone, with the zone: ``21:43 UTC``."""
    local = timezone.localtime(moment)
    return f"{local:%H:%M} {local.tzname()}"


@register.filter
def ago(value: datetime | float | None) -> SafeString | str:
    """A ``<time>`` saying how long ago (or in how long) ``value`` is; "—" for none."""
    moment = as_datetime(value)
    if moment is None:
        return "—"
    return format_html(
        '<time datetime="{}" title="{}" data-relative="ago">{}</time>',
        moment.isoformat(),
        absolute(moment),
        relative(moment),
    )


@register.filter
def until(value: datetime | float | None) -> SafeString | str:
    """An expiry: the clock time and zone, and how long from now: "21:43 UTC (in 10 min)"."""
    moment = as_datetime(value)
    if moment is None:
        return "—"
    local = timezone.localtime(moment)
    clock = clock_time(moment)
    if timezone.localdate(moment) != timezone.localdate():
        clock = f"{local:%Y-%m-%d} {clock}"
    return format_html(
        '<time datetime="{}" title="{}" data-relative="clock">{} ({})</time>',
        moment.isoformat(),
        absolute(moment),
        clock,
        relative(moment),
    )
