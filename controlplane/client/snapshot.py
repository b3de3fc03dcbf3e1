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
    OverrideDocument,
    PolicyDocument,
    ProtocolError,
)
from controlplane.protocol.store import (
    PolicyStore,
    Stored,
    decode_override,
    decode_policy,
    meta_revision,
    printable,
)

logger = logging.getLogger("controlplane.client")

Listener = Callable[[str, str], None]  # (kind, name)
Snapshot = PolicyStore  # what a resync installs: the store as read, decoded value by value

# A snapshot whose meta revision stays below the highest revision known this long is
# believed (docs/protocol.md, 6.3): the control plane repairs Redis within its full
# reconciliation (30 s), so a revision above the meta's for longer came from a stray
# message or from before a database restore.
BELIEVE_META_AFTER = 60.0
_MAX_LOGGED = 1000  # places remembered as malformed (each logged once); beyond, only counted
_OVERFLOW = "(more)"


@dataclass
class PolicyState:
    """The held documents, by ``kind:name``, and the highest revision known."""

    policies: dict[str, PolicyDocument] = field(default_factory=dict)
    overrides: dict[str, OverrideDocument] = field(default_factory=dict)
    revision: int = 0
    malformed: int = 0  # documents ignored because they broke the protocol
    on_malformed: Callable[[str], None] | None = None
    # What is malformed now, by place, with the problem logged: one line per cause,
    # not one per resync; forgotten once that place holds a good document again.
    _logged: dict[str, str] = field(default_factory=dict, repr=False)
    # Whether the last snapshot was not authoritative (the reader resyncs again soon),
    # and since when (monotonic) snapshots have had a valid meta revision below ``revision``.
    behind: bool = False
    _meta_below_since: float | None = field(default=None, repr=False)

    def spec(self, kind: str, name: str) -> dict[str, object] | None:
        document = self.policies.get(f"{kind}:{name}")
        return None if document is None or document.deleted else document.spec

    def override(self, kind: str, name: str, now: float | None = None) -> OverrideDocument | None:
        document = self.overrides.get(f"{kind}:{name}")
        if document is None or not document.active(time.time() if now is None else now):
            return None
        return document

    def _bad(self, where: str, problem: str) -> None:
        self.malformed += 1
        if self.on_malformed is not None:
            self.on_malformed(where)
        if self._logged.get(where) == problem:
            return
        if len(self._logged) >= _MAX_LOGGED and where not in self._logged:
            if _OVERFLOW not in self._logged:
                self._logged[_OVERFLOW] = ""
                logger.error(
                    "More than %d malformed values in Redis: counting, not logging, the rest",
                    _MAX_LOGGED,
                )
            return
        self._logged[where] = problem
        logger.error(
            "Ignoring malformed %s from Redis, keeping the last good one: %s", where, problem
        )

    def _good(self, where: str) -> None:
        self._logged.pop(where, None)

    def _install(
        self,
        section: str,
        documents: Mapping[str, Stored[PolicyDocument]] | Mapping[str, Stored[OverrideDocument]],
        *,
        authoritative: bool,
    ) -> set[str]:
        held: dict[str, Any] = self.policies if section == SECTION_POLICIES else self.overrides
        updated = dict(held)
        changed: set[str] = set()
        for name, item in documents.items():
            document = item.document
            if document is None:
                if not item.newer_kind:  # a kind from a newer control plane: not an error
                    self._bad(f"{section} field {printable(name)}", item.problem)
                continue
            if self._logged:
                self._good(f"{section} field {name}")
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

    def install_snapshot(self, snapshot: PolicyStore, now: float | None = None) -> set[str]:
        """Merge a snapshot; return the ``kind:name`` fields whose document changed.

        ``now`` (monotonic seconds) times how long the meta revision has stayed
        below the highest revision known: after ``BELIEVE_META_AFTER`` the snapshot
        is authoritative again, so one stray change message, or a database restored
        from a backup, costs a minute of extra resyncs, not every resync forever.
        """
        now = time.monotonic() if now is None else now
        for key, problem in snapshot.problems.items():
            self._bad(f"{key} key", problem)
        meta_revision_read = meta_revision(snapshot.meta)
        if snapshot.meta is not None and snapshot.meta.document is None:
            self._bad("meta", snapshot.meta.problem)
        elif snapshot.meta is not None:
            self._good("meta")
        authoritative = meta_revision_read is not None and meta_revision_read >= self.revision
        if meta_revision_read is None or authoritative:
            self._meta_below_since = None
        elif self._meta_below_since is None:
            self._meta_below_since = now
        elif now - self._meta_below_since >= BELIEVE_META_AFTER:
            logger.warning(
                "Redis's meta revision %d has stayed below revision %d, the highest known, "
                "for %.0f s: taking Redis's snapshot as authoritative (a stray change message, "
                "or a database restored from a backup)",
                meta_revision_read,
                self.revision,
                now - self._meta_below_since,
            )
            authoritative = True
            self._meta_below_since = None
        self.behind = not authoritative
        changed = self._install(SECTION_POLICIES, snapshot.policies, authoritative=authoritative)
        changed |= self._install(SECTION_OVERRIDES, snapshot.overrides, authoritative=authoritative)
        if authoritative and meta_revision_read is not None:
            self.revision = meta_revision_read
        return changed

    def apply_change(self, raw: str | bytes) -> tuple[set[str], bool]:
        """Apply one change message; return the changed fields and whether to resync."""
        try:
            message = ChangeMessage.decode(raw)
        except ProtocolError as exc:
            self._bad("change message", str(exc))
            return set(), False
        except Exception as exc:  # a decoder's bug on hostile input must not stop the follower
            self._bad("change message", f"{type(exc).__name__}: {exc}")
            return set(), False
        gap = message.revision > self.revision + 1
        self.revision = max(self.revision, message.revision)
        if message.section == SECTION_POLICIES:
            policy = decode_policy(message.field, message.document)
            return self._install(SECTION_POLICIES, {policy.field: policy}, authoritative=False), gap
        override = decode_override(message.field, message.document)
        return self._install(
            SECTION_OVERRIDES, {override.field: override}, authoritative=False
        ), gap

    def to_dict(self) -> dict[str, object]:
        """Return the state as the local snapshot file stores it."""
        return {
            "revision": self.revision,
            "policies": {k: v.encode() for k, v in self.policies.items()},
            "overrides": {k: v.encode() for k, v in self.overrides.items()},
        }
