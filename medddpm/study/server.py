"""``study serve``: the readers' pages over HTTP, and their answers appended to disk as they arrive.

Standard library only (http.server's ThreadingHTTPServer). Each reader has a link with a secret token,
``http://HOST:PORT/r/TOKEN/``: it serves STUDY_DIR/readers/READER/ and nothing else, so key.json (and
the other readers' pages) can never be fetched. The page posts each answer to ``/r/TOKEN/answers``;
the server appends it as one line to STUDY_DIR/responses/READER.jsonl and fsyncs before it replies,
so an answer the page was told is saved survives a crash or a kill -9 of the server.

Refused: an unknown token (403), a path that leaves the reader's folder or names a hidden file (404),
a body without a length or larger than MAX_BODY (413, unread), an answer that is not a JSON object
for a case of the study (400).
"""

from __future__ import annotations

import json
import os
import threading
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from medddpm.errors import InputError
from medddpm.study.responses import RESPONSES, log_path

MAX_BODY = 64 * 1024
"""Largest answer accepted, in bytes: one answer with a long comment is a few kB."""
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".png": "image/png"}


def load_key(study_dir: Path) -> dict[str, Any]:
    """key.json of a built study; InputError for a folder ``study build`` did not write."""
    path = Path(study_dir) / "key.json"
    if not path.is_file():
        raise InputError(
            "not a study folder: it has no key.json (the folder `medddpm study build` wrote)", study_dir
        )
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise InputError(f"key.json cannot be read ({e})", path) from None


def append_line(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and fsync it (O_APPEND: a line is never written over another)."""
    data = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


class StudyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, study_dir: Path, address: tuple[str, int]):
        self.study_dir = Path(study_dir)
        self.key = load_key(self.study_dir)
        self.readers = {v["token"]: name for name, v in self.key["readers"].items()}
        self.lock = threading.Lock()
        (self.study_dir / RESPONSES).mkdir(exist_ok=True)
        super().__init__(address, Handler)

    def links(self) -> dict[str, str]:
        """reader -> the link to hand that reader."""
        host, port = self.server_address[:2]
        return {name: f"http://{host}:{port}/r/{token}/" for token, name in self.readers.items()}


class Handler(BaseHTTPRequestHandler):
    server: StudyServer
    server_version = "medddpm-study"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the CLI prints the links
        pass

    def _reply(self, status: HTTPStatus, body: bytes = b"", content_type: str = "text/plain; charset=utf-8"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if status >= 400:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _route(self) -> tuple[str, list[str]] | None:
        """(reader, path segments inside the reader's folder), or None after refusing the request."""
        parts = unquote(urlsplit(self.path).path).split("/")
        if len(parts) < 3 or parts[0] != "" or parts[1] != "r":
            self._reply(HTTPStatus.NOT_FOUND, b"not found\n")
            return None
        reader = self.server.readers.get(parts[2])
        if reader is None:
            self._reply(HTTPStatus.FORBIDDEN, b"unknown token\n")
            return None
        rest = [p for p in parts[3:] if p != ""]
        if any(p.startswith(".") or "\\" in p or "\0" in p for p in rest):
            self._reply(HTTPStatus.NOT_FOUND, b"not found\n")
            return None
        return reader, rest

    def do_GET(self) -> None:
        route = self._route()
        if route is None:
            return
        reader, rest = route
        root = (self.server.study_dir / "readers" / reader).resolve()
        path = (root / Path(*rest)) if rest else root / "index.html"
        path = path.resolve()
        if root not in path.parents or not path.is_file() or path.suffix not in CONTENT_TYPES:
            self._reply(HTTPStatus.NOT_FOUND, b"not found\n")
            return
        self._reply(HTTPStatus.OK, path.read_bytes(), CONTENT_TYPES[path.suffix])

    do_HEAD = do_GET

    def do_POST(self) -> None:
        route = self._route()
        if route is None:
            return
        reader, rest = route
        if rest != ["answers"]:
            self._reply(HTTPStatus.NOT_FOUND, b"not found\n")
            return
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit() or int(length) > MAX_BODY:
            self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"at most {MAX_BODY} bytes\n".encode())
            return
        try:
            answer = json.loads(self.rfile.read(int(length)))
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or answer.get("case") not in self.server.key["cases"]:
            self._reply(HTTPStatus.BAD_REQUEST, b"not an answer for a case of this study\n")
            return
        record = {"received": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "answer": answer}
        with self.server.lock:
            append_line(log_path(self.server.study_dir, reader), record)
        self._reply(HTTPStatus.OK, b'{"saved":true}', "application/json")


def make_server(study_dir: str | Path, host: str = "127.0.0.1", port: int = 0) -> StudyServer:
    """A server for ``study_dir`` bound to (host, port) (port 0: a free one), not yet serving."""
    try:
        return StudyServer(Path(study_dir), (host, port))
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
