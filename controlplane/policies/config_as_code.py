"""Config as code: an environment's policies as a YAML or JSON document, and back.

Export writes every live policy in full. Import plans the changes that make the
environment match the document (a dry run shows them), then applies them all in
one transaction, or none; importing the same document twice changes nothing.
Secret config values are exported as null; a null secret on import keeps the
value the environment has. A policy's ``tags`` and ``team`` sit beside its spec
fields, written only when set; a policy without them in the document has none.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import yaml
from django.db import transaction

from controlplane.accounts.actors import Actor
from controlplane.policies.actions import (
    check_reason_rule,
    create_policy,
    delete_policy,
    update_policy,
)
from controlplane.policies.diff import FieldDiff, spec_diff
from controlplane.policies.models import (
    Environment,
    Policy,
    check_reason,
    check_tags,
    check_team,
)
from controlplane.protocol.limits import (
    MAX_IMPORT_BYTES,
    MAX_JSON_DEPTH,
    MAX_JSON_NODES,
    LimitExceeded,
    check_shape,
    check_size,
)
from controlplane.protocol.schema import (
    KINDS,
    InvalidValue,
    PolicyError,
    check_text,
    is_secret,
    masked,
    validate_name,
    validate_spec,
)

FORMAT_VERSION = 1
FORMATS = ("yaml", "json")
# Parsing stops far beyond the depth any value may have (a document holds each value
# four levels down): a value a little too deep is refused by validation, naming its path.
MAX_DOCUMENT_DEPTH = 4 * MAX_JSON_DEPTH


def export_environment(environment: Environment) -> dict[str, Any]:
    """The environment as a document; ``PolicyError`` names any policy over the limits
    (saved before they applied), which no import would take back."""
    policies: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
    for policy in environment.policies.filter(deleted=False).order_by("kind", "name"):
        try:
            check_shape(policy.spec, what="Its spec", max_depth=MAX_JSON_DEPTH + 1)
        except LimitExceeded as exc:
            path = f"policies.{policy.kind}.{policy.name}"
            raise PolicyError({path: [f"{exc} Edit it, then export again."]}) from None
        entry = masked(policy.kind, policy.spec, mask=None)
        if policy.tags:
            entry["tags"] = list(policy.tags)
        if policy.team:
            entry["team"] = policy.team
        policies[policy.kind][policy.name] = entry
    return {
        "version": FORMAT_VERSION,
        "environment": environment.name,
        "policies": {kind: specs for kind, specs in policies.items() if specs},
    }


def dump(document: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(document, indent=2, sort_keys=False) + "\n"
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)


def _load(text: str, fmt: str | None) -> Any:
    if fmt != "yaml":
        try:
            # JSON first: YAML reads JSON too, but turns the escapes JSON writes for
            # characters beyond U+FFFF (emoji: "\\ud83d\\ude00") into lone surrogates.
            return json.loads(text)
        except ValueError:
            if fmt == "json":
                raise
    return yaml.safe_load(text)


def _check_readable(document: Any) -> None:
    """Refuse text that cannot be shown or stored."""
    pending, seen = [document], 0
    while pending:
        item = pending.pop()
        seen += 1
        if seen > 2 * MAX_JSON_NODES:  # check_shape counted the values; this adds the keys
            raise PolicyError({"file": [f"Too large: more than {MAX_JSON_NODES:,} values."]})
        if isinstance(item, str):
            try:
                check_text(item)
            except InvalidValue as exc:
                raise PolicyError({"file": [f"{exc} Found in {item[:40]!r}."]}) from None
        elif isinstance(item, dict):
            pending += [*item.keys(), *item.values()]
        elif isinstance(item, list | tuple | set):
            pending += item


def parse(text: str, fmt: str | None = None) -> dict[str, Any]:
    """Read a document: JSON, or YAML (of which JSON is a subset), within the limits."""
    try:
        check_size(text, limit=MAX_IMPORT_BYTES, what="The file")
        try:
            document = _load(text, fmt)
        except RecursionError:
            raise LimitExceeded(
                f"The file nests deeper than {MAX_DOCUMENT_DEPTH} levels."
            ) from None
        # Before any walk: YAML aliases let a few lines stand for millions of values.
        check_shape(document, what="The file", max_depth=MAX_DOCUMENT_DEPTH)
    except LimitExceeded as exc:
        raise PolicyError({"file": [str(exc)]}) from None
    except (ValueError, yaml.YAMLError) as exc:
        raise PolicyError({"file": [f"Not valid {fmt or 'YAML or JSON'}: {exc}"]}) from None
    _check_readable(document)
    if not isinstance(document, dict):
        raise PolicyError({"file": ["Expected a mapping with version, environment, policies."]})
    if document.get("version") != FORMAT_VERSION:
        raise PolicyError({"version": [f"Only version {FORMAT_VERSION} is supported."]})
    policies = document.get("policies", {})
    if not isinstance(policies, dict):
        raise PolicyError({"policies": ["Expected a mapping of kinds."]})
    return document


@dataclass
class PlannedChange:
    op: str  # create, update, delete
    kind: str
    name: str
    spec: dict[str, Any] | None = None
    diff: list[FieldDiff] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    team: str = ""

    def describe(self) -> str:
        head = f"{self.op} {self.kind} {self.name}"
        lines = [f"  {d.label}: {d.old or '—'} -> {d.new or '—'}" for d in self.diff]
        return "\n".join([head, *lines])


def _metadata(data: dict[str, Any]) -> tuple[list[str], str]:
    """Take a policy's tags and team out of its entry: they are no spec fields."""
    errors: dict[str, list[str]] = {}
    tags: list[str] = []
    team = ""
    try:
        tags = check_tags(data.pop("tags", None) or [])
    except PolicyError as exc:
        errors.update(exc.errors)
    try:
        team = check_team(data.pop("team", None) or "")
    except PolicyError as exc:
        errors.update(exc.errors)
    if errors:
        raise PolicyError(errors)
    return tags, team


