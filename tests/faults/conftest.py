from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import connections

from tests.client.conftest import client_factory, set_policy
from tests.daphne import close_connections_and_pools
from tests.faults.network import DatabaseLink, DirectoryLink, TcpProxy

__all__ = ["client_factory", "database_link", "set_policy"]


@pytest.fixture
def database_link(transactional_db: None, tmp_path: Path) -> Iterator[DatabaseLink]:
    """Route this process's connections (and those of the servers it forks) through a link
    the test can cut: a TCP proxy to PostgreSQL, or a directory link to the SQLite file.
    """
    settings_dict = connections["default"].settings_dict
    saved = dict(settings_dict)
    link: DatabaseLink
    if connections["default"].vendor == "sqlite":
        database = Path(settings_dict["NAME"])
        volume = DirectoryLink(tmp_path / "volume", database.parent)
        settings_dict["NAME"] = str(volume.path / database.name)
        link = volume
    else:
        host, port = settings_dict["HOST"] or "localhost", int(settings_dict["PORT"] or 5432)
        proxy = TcpProxy(f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port))
        settings_dict.update(HOST="127.0.0.1", PORT=str(proxy.port))
        pool = settings_dict["OPTIONS"].get("pool")
        if pool:  # the outage's 503s each wait for the pool: not 5 s each here
            settings_dict["OPTIONS"] = {**settings_dict["OPTIONS"], "pool": {**pool, "timeout": 1}}
        link = proxy
    close_connections_and_pools()
    try:
        yield link
    finally:
        link.close()
        close_connections_and_pools()
        settings_dict.clear()
        settings_dict.update(saved)
