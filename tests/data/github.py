"""A loopback stand-in for the three GitHub hosts `fingpt-data download` reads, with GitHub's
paths under http://127.0.0.1:PORT/<host>/ (FINGPT_GITHUB_MIRROR):

    codeload.github.com/OWNER/REPO/tar.gz/COMMIT                 a tar.gz of the commit
    api.github.com/repos/OWNER/REPO/git/trees/COMMIT?recursive=1  the commit's files, with blob ids
    raw.githubusercontent.com/OWNER/REPO/COMMIT/PATH             one file

It honours `Range: bytes=N-` as GitHub does (206), and can misbehave on purpose: cut a response
short once, refuse a request once (429, as GitHub's rate limit does), or stall in the middle of
a response until released.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


def tar_gz(top: str, files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(f"{top}/{path}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class GitHub:
    def __init__(self) -> None:
        self.bodies: dict[str, bytes] = {}  # "/<host>/<path>" -> body
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.cut_once: dict[str, int] = {}  # path -> bytes sent before the connection closes, once
        self.refuse_once: dict[str, tuple[int, dict]] = {}  # path -> (status, headers), once
        self.stall_at: dict[str, int] = {}  # path -> bytes sent before waiting for `release`
        self.sent = threading.Event()  # set when a stalled response has sent its bytes
        self.release = threading.Event()
        github = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                github.requests.append((self.path, self.headers.get("Range")))
                body = github.bodies.get(self.path.split("?")[0])
                if refusal := github.refuse_once.pop(self.path, None):
                    self.send_response(refusal[0])
                    for name, value in refusal[1].items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if body is None:
                    self.send_error(404)
                    return
                start = (
                    int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
                    if self.headers.get("Range")
                    else 0
                )
                if start >= len(body):
                    self.send_error(416)
                    return
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                rest = body[start:]
                if (cut := github.cut_once.pop(self.path, None)) is not None:
                    self.wfile.write(rest[:cut])  # Content-Length promised more: a cut download
                    self.close_connection = True
                    return
                if (stall := github.stall_at.get(self.path)) is not None:
                    self.wfile.write(rest[:stall])
                    self.wfile.flush()
                    github.sent.set()
                    github.release.wait(timeout=60)
                    return
                self.wfile.write(rest)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def publish(self, repo: str, commit: str, files: dict[str, bytes]) -> None:
        """Serve `files` as the repository `repo` at `commit`, on all three hosts."""
        self.bodies[f"/codeload.github.com/{repo}/tar.gz/{commit}"] = tar_gz(
            f"{repo.split('/')[1]}-{commit}", files
        )
        tree = [
            {"path": p, "mode": "100644", "type": "blob", "sha": git_blob_id(d), "size": len(d)}
            for p, d in files.items()
        ]
        listing = {"sha": commit, "tree": sorted(tree, key=lambda e: e["path"]), "truncated": False}
        self.bodies[f"/api.github.com/repos/{repo}/git/trees/{commit}"] = json.dumps(listing).encode()
        for path, data in files.items():
            self.bodies[f"/raw.githubusercontent.com/{repo}/{commit}/{path}"] = data

    def paths(self, host: str) -> list[str]:
        return [path for path, _ in self.requests if path.startswith(f"/{host}/")]

    def __enter__(self) -> GitHub:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
