"""A tiny stand-in for the Hugging Face hub on 127.0.0.1: the network edge of download tests.

huggingface-hub runs unchanged against it (model info, HEAD metadata, ranged GETs, the model list,
uploads), so the tests exercise its real code. What LoRA Desk asks for is served:
  GET  /api/models?filter=&search=&sort=&limit=     -> the repos whose tags hold every filter and whose
                                                       id holds `search`, most downloaded first
  GET  /api/models/<org>/<name>[/revision/<rev>]   -> id, sha, siblings (sizes; with ?blobs, lfs sha256),
                                                       tags, downloads, likes, cardData (from `info`)
  HEAD /<org>/<name>/resolve/<rev>/<file>           -> X-Repo-Commit, ETag, Content-Length
  GET  same (Range bytes=a- and bytes=a-b honoured) -> the bytes, in 64 KiB blocks
  POST /api/repos/create, /api/validate-yaml, /api/models/<repo>/preupload/<rev> (every file "regular",
       so no LFS or Xet storage is needed), /api/models/<repo>/commit/<rev> (ndjson, base64 files)
       -> the repo is created or updated; `created` and `commits` record what was asked.
Revisions: `repos[repo]` is the main branch at commit SHA; `revisions[repo][sha]` holds older commits.
Writes need an `Authorization: Bearer` header (401 otherwise), as on the Hub.
`gate`: when set to an Event, the server sends the first `gate_after` bytes of each weights file
(*.safetensors), then waits for the Event before sending the rest (lets a test act mid-download).
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from urllib.parse import parse_qs, urlsplit
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

BLOCK = 64 * 1024
SHA = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, repos: dict[str, dict[str, bytes]], info: dict[str, dict] | None = None,
                 revisions: dict[str, dict[str, dict[str, bytes]]] | None = None):
        self.repos = repos  # repo id -> {filename: content} at main (commit SHA)
        self.info = info or {}  # repo id -> extra model-info fields: tags, downloads, likes, cardData
        self.revisions = revisions or {}  # repo id -> {commit sha: {filename: content}}
        self.heads: dict[str, str] = {}  # repo id -> its main commit, once a push changed it
        self.requests: list[tuple[str, str]] = []
        self.ranged: list[str] = []  # paths of GETs that asked for a byte range
        self.created: list[dict] = []  # /api/repos/create payloads
        self.commits: list[dict] = []  # {"repo", "summary", "files": {path: bytes}}
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

            def do_POST(self):
                hub._post(self)

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
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            self.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", BLOCK)  # several progress reports per small file
        return self

    def _files(self, repo: str, rev: str) -> tuple[str, dict[str, bytes]] | None:
        """(commit, files) of `repo` at `rev` (main, the head commit, or an older commit)."""
        if repo not in self.repos:
            return None
        head = self.heads.get(repo, SHA)
        if rev in ("main", head):
            return head, self.repos[repo]
        old = self.revisions.get(repo, {})
        return (rev, old[rev]) if rev in old else None

    def _model_info(self, repo: str, sha: str, files: dict[str, bytes], blobs: bool) -> dict:
        siblings = []
        for n, c in files.items():
            sib = {"rfilename": n}
            if blobs:
                sib["size"] = len(c)
                if n.endswith(".safetensors"):
                    sib["lfs"] = {"sha256": hashlib.sha256(c).hexdigest(), "size": len(c), "pointerSize": 134}
            siblings.append(sib)
        extra = self.info.get(repo, {})
        return {"id": repo, "sha": sha, "private": False, "siblings": siblings, "tags": [], "downloads": 0,
                "likes": 0, **extra}

    def _serve(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        url = urlsplit(h.path)
        path, query = url.path, parse_qs(url.query)
        self.requests.append((h.command, path))
        json_type = {"Content-Type": "application/json"}
        if path == "/api/models":
            wanted, search = query.get("filter", []), (query.get("search") or [""])[0].lower()
            found = [self._model_info(r, self.heads.get(r, SHA), f, blobs=False) for r, f in self.repos.items()]
            found = [i for i in found if all(t in i["tags"] for t in wanted) and search in i["id"].lower()]
            found.sort(key=lambda i: -i["downloads"])
            found = found[:int((query.get("limit") or [len(found)])[0])]
            return self._send(h, 200, json.dumps(found).encode(), json_type, body)
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
        if m:
            at = self._files(m.group(1), m.group(2) or "main")
            if at is None:
                code = "RevisionNotFound" if m.group(1) in self.repos else "RepoNotFound"
                return self._send(h, 404, b'{"error": "not found"}', {**json_type, "X-Error-Code": code}, body)
            info = self._model_info(m.group(1), at[0], at[1], blobs="blobs" in query)
            return self._send(h, 200, json.dumps(info).encode(), json_type, body)
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        at = self._files(m.group(1), m.group(2)) if m else None
        if at is not None and m.group(3) in at[1]:
            content = at[1][m.group(3)]
            headers = {"X-Repo-Commit": at[0], "ETag": f'"{hashlib.sha256(content).hexdigest()}"',
                       "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
            start, stop = 0, len(content)
            rng = re.fullmatch(r"bytes=(\d+)-(\d*)", h.headers.get("Range", ""))
            if rng and body:
                self.ranged.append(path)
                start = int(rng.group(1))
                stop = min(len(content), int(rng.group(2)) + 1) if rng.group(2) else len(content)
                headers["Content-Range"] = f"bytes {start}-{stop - 1}/{len(content)}"
            gated = m.group(3).endswith(".safetensors")
            partial = start > 0 or stop < len(content)
            return self._send(h, 206 if partial else 200, content[start:stop], headers, body, gated)
        self._send(h, 404, b'{"error": "not found"}', {**json_type, "X-Error-Code": "RepoNotFound"}, body)

    def _post(self, h: BaseHTTPRequestHandler) -> None:
        path = urlsplit(h.path).path
        self.requests.append(("POST", path))
        data = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        ok = {"Content-Type": "application/json"}
        if not h.headers.get("Authorization", "").startswith("Bearer "):
            return self._send(h, 401, b'{"error": "Invalid credentials"}', ok, True)
        if path == "/api/validate-yaml":
            return self._send(h, 200, b'{"errors": [], "warnings": []}', ok, True)
        if path == "/api/repos/create":
            payload = json.loads(data)
            repo = f"{payload['organization']}/{payload['name']}"
            self.created.append(payload)
            if repo in self.repos:
                return self._send(h, 409, b'{"error": "You already created this model repo"}', ok, True)
            self.repos[repo] = {}
            return self._send(h, 200, json.dumps({"url": f"{self.url}/{repo}"}).encode(), ok, True)
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/[^/]+", path)
        if m and m.group(1) in self.repos:
            files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                     for f in json.loads(data)["files"]]
            return self._send(h, 200, json.dumps({"files": files}).encode(), ok, True)
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/[^/]+", path)
        if m and m.group(1) in self.repos:
            repo, lines = m.group(1), [json.loads(x) for x in data.splitlines() if x.strip()]
            header = next(x["value"] for x in lines if x["key"] == "header")
            files = {x["value"]["path"]: base64.b64decode(x["value"]["content"]) for x in lines if x["key"] == "file"}
            self.commits.append({"repo": repo, "summary": header["summary"], "files": files})
            self.repos[repo] = {**self.repos[repo], **files}
            if "README.md" in files:  # the Hub indexes a card's YAML header: its tags become the repo's
                card = card_metadata(files["README.md"].decode())
                self.info[repo] = {**self.info.get(repo, {}), "cardData": card, "tags": list(card.get("tags", []))}
            sha = hashlib.sha1(json.dumps(sorted((k, hashlib.sha256(v).hexdigest()) for k, v in
                                                 self.repos[repo].items())).encode()).hexdigest()
            self.heads[repo] = sha
            out = {"commitUrl": f"{self.url}/{repo}/commit/{sha}", "commitOid": sha}
            return self._send(h, 200, json.dumps(out).encode(), ok, True)
        self._send(h, 404, b'{"error": "not found"}', {**ok, "X-Error-Code": "RepoNotFound"}, True)

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


def card_metadata(readme: str) -> dict:
    """The YAML header of a model card (between the leading --- lines), as the Hub reads it."""
    import yaml

    if not readme.startswith("---\n"):
        return {}
    return yaml.safe_load(readme[4:readme.index("\n---", 3)]) or {}


def repo_from_folder(folder: Path) -> dict[str, bytes]:
    """A fake repo holding the files of a local model folder."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
