"""Field-by-field differences between two versions of a policy, for people to read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controlplane.audit.record import spec_changes
from controlplane.policies.forms import display_value
from controlplane.protocol.schema import SPECS, masked


@dataclass(frozen=True)
class FieldDiff:
    field: str
    label: str
    old: str
    new: str


def spec_diff(kind: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> list[FieldDiff]:
    """The fields that differ, with secret config values shown only as fingerprints."""
    changes = spec_changes(kind, old, new)
    labels = {f.name: f.label for f in SPECS[kind].fields}
    return [
        FieldDiff(name, labels.get(name, name), display_value(before), display_value(after))
        for name, (before, after) in changes.items()
    ]


def masked_spec(kind: str, spec: dict[str, Any] | None) -> list[tuple[str, str]]:
    """``(label, value)`` pairs of a spec for display, hiding secret values."""
    if spec is None:
        return []
    shown = masked(kind, spec)
    return [(f.label, display_value(shown.get(f.name))) for f in SPECS[kind].fields]
