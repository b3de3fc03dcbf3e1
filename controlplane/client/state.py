"""A client's local copy of its environment's policies and overrides.

It applies snapshots and change messages by the rules of ``docs/protocol.md``
(section 6): a document replaces what is held only when its revision is newer,
an authoritative snapshot installs what it holds, tombstones remove, absence
never does. Reads on the hot path are plain dict lookups, with no lock: each
update swaps in a new dict.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controlplane.protocol.documents import (
    SECTION_OVERRIDES,
    SECTION_POLICIES,
    ChangeMessage,
    MetaDocument,
    OverrideDocument,
    PolicyDocument,
    ProtocolError,
)

logger = logging.getLogger("controlplane.client")

Listener = Callable[[str, str], None]  # (kind, name)


@dataclass
class Snapshot:
    """Raw hash contents and meta value as read from Redis in one transaction."""

    policies: Mapping[str, str | bytes] | Mapping[bytes, bytes]
    overrides: Mapping[str, str | bytes] | Mapping[bytes, bytes]
    meta: str | bytes | None


@dataclass
class PolicyState:
    """The held documents, by ``kind:name``, and the highest revision known."""

    policies: dict[str, PolicyDocument] = field(default_factory=dict)
    overrides: dict[str, OverrideDocument] = field(default_factory=dict)
    revision: int = 0
    malformed: int = 0  # documents ignored because they broke the protocol
    on_malformed: Callable[[str], None] | None = None

    def spec(self, kind: str, name: str) -> dict[str, object] | None:
        document = self.policies.get(f"{kind}:{name}")
        return None if document is None or document.deleted else document.spec

    def override(self, kind: str, name: str, now: float | None = None) -> OverrideDocument | None:
        document = self.overrides.get(f"{kind}:{name}")
        if document is None or not document.active(time.time() if now is None else now):
            return None
        return document

    def _bad(self, what: str, error: Exception) -> None:
        self.malformed += 1
        logger.error("Ignoring malformed %s from Redis, keeping the last good one: %s", what, error)
        if self.on_malformed is not None:
            self.on_malformed(what)

    def _decode(
        self, section: str, field_name: str, raw: str | bytes
    ) -> PolicyDocument | OverrideDocument | None:
        try:
            if section == SECTION_POLICIES:
                return PolicyDocument.decode(raw)
            return OverrideDocument.decode(raw)
        except ProtocolError as exc:
            if "unknown kind" in str(exc):
                return None  # a kind from a newer control plane: not an error
            self._bad(f"{section} field {field_name}", exc)
            return None

    def _install(
        self,
        section: str,
        documents: Mapping[str, str | bytes] | Mapping[bytes, bytes],
        *,
        authoritative: bool,
    ) -> set[str]:
        held: dict[str, Any] = self.policies if section == SECTION_POLICIES else self.overrides
        updated = dict(held)
        changed: set[str] = set()
        for raw_field, raw in documents.items():
            name = raw_field.decode() if isinstance(raw_field, bytes) else str(raw_field)
            document = self._decode(section, name, raw)
            if document is None:
                continue
            if f"{document.kind}:{document.name}" != name:
                self._bad(
                    f"{section} field {name}",
                    ProtocolError(f"holds the document of {document.kind}:{document.name}"),
                )
                continue
            current = updated.get(name)
            if (
                current is None
                or document.revision > current.revision
                or (authoritative and document != current)
            ):
                updated[name] = document
                changed.add(name)
        if changed:
            if section == SECTION_POLICIES:
                self.policies = updated
            else:
                self.overrides = updated
        return changed

    def install_snapshot(self, snapshot: Snapshot) -> set[str]:
        """Merge a snapshot; return the ``kind:name`` fields whose document changed."""
        meta_revision: int | None = None
        if snapshot.meta is not None:
            try:
                meta_revision = MetaDocument.decode(snapshot.meta).revision
            except ProtocolError as exc:
                self._bad("meta", exc)
        authoritative = meta_revision is not None and meta_revision >= self.revision
        changed = self._install(SECTION_POLICIES, snapshot.policies, authoritative=authoritative)
        changed |= self._install(SECTION_OVERRIDES, snapshot.overrides, authoritative=authoritative)
        if authoritative and meta_revision is not None:
            self.revision = meta_revision
        return changed

    def apply_change(self, raw: str | bytes) -> tuple[set[str], bool]:
        """Apply one change message; return the changed fields and whether to resync."""
        try:
            message = ChangeMessage.decode(raw)
        except ProtocolError as exc:
            self._bad("change message", exc)
            return set(), False
        gap = message.revision > self.revision + 1
        self.revision = max(self.revision, message.revision)
        changed = self._install(
            message.section, {message.field: message.document}, authoritative=False
        )
        return changed, gap

    def to_dict(self) -> dict[str, object]:
        """Return the state as the local snapshot file stores it."""
        return {
            "revision": self.revision,
            "policies": {k: v.encode() for k, v in self.policies.items()},
            "overrides": {k: v.encode() for k, v in self.overrides.items()},
        }
