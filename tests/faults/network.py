"""Ways to take the database away from the app for real, and give it back.

PostgreSQL: the app connects through a TCP proxy on loopback, which ``cut()``
makes drop every connection and refuse new ones (the network between the app
and its database is outside the product). SQLite: the app opens its file
through a directory link, which ``cut()`` removes, as when the volume holding
the file goes away; the file itself is never touched.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path
from typing import Protocol


class DatabaseLink(Protocol):
    def cut(self) -> None: ...

    def restore(self) -> None: ...

    def close(self) -> None: ...


class TcpProxy:
    """Forward connections from a loopback port to ``target`` (a TCP address or a unix socket)."""

    def __init__(self, target: tuple[str, int] | str) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._open = True
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, name="faults-proxy", daemon=True)
        self._accepting.start()

    def cut(self) -> None:
        """Drop every open connection; from now on, close new ones at once."""
        with self._lock:
            self._open = False
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            _shut(sock)

    def restore(self) -> None:
        with self._lock:
            self._open = True

    def close(self) -> None:
        self.cut()
        self._closed.set()
        self._accepting.join(timeout=5)
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _connect_upstream(self) -> socket.socket:
        if isinstance(self.target, str):
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.settimeout(5)
            upstream.connect(self.target)
        else:
            upstream = socket.create_connection(self.target, timeout=5)
        upstream.settimeout(None)
        return upstream

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                downstream, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            downstream.settimeout(None)
            with self._lock:
                refused = not self._open
            if refused:
                _shut(downstream)
                continue
            try:
                upstream = self._connect_upstream()
            except OSError:
                _shut(downstream)
                continue
            with self._lock:
                self._sockets.update((downstream, upstream))
            for source, sink in ((downstream, upstream), (upstream, downstream)):
                thread = threading.Thread(
                    target=self._pump, args=(source, sink), name="faults-proxy-pump", daemon=True
                )
                thread.start()
                self._threads.append(thread)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            with self._lock:
                self._sockets.discard(source)
                self._sockets.discard(sink)
            _shut(source)
            _shut(sink)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already shut by the other side
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class DirectoryLink:
    """A symbolic link to the database's directory, which can be removed and put back."""

    def __init__(self, path: Path, directory: Path) -> None:
        self.path = path
        self.directory = directory
        self.path.symlink_to(directory, target_is_directory=True)

    def cut(self) -> None:
        self.path.unlink()

    def restore(self) -> None:
        if not self.path.is_symlink():
            self.path.symlink_to(self.directory, target_is_directory=True)

    def close(self) -> None:
        self.restore()