def plan_import(
    environment: Environment, document: dict[str, Any], *, prune: bool = False
) -> list[PlannedChange]:
    """Validate the whole document and return the changes it implies; raise on any error."""
    errors: dict[str, list[str]] = {}
    wanted: dict[tuple[str, str], dict[str, Any]] = {}
    metadata: dict[tuple[str, str], tuple[list[str], str]] = {}
    existing = {(p.kind, p.name): p for p in environment.policies.filter(deleted=False)}
    for kind, specs in document.get("policies", {}).items():
        if kind not in KINDS:
            errors[f"policies.{kind}"] = [f"Unknown kind; use one of: {', '.join(KINDS)}."]
            continue
        if not isinstance(specs, dict):
            errors[f"policies.{kind}"] = ["Expected a mapping of policy names."]
            continue
        for name, spec in specs.items():
            path = f"policies.{kind}.{name}"
            try:
                validate_name(name)
                if not isinstance(spec, dict | None):
                    raise PolicyError({"name": ["Expected a mapping of policy fields."]})
                data = dict(spec or {})
                metadata[(kind, name)] = _metadata(data)
                current = existing.get((kind, name))
                if is_secret(kind, data) and data.get("value") is None:
                    if current is None:
                        raise PolicyError({"value": ["A new secret needs its value."]})
                    data["value"] = current.spec["value"]
                wanted[(kind, name)] = validate_spec(kind, data)
            except PolicyError as exc:
                for field_name, messages in exc.errors.items():
                    key = path if field_name == "name" else f"{path}.{field_name}"
                    errors.setdefault(key, []).extend(messages)
    if errors:
        raise PolicyError(errors)
    changes: list[PlannedChange] = []
    for (kind, name), spec in sorted(wanted.items()):
        current = existing.get((kind, name))
        tags, team = metadata[(kind, name)]
        old_tags, old_team = ([], "") if current is None else (current.tags, current.team)
        diff = spec_diff(kind, None if current is None else current.spec, spec)
        if old_tags != tags:
            diff.append(FieldDiff("tags", "Tags", ", ".join(old_tags), ", ".join(tags)))
        if old_team != team:
            diff.append(FieldDiff("team", "Owner team", old_team, team))
        if current is None:
            changes.append(PlannedChange("create", kind, name, spec, diff, tags, team))
        elif diff:
            changes.append(PlannedChange("update", kind, name, spec, diff, tags, team))
    if prune:
        for (kind, name), current in sorted(existing.items()):
            if (kind, name) not in wanted:
                changes.append(
                    PlannedChange("delete", kind, name, None, spec_diff(kind, current.spec, None))
                )
    return changes


def apply_import(
    environment: Environment,
    document: dict[str, Any],
    actor: Actor,
    *,
    prune: bool = False,
    reason: str = "",
) -> tuple[list[PlannedChange], uuid.UUID]:
    """Apply the document in one transaction; every audit entry shares one correlation id."""
    correlation_id = uuid.uuid4()
    correlated = actor.correlated(correlation_id)
    check_reason_rule(environment, reason)
    reason = check_reason(reason) or "Imported from a file"
    with transaction.atomic(durable=True):  # all or nothing: the steps, not the do_* actions
        changes = plan_import(environment, document, prune=prune)
        for change in changes:
            current = Policy.objects.filter(
                environment=environment, kind=change.kind, name=change.name, deleted=False
            ).first()
            if change.op == "create":
                assert change.spec is not None
                create_policy(
                    environment,
                    change.kind,
                    change.name,
                    change.spec,
                    correlated,
                    reason,
                    tags=change.tags,
                    team=change.team,
                )
            elif change.op == "update" and current is not None:
                assert change.spec is not None
                update_policy(
                    current, change.spec, correlated, reason, tags=change.tags, team=change.team
                )
            elif change.op == "delete" and current is not None:
                delete_policy(current, correlated, reason)
    return changes, correlation_id
