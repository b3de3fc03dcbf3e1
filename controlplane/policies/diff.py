"""Field-by-field differences between two versions of a policy, for people to read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controlplane.audit.record import spec_changes
from controlplane.protocol.schema import SPECS, field_label, masked, shown_value


@dataclass(frozen=True)
class FieldDiff:
    field: str
    label: str
    old: str
    new: str


def spec_diff(kind: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> list[FieldDiff]:
    """The fields that differ, labelled and with units, secret config values as fingerprints."""
    changes = spec_changes(kind, old, new)
    return [
        FieldDiff(
            name,
            field_label(kind, name),
            shown_value(kind, name, before, old),
            shown_value(kind, name, after, new),
        )
        for name, (before, after) in changes.items()
    ]


def masked_spec(kind: str, spec: dict[str, Any] | None) -> list[tuple[str, str]]:
    """``(label, value with its unit)`` pairs of a spec for display, hiding secret values."""
    if spec is None:
        return []
    shown = masked(kind, spec)
    return [
        (f.label, shown_value(kind, f.name, shown.get(f.name), shown)) for f in SPECS[kind].fields
    ]
