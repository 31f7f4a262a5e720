"""``medddpm study serve`` over loopback, as a subprocess: answers survive kill -9; bad requests refused."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from medddpm.study.responses import collect


def start(study: Path) -> tuple[subprocess.Popen, int, dict[str, str]]:
    """The real CLI on a free port; its links (stdout) and port (the 'listening on' line, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "medddpm", "study", "serve", str(study), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    links = {}
    while True:
        line = proc.stderr.readline()
        if not line:
            raise AssertionError(f"server did not start: {proc.stdout.read()}")
        if line.startswith("listening on"):
            port = int(line.strip().rstrip("/").rsplit(":", 1)[1])
            break
    for _ in range(3):
        name, link = proc.stdout.readline().strip().split(": ", 1)
        links[name] = link
    return proc, port, links


def request(port: int, method: str, path: str, body: bytes | None = None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def oversized(port: int, path: str, size: int) -> int:
    """POST a body of ``size`` bytes: the server answers from the headers, without reading the body
    (sending all of it would then fail on the closed connection)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("POST", path)
        conn.putheader("Content-Length", str(size))
        conn.endheaders()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.send(b"x" * 65536)
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.fixture
def study(binary_study: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(binary_study, tmp_path / "study"))


def test_answers_survive_kill_9_and_bad_requests_are_refused(study: Path):
    key = json.loads((study / "key.json").read_text())
    token = key["readers"]["reader-02"]["token"]
    cases = list(key["cases"])
    proc, port, links = start(study)
    try:
        assert links["reader-02"].endswith(f"/r/{token}/")
        status, page = request(port, "GET", f"/r/{token}/")
        assert status == 200 and b"page-data" in page
        first = json.loads(page.split(b'id="page-data">')[1].split(b"</script>")[0])["cases"][0]["volumes"][0]
        assert request(port, "GET", f"/r/{token}/img/{first}-axial.png")[0] == 200
        for case in cases[:4]:
            body = json.dumps({"case": case, "answer": "real", "confidence": "3", "time": case}).encode()
            status, _ = request(
                port, "POST", f"/r/{token}/answers", body, {"Content-Type": "application/json"}
            )
            assert status == 200
        # refused: unknown token, the key by traversal (raw and encoded), another reader's folder, 10 MB
        assert request(port, "GET", "/r/not-a-token/")[0] == 403
        assert request(port, "POST", "/r/not-a-token/answers", b"{}")[0] == 403
        for path in ("../key.json", "..%2Fkey.json", "%2e%2e/%2e%2e/key.json", "../../key.json"):
            status, body = request(port, "GET", f"/r/{token}/{path}")
            assert status == 404 and b"token" not in body, path
        assert request(port, "GET", "/key.json")[0] == 404
        other = key["readers"]["reader-01"]["token"]
        assert request(port, "GET", f"/r/{token}/../{other}/index.html")[0] == 404
        assert oversized(port, f"/r/{token}/answers", 10 * 2**20) == 413
        assert request(port, "POST", f"/r/{token}/answers", b'{"case": "nope"}')[0] == 400
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()
    saved = collect(study, [], key)
    assert sorted(saved["reader-02"]) == sorted(cases[:4])
    # a second server appends to the same log after the crash
    proc, port, _ = start(study)
    try:
        body = json.dumps({"case": cases[0], "answer": "synthetic", "confidence": "5", "time": "z"}).encode()
        assert request(port, "POST", f"/r/{token}/answers", body)[0] == 200
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()
    lines = (study / "responses" / "reader-02.jsonl").read_text().splitlines()
    assert len(lines) == 5
    assert collect(study, [], key)["reader-02"][cases[0]]["answer"] == "synthetic"


def test_a_torn_last_line_is_skipped(study: Path):
    key = json.loads((study / "key.json").read_text())
    case = next(iter(key["cases"]))
    (study / "responses").mkdir()
    good = json.dumps({"received": "r", "answer": {"case": case, "answer": "real"}})
    (study / "responses" / "reader-01.jsonl").write_text(good + "\n" + good[:20])
    assert list(collect(study, [], key)["reader-01"]) == [case]
