"""Old home of the override actions, now in ``controlplane.policies.overrides``.

Only re-exports remain, for the test modules outside this change that still
import from here (tests/faults/, tests/policies/test_redis_documents_properties.py,
tests/test_form_fuzz.py); delete this module once they import from policies.
"""

from __future__ import annotations

from controlplane.policies.overrides import (
    RedisUnavailableError,
    active_overrides,
    current_override,
    do_clear_override,
    do_purge_cache,
    do_reset_breaker,
    do_set_override,
    expire_overrides,
    newest_overrides,
    override_document,
    publish_override,
)

__all__ = [
    "RedisUnavailableError",
    "active_overrides",
    "current_override",
    "do_clear_override",
    "do_purge_cache",
    "do_reset_breaker",
    "do_set_override",
    "expire_overrides",
    "newest_overrides",
    "override_document",
    "publish_override",
]
