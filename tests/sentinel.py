"""A Redis primary, its replica and three sentinels on loopback ports, for the tests.

The sentinels watch the primary under the service name ``SERVICE``; they take it
as down after ``down_after`` milliseconds without an answer and promote the
replica. Every process is started from files under the given directory and
killed by :meth:`SentinelServers.stop`.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import redis

from controlplane.embedded_redis import RedisServer, free_port, redis_server_binary

SERVICE = "cp-primary"


class ReplicaServer(RedisServer):
    """A Redis server replicating ``primary``."""

    def __init__(self, directory: Path, primary: RedisServer) -> None:
        super().__init__(directory)
        self.primary = primary

    def _arguments(self) -> list[str]:
        return [*super()._arguments(), "--replicaof", "127.0.0.1", str(self.primary.port)]


class SentinelProcess:
    """One ``redis-server --sentinel`` from a config file of its own (Sentinel rewrites it)."""

    def __init__(self, directory: Path, primary: RedisServer, down_after: int) -> None:
        self.directory = directory
        self.port = free_port()
        self.primary = primary
        self.down_after = down_after
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "sentinel.conf"
        config.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    "bind 127.0.0.1",
                    f'dir "{self.directory}"',
                    f'logfile "{self.directory / "sentinel.log"}"',
                    f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary.port} 2",
                    f"sentinel down-after-milliseconds {SERVICE} {self.down_after}",
                    f"sentinel failover-timeout {SERVICE} 3000",
                    f"sentinel parallel-syncs {SERVICE} 1",
                    "",
                ]
            )
        )
        self.process = subprocess.Popen(
            [redis_server_binary(), str(config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=1, decode_responses=True)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


class SentinelServers:
    """A primary, a replica and three sentinels; ``url`` is their ``redis+sentinel://`` URL."""

    def __init__(self, directory: Path, down_after: int = 1000) -> None:
        self.primary = RedisServer(directory / "primary")
        self.replica = ReplicaServer(directory / "replica", self.primary)
        self.sentinels = [
            SentinelProcess(directory / f"sentinel-{index}", self.primary, down_after)
            for index in range(3)
        ]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self, timeout: float = 30.0) -> None:
        self.primary.start()
        self.replica.start()
        for sentinel in self.sentinels:
            sentinel.start()
        # Ready when every sentinel knows the replica (synchronised) and the two others.
        self._wait(
            lambda state: int(state["num-slaves"]) == 1 and int(state["num-other-sentinels"]) == 2,
            timeout,
        )
        self._wait_replica_in_sync(timeout)

    def _wait(self, ready: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for sentinel in self.sentinels:
            client = sentinel.client()
            try:
                while True:
                    try:
                        state: Any = client.sentinel_master(SERVICE)
                        if ready(state):
                            break
                    except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
                        pass
                    if time.monotonic() > deadline:
                        raise RuntimeError("the sentinels did not get ready in time")
                    time.sleep(0.05)
            finally:
                client.close()

    def _wait_replica_in_sync(self, timeout: float) -> None:
        client = redis.Redis(port=self.replica.port, socket_timeout=1, decode_responses=True)
        deadline = time.monotonic() + timeout
        try:
            while client.info("replication").get("master_link_status") != "up":
                if time.monotonic() > deadline:
                    raise RuntimeError("the replica did not synchronise in time")
                time.sleep(0.05)
        finally:
            client.close()

    def primary_port(self) -> int | None:
        """The primary's port as the first sentinel that answers names it."""
        for sentinel in self.sentinels:
            client = sentinel.client()
            try:
                address: Any = client.sentinel_get_master_addr_by_name(SERVICE)
                if address:
                    return int(address[1])
            except (redis.ConnectionError, redis.TimeoutError):
                continue
            finally:
                client.close()
        return None

    def failover(self) -> None:
        """Ask a sentinel to promote the replica now (``SENTINEL FAILOVER``)."""
        client = self.sentinels[0].client()
        try:
            client.execute_command("SENTINEL", "FAILOVER", SERVICE)
        finally:
            client.close()

    def kill_primary(self) -> None:
        """Kill the primary's process (SIGKILL): the sentinels must notice and promote."""
        if self.primary.process is not None:
            self.primary.process.kill()
            self.primary.process.wait(timeout=10)
            self.primary.process = None

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in (self.replica, self.primary):
            if server.process is not None:
                server.process.kill()
                server.process.wait(timeout=10)
                server.process = None
