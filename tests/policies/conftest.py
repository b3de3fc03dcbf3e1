from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.db import transaction

from controlplane.policies.signals import row_changed


@pytest.fixture
def announced() -> Iterator[list[tuple[str, str, bool]]]:
    """Each ``row_changed`` heard: (environment, field, whether its transaction had committed)."""
    heard: list[tuple[str, str, bool]] = []

    def listener(sender: object, *, environment: str, field: str, **kwargs: object) -> None:
        heard.append((environment, field, not transaction.get_connection().in_atomic_block))

    row_changed.connect(listener)
    try:
        yield heard
    finally:
        row_changed.disconnect(listener)
