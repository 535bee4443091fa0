"""Network faults for the wait/deadline tests, on 127.0.0.1 only.

:class:`StallProxy` is a TCP proxy to a real server (the local testbed's API server) that forwards bytes
both ways until :meth:`StallProxy.stall`; from then on it forwards nothing and holds every connection
open, old and new (a path that stops mid-watch: no reset, no FIN, just silence). With no upstream it is a
server that accepts connections and never answers (not even the TLS handshake). Threads are daemons;
:meth:`StallProxy.close` stops them and closes every socket.
"""

from __future__ import annotations

import json
import select
import socket
import threading
from pathlib import Path


class StallProxy:
    def __init__(self, upstream: tuple[str, int] | None = None) -> None:
        self.upstream = upstream
        self.stalled = threading.Event()
        if upstream is None:
            self.stalled.set()
        self._done = threading.Event()
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def stall(self) -> None:
        self.stalled.set()

    def _keep(self, s: socket.socket) -> None:
        with self._lock:
            self._socks.append(s)

    def _accept(self) -> None:
        while not self._done.is_set():
            try:
                c, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            self._keep(c)
            if self.stalled.is_set() or self.upstream is None:
                continue  # held open, never answered
            try:
                u = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                c.close()
                continue
            self._keep(u)
            threading.Thread(target=self._pump, args=(c, u), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peer = {a: b, b: a}
        while not self._done.is_set():
            if self.stalled.is_set():
                self._done.wait(0.2)
                continue
            try:
                ready, _, _ = select.select([a, b], [], [], 0.2)
            except (OSError, ValueError):
                return
            for s in ready:
                if self.stalled.is_set():
                    break
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    a.close()
                    b.close()
                    return
                try:
                    peer[s].sendall(data)
                except OSError:
                    a.close()
                    b.close()
                    return

    def close(self) -> None:
        self._done.set()
        self.listener.close()
        with self._lock:
            for s in self._socks:
                try:
                    s.close()
                except OSError:
                    pass


def kubeconfig_via(src: Path | None, url: str, dest: Path) -> Path:
    """A copy of kubeconfig ``src`` whose every cluster points at ``url`` (the server certificate of the
    testbed names 127.0.0.1, which still matches); ``src=None``: a minimal kubeconfig (TLS not verified)."""
    import yaml

    if src is None:
        data = {"apiVersion": "v1", "kind": "Config", "current-context": "x",
                "clusters": [{"name": "c", "cluster": {"server": url, "insecure-skip-tls-verify": True}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "users": [{"name": "u", "user": {"token": "t"}}]}
    else:
        data = yaml.safe_load(src.read_text())
        for c in data["clusters"]:
            c["cluster"]["server"] = url
    dest.write_text(json.dumps(data))
    return dest
