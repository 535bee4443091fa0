"""TEST DOUBLE of the Hugging Face Hub's HTTP API, on 127.0.0.1, serving one repository from a local directory.

It answers exactly the requests that huggingface_hub 2.4.0 sends for ``dsv3ctl weights download`` (read in the
installed wheel):

- ``GET /api/models/<repo>/revision/<rev>?blobs=True`` (``HfApi.model_info(files_metadata=True)``,
  hf_api.py:3201-3216) -> ``{"id", "sha", "siblings": [{"rfilename", "size", "blobId", "lfs": {"sha256",
  "size", "pointerSize"}}]}`` (parsed at hf_api.py:967-985);
- ``HEAD /<repo>/resolve/<rev>/<path>`` (``get_hf_file_metadata``, file_download.py:1618-1690) -> headers
  ``X-Repo-Commit``, ``ETag`` and, for LFS files, ``X-Linked-Etag`` (the sha256) and ``X-Linked-Size``;
- ``GET /<repo>/resolve/<rev>/<path>`` with an optional ``Range: bytes=N-`` (``http_get``,
  file_download.py:377-378) -> 200, or 206 with ``Content-Range: bytes N-M/TOTAL``.

Files larger than ``lfs_min`` bytes (and every ``*.safetensors``) are LFS files. Every GET is logged as
(path, Range header or None, bytes sent). ``stall_after`` makes every response stop after that many bytes and hang
until :meth:`release` (a slow transfer to kill); ``corrupt_next`` serves the named paths once with one byte flipped.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubDouble:
    def __init__(self, root: Path, repo: str, lfs_min: int = 1 << 20) -> None:
        self.root, self.repo, self.lfs_min = root, repo, lfs_min
        self.gets: list[list] = []  # [path, Range header or None, bytes sent]
        self.stall_after: int | None = None
        self.corrupt_next: set[str] = set()
        self._release = threading.Event()
        self._lock = threading.Lock()
        self.files: dict[str, dict[str, object]] = {}
        self.rescan()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def rescan(self) -> None:
        self.files = {}
        for p in sorted(self.root.rglob("*")):
            if not p.is_file():
                continue
            rel = str(p.relative_to(self.root))
            data = p.read_bytes()
            lfs = rel.endswith(".safetensors") or len(data) >= self.lfs_min
            self.files[rel] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest() if lfs else None,
                               "git": hashlib.sha1(data).hexdigest(), "lfs": lfs}

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> HubDouble:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()

    def release(self) -> None:
        self.stall_after = None
        self._release.set()

    def ranges(self, path: str) -> list[str | None]:
        return [r for p, r, _n in self.gets if p == path]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self
        resolve = re.compile(rf"^/{re.escape(hub.repo)}/resolve/([^/]+)/(.+)$")
        info = re.compile(rf"^/api/models/{re.escape(hub.repo)}/revision/([^/]+)$")

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: object) -> None:
                pass

            def _send(self, code: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _meta(self, rel: str) -> dict[str, str]:
                f = hub.files[rel]
                h = {"X-Repo-Commit": COMMIT, "ETag": f'"{f["git"]}"', "Accept-Ranges": "bytes"}
                if f["lfs"]:
                    h["X-Linked-Etag"] = f'"{f["sha256"]}"'
                    h["X-Linked-Size"] = str(f["size"])
                return h

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                path = unquote(urlsplit(self.path).path)
                if m := info.match(path):
                    sib = []
                    for rel, f in hub.files.items():
                        s: dict[str, object] = {"rfilename": rel, "size": f["size"], "blobId": f["git"]}
                        if f["lfs"]:
                            s["lfs"] = {"sha256": f["sha256"], "size": f["size"], "pointerSize": 134}
                        sib.append(s)
                    body = json.dumps({"id": hub.repo, "modelId": hub.repo, "sha": COMMIT, "siblings": sib}).encode()
                    return self._send(200, body, {"Content-Type": "application/json"})
                m = resolve.match(path)
                if not m or m.group(2) not in hub.files:
                    return self._send(404, b"{}", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT})
                rel = m.group(2)
                if self.command == "HEAD":  # the size of the file, no body
                    self.send_response(200)
                    for k, v in {**self._meta(rel), "Content-Length": str(hub.files[rel]["size"])}.items():
                        self.send_header(k, v)
                    self.end_headers()
                    return None
                data = (hub.root / rel).read_bytes()
                with hub._lock:
                    if rel in hub.corrupt_next:
                        hub.corrupt_next.discard(rel)
                        data = data[:-1] + bytes([data[-1] ^ 0xFF])
                rng = self.headers.get("Range")
                start = 0
                if rng and (mm := re.fullmatch(r"bytes=(\d+)-", rng)):
                    start = int(mm.group(1))
                body = data[start:]
                code = 206 if rng else 200
                headers = {**self._meta(rel), "Content-Length": str(len(body))}
                if rng:
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                sent = 0
                limit = hub.stall_after
                rec = [rel, rng, 0]  # logged when the request arrives, bytes sent updated as they go
                hub.gets.append(rec)
                try:
                    step = 1 << 20
                    while sent < len(body):
                        if limit is not None and sent >= limit:
                            hub._release.wait(60)
                            break
                        n = min(step, len(body) - sent)
                        self.wfile.write(body[sent:sent + n])
                        self.wfile.flush()
                        sent += n
                        rec[2] = sent
                except (BrokenPipeError, ConnectionResetError):
                    pass
                if sent < len(body):
                    self.close_connection = True

            do_HEAD = do_GET  # noqa: N815

        return H
