from __future__ import annotations

from tests.client.conftest import client_factory, set_policy

__all__ = ["client_factory", "set_policy"]
