"""Fixtures of the webhook tests: a real HTTP receiver on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.webhooks.receiver import Receiver


@pytest.fixture
def allow_private_targets(settings: Any) -> None:
    """Let webhooks reach loopback, where the test receiver listens (refused in production)."""
    settings.WEBHOOKS_ALLOW_PRIVATE_TARGETS = True


@pytest.fixture
def receiver(allow_private_targets: None) -> Iterator[Receiver]:
    """A receiver on 127.0.0.1 that records requests; webhooks may deliver to it."""
    server = Receiver()
    server.start()
    try:
        yield server
    finally:
        server.stop()
