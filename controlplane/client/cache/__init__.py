"""A Redis cache with stampede protection, driven by the control plane's cache policies.

``client.cached("prices", ttl=30)`` decorates sync and async functions;
``client.cache("prices")`` returns the :class:`Cache` itself (``get``/``set``/``delete``).

What happens on a call (``docs/protocol.md`` section 11 has the Redis layout):

1. Disabled by policy: the function is called, nothing else.
2. The in-process tier (``local_size > 0``): a fresh entry is returned without Redis.
3. Concurrent callers of the same entry in this process share one lookup and at most
   one computation (threads wait on an event, asyncio tasks await one task).
4. ``GET`` the entry. Fresh: returned. Stale but inside the stale window: returned at
   once, and one caller fleet-wide (elected by ``SET NX PX`` on the lock key) recomputes
   it in the background (a daemon thread for sync functions, a task for async ones).
5. Missing: the caller that takes the lock computes and stores it; the others poll the
   entry for up to ``lock_timeout`` (or until the lock is freed, and then take it), and
   compute it themselves as a last resort.

Redis failures never reach the caller: the cache degrades to calling the function
(and to the in-process tier). An exception raised by the function is never cached.

Where it is written: ``core.py`` decides, once for threads and asyncio, without
doing I/O; ``drivers.py`` does the I/O for each (and holds the public API);
``controlplane.protocol.cache_entries`` is what other processes read (digests,
envelopes, invalidation messages).
"""

from __future__ import annotations

from controlplane.client.cache.core import (
    BYPASS,
    HIT,
    LOCAL_HIT,
    MAX_BACKGROUND_REFRESHES,
    MISS,
    STALE_HIT,
    LocalKey,
    LocalTier,
    invalidation_channel,
    make_digest,
)
from controlplane.client.cache.drivers import Cache, CachedFunction
from controlplane.protocol.cache_entries import (
    DIGEST_DOMAIN,
    DIGEST_LENGTH,
    ENVELOPE_HEADER,
    ENVELOPE_VERSION,
    SERIALIZERS,
    Entry,
    EnvelopeError,
    JsonSerializer,
    PickleSerializer,
    Serializer,
    decode_envelope,
    encode_envelope,
)

__all__ = [
    "BYPASS",
    "DIGEST_DOMAIN",
    "DIGEST_LENGTH",
    "ENVELOPE_HEADER",
    "ENVELOPE_VERSION",
    "HIT",
    "LOCAL_HIT",
    "MAX_BACKGROUND_REFRESHES",
    "MISS",
    "SERIALIZERS",
    "STALE_HIT",
    "Cache",
    "CachedFunction",
    "Entry",
    "EnvelopeError",
    "JsonSerializer",
    "LocalKey",
    "LocalTier",
    "PickleSerializer",
    "Serializer",
    "decode_envelope",
    "encode_envelope",
    "invalidation_channel",
    "make_digest",
]
