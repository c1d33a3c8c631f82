"""A tiny stand-in for the Hugging Face hub on 127.0.0.1: the network edge of download tests.

huggingface-hub runs unchanged against it (model info, HEAD metadata, ranged GETs), so the tests
exercise the real download code. Only what `app.hub.snapshot` asks for is served:
  GET  /api/models/<org>/<name>[/revision/<rev>]   -> id, sha, siblings with sizes
  HEAD /<org>/<name>/resolve/<rev>/<file>           -> X-Repo-Commit, ETag, Content-Length
  GET  same (Range honoured)                        -> the bytes, in 64 KiB blocks
`gate`: when set to an Event, the server sends the first `gate_after` bytes of each weights file
(*.safetensors), then waits for the Event before sending the rest (lets a test act mid-download).
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

BLOCK = 64 * 1024
SHA = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.repos = repos  # repo id -> {filename: content}
        self.requests: list[tuple[str, str]] = []
        self.gate: threading.Event | None = None
        self.gate_after = BLOCK
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub._serve(self, body=False)

            def do_GET(self):
                hub._serve(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.gate is not None:
            self.gate.set()
        self.server.shutdown()
        self.server.server_close()

    def use(self, monkeypatch) -> FakeHub:
        """Point huggingface-hub at this server and lift the tests' offline switch."""
        from huggingface_hub import constants

        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", self.url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", self.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", BLOCK)  # several progress reports per small file
        return self

    def _serve(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = h.path.split("?", 1)[0]
        self.requests.append((h.command, path))
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/[^/]+)?", path)
        if m and m.group(1) in self.repos:
            files = self.repos[m.group(1)]
            info = {"id": m.group(1), "sha": SHA, "private": False,
                    "siblings": [{"rfilename": n, "size": len(c)} for n, c in files.items()]}
            return self._send(h, 200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/[^/]+/(.+)", path)
        if m and m.group(2) in self.repos.get(m.group(1), {}):
            content = self.repos[m.group(1)][m.group(2)]
            headers = {"X-Repo-Commit": SHA, "ETag": f'"{hashlib.sha256(content).hexdigest()}"',
                       "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
            start = 0
            rng = re.fullmatch(r"bytes=(\d+)-", h.headers.get("Range", ""))
            if rng and body:
                start = int(rng.group(1))
                headers["Content-Range"] = f"bytes {start}-{len(content) - 1}/{len(content)}"
            gated = m.group(2).endswith(".safetensors")
            return self._send(h, 206 if start else 200, content[start:], headers, body, gated)
        self._send(h, 404, b'{"error": "not found"}', {"Content-Type": "application/json",
                                                        "X-Error-Code": "RepoNotFound"}, body)

    def _send(self, h, status: int, data: bytes, headers: dict, body: bool, gated: bool = False) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if not body:
            return
        try:
            for i in range(0, len(data), BLOCK):
                if gated and self.gate is not None and i >= self.gate_after:
                    self.gate.wait(120)  # until the test has clicked Cancel
                h.wfile.write(data[i:i + BLOCK])
                h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading (a cancelled download)


def repo_from_folder(folder: Path) -> dict[str, bytes]:
    """A fake repo holding the files of a local model folder."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
