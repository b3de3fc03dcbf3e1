"""Field-by-field differences between two versions of a policy, for people to read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controlplane.audit.record import fingerprint, spec_changes
from controlplane.protocol.schema import SPECS, field_label, is_secret, masked, shown_value


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


@dataclass(frozen=True)
class ThreeWayDiff:
    """One field as the common base, their saved version and my proposal have it."""

    field: str
    label: str
    base: str
    theirs: str
    mine: str
    theirs_changed: bool
    mine_changed: bool

    @property
    def conflict(self) -> bool:
        """Both sides changed the field, to different values: mine wins on a rebase."""
        return self.theirs_changed and self.mine_changed and self.theirs != self.mine


def three_way(
    kind: str,
    base: dict[str, Any] | None,
    theirs: dict[str, Any] | None,
    mine: dict[str, Any] | None,
) -> list[ThreeWayDiff]:
    """The fields either side changed against ``base``, side by side, shown for people.

    If any of the three is a secret, its value shows as its fingerprint in all three,
    as the audit log shows it: changes still show, the value never does.
    """
    base, theirs, mine = _secrets_hidden(kind, [base, theirs, mine])
    theirs_changed = spec_changes(kind, base, theirs)
    mine_changed = spec_changes(kind, base, mine)
    rows = []
    for name in [f.name for f in SPECS[kind].fields if f.name in theirs_changed | mine_changed]:
        rows.append(
            ThreeWayDiff(
                name,
                field_label(kind, name),
                shown_value(kind, name, (base or {}).get(name), base),
                shown_value(kind, name, (theirs or {}).get(name), theirs),
                shown_value(kind, name, (mine or {}).get(name), mine),
                name in theirs_changed,
                name in mine_changed,
            )
        )
    return rows


def _secrets_hidden(kind: str, specs: list[dict[str, Any] | None]) -> list[dict[str, Any] | None]:
    if not any(is_secret(kind, spec) for spec in specs):
        return specs
    return [None if spec is None else _value_fingerprinted(spec) for spec in specs]


def _value_fingerprinted(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with its value as a fingerprint (none stays none, as in the audit log)."""
    value = spec.get("value")
    return {**spec, "value": None if value is None else fingerprint(value)}


def rebase_spec(
    base: dict[str, Any] | None, theirs: dict[str, Any] | None, mine: dict[str, Any]
) -> dict[str, Any]:
    """My changes against ``base`` re-applied on top of ``theirs``: the fields I did not
    change take their values, the fields I changed keep mine."""
    base = base or {}
    rebased = dict(theirs or {})
    for name in set(base) | set(mine):
        if name not in mine:
            rebased.pop(name, None)
        elif mine[name] != base.get(name):
            rebased[name] = mine[name]
    return rebased
