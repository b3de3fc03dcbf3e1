"""Publishing committed changes to Redis, in the layout of ``docs/protocol.md``."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Final

import redis

from controlplane.ops.metrics import PUBLISH_SECONDS, PUBLISHES, REDIS_ERRORS
from controlplane.policies.models import Policy
from controlplane.protocol import scripts
from controlplane.protocol.documents import (
    SECTION_POLICIES,
    MetaDocument,
    PolicyDocument,
    change_message,
)
from controlplane.protocol.keys import KeyLayout
from controlplane.redis_connection import get_redis

logger = logging.getLogger(__name__)

_PUBLISH: Final = scripts.load("publish")


def policy_document(policy: Policy) -> PolicyDocument:
    """Return the document that represents ``policy`` in Redis."""
    return PolicyDocument(
        kind=policy.kind,
        name=policy.name,
        version=policy.version,
        revision=policy.revision,
        spec=None if policy.deleted else policy.spec,
        updated_at=policy.updated_at.isoformat(),
        updated_by=policy.updated_by,
    )


def write_document(
    keys: KeyLayout,
    section: str,
    field: str,
    document: str,
    revision: int,
    *,
    replacing: str | bytes = "",
    raise_meta: bool = True,
) -> bool:
    """Write one document and its change notification atomically; raise on Redis errors.

    Returns whether the document was written: ``False`` means Redis already
    holds this revision or a newer one. With ``replacing``, the write happens
    only if the field holds exactly that value, whatever its revision. Without
    ``raise_meta``, the environment's published revision is left as it is.
    """
    client = get_redis()
    meta = MetaDocument(keys.environment, revision, datetime.now(UTC).isoformat())
    started = time.perf_counter()
    written, _ = scripts.run(
        client,
        _PUBLISH,
        [getattr(keys, section), keys.meta],
        [
            field,
            document,
            revision,
            keys.changes,
            change_message(section, field, revision, document) if field else "",
            meta.encode() if raise_meta else "",
            replacing,
        ],
    )
    PUBLISH_SECONDS.observe(time.perf_counter() - started)
    PUBLISHES.labels(section, "written" if written else "stale").inc()
    return bool(written)


def raise_meta_revision(keys: KeyLayout, revision: int) -> None:
    """Make the environment's published revision at least ``revision``."""
    write_document(keys, SECTION_POLICIES, "", "", revision)


def publish_policy(keys: KeyLayout, document: PolicyDocument) -> bool:
    """Publish a committed policy change; on a Redis failure leave it to the reconciler.

    Returns whether Redis now holds the document (or a newer one).
    """
    field = f"{document.kind}:{document.name}"
    try:
        write_document(keys, SECTION_POLICIES, field, document.encode(), document.revision)
    except redis.RedisError as exc:
        PUBLISHES.labels(SECTION_POLICIES, "failed").inc()
        REDIS_ERRORS.labels("publish").inc()
        logger.warning(
            "Could not publish %s/%s revision %d (%s); the reconciler will retry",
            keys.environment,
            field,
            document.revision,
            exc,
        )
        return False
    return True
