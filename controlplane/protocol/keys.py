"""The Redis key layout shared by the control plane and the client library.

Every key starts with a prefix (``rcp`` unless configured) and an environment
name. Keys that one script touches together share a Redis Cluster hash slot:

* ``{<prefix>:<env>}:...`` holds everything the control plane owns for one
  environment (policies, overrides, metadata, breaker state, reports), so the
  publish and breaker scripts can touch several of them atomically.
* rate-limit and cache entries carry their own hash tag (the subject or the
  entry), so traffic spreads over the cluster instead of one slot.

``docs/protocol.md`` is the normative description; this module is its code.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

PROTOCOL_VERSION = 1  # the `schema` of every document
PROTOCOL_REVISION = "1.1"  # the version of docs/protocol.md this code implements
DEFAULT_PREFIX = "rcp"

# Names that appear inside keys: keep them short, printable and free of the
# characters that carry meaning in keys (braces choose the hash slot).
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}\Z")
PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,31}\Z")

# Subjects (user ids, IPs, cache arguments) are free text; longer ones or ones
# holding braces are replaced by a digest so the hash tag stays well formed.
_MAX_PLAIN_SUBJECT = 64
_PLAIN_SUBJECT = re.compile(r"^[A-Za-z0-9_.:@\-/]+\Z")


def subject_token(subject: str) -> str:
    """Return ``subject`` in a form safe inside a key and its hash tag."""
    if len(subject) <= _MAX_PLAIN_SUBJECT and _PLAIN_SUBJECT.match(subject):
        return subject
    return "#" + hashlib.sha256(subject.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class KeyLayout:
    """The keys and channels of one environment."""

    environment: str
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not PREFIX_PATTERN.match(self.prefix):
            raise ValueError(f"invalid key prefix {self.prefix!r}")
        if not NAME_PATTERN.match(self.environment):
            raise ValueError(f"invalid environment name {self.environment!r}")

    @property
    def _tag(self) -> str:
        return "{" + f"{self.prefix}:{self.environment}" + "}"

    # Policy store, written only by the control plane.
    @property
    def policies(self) -> str:
        """Hash: ``<kind>:<name>`` -> policy document (JSON)."""
        return f"{self._tag}:policies"

    @property
    def overrides(self) -> str:
        """Hash: ``<kind>:<name>`` -> override document (JSON)."""
        return f"{self._tag}:overrides"

    @property
    def meta(self) -> str:
        """String: environment metadata document (JSON) with the revision."""
        return f"{self._tag}:meta"

    @property
    def changes(self) -> str:
        """Pub/sub channel: one message per published change."""
        return f"{self._tag}:changes"

    # Shared runtime state, written by clients.
    @property
    def breakers(self) -> str:
        """Hash: breaker name -> shared breaker state document (JSON)."""
        return f"{self._tag}:breakers"

    def breaker_probes(self, name: str) -> str:
        """String counter: half-open probe permits taken fleet-wide."""
        return f"{self._tag}:breaker-probes:{name}"

    @property
    def breaker_events(self) -> str:
        """Pub/sub channel: shared breaker transitions."""
        return f"{self._tag}:breaker-events"

    @property
    def reports(self) -> str:
        """Stream: heartbeats, transitions, counters and discoveries from clients."""
        return f"{self._tag}:reports"

    @property
    def instances(self) -> str:
        """Hash: instance id -> last heartbeat document (JSON)."""
        return f"{self._tag}:instances"

    # Live state kept by the control plane from the reports (see docs/protocol.md).
    def live_second(self, second: int) -> str:
        """Hash: ``<kind:name>|<counter>`` -> sum over instances during one second."""
        return f"{self._tag}:live:s:{second}"

    def live_minute(self, minute: int) -> str:
        """Hash: ``<kind:name>|<counter>`` -> sum over instances during one minute, and
        ``breaker:<name>|state:<state>`` -> reports of that state (the rows' sparklines)."""
        return f"{self._tag}:live:m:{minute}"

    def live_top_rejected(self, name: str, minute: int) -> str:
        """Sorted set: subjects a limiter rejected during one minute, by count."""
        return f"{self._tag}:live:top:{name}:{minute}"

    @property
    def live_breaker_states(self) -> str:
        """Hash: ``<breaker name>|<instance>`` -> ``<state>|<unix time>``."""
        return f"{self._tag}:live:breaker-states"

    # Data-plane keys, each with its own hash tag.
    def rate_limit(self, name: str, subject: str) -> str:
        """Base key of one limiter's state for one subject (scripts add suffixes)."""
        token = subject_token(subject)
        return "{" + f"{self.prefix}:{self.environment}:rl:{name}:{token}" + "}"

    def cache_entry(self, name: str, generation: int, digest: str) -> str:
        """String: one cached value (an envelope, see the protocol document)."""
        return "{" + f"{self.prefix}:{self.environment}:c:{name}:{digest}" + "}" + f":g{generation}"

    def cache_invalidations(self, name: str) -> str:
        """Pub/sub channel: single entries of cache ``name`` dropped from in-process tiers."""
        return f"{self._tag}:cache-invalidations:{name}"

    def cache_lock(self, name: str, generation: int, digest: str) -> str:
        """String: the recompute lock of one cache entry (same slot as the entry)."""
        return self.cache_entry(name, generation, digest) + ":lock"


def policy_field(kind: str, name: str) -> str:
    """Return the hash field under which a policy or override of ``kind`` is stored."""
    return f"{kind}:{name}"


def split_policy_field(field: str) -> tuple[str, str]:
    """Split a hash field back into ``(kind, name)``."""
    kind, sep, name = field.partition(":")
    if not sep or not kind or not name:
        raise ValueError(f"malformed policy field {field!r}")
    return kind, name
