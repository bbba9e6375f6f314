"""gunicorn's own answers (issue 13, item 9): a request gunicorn's parser refuses before Flask
sees it (request line or headers too large, a malformed header) answers our JSON error shape,
never gunicorn's HTML page, under the Procfile's worker class (scripts/gunicorn_worker.py)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from scripts.gunicorn_worker import json_error_answer

ROOT = Path(__file__).resolve().parent.parent


def _raw(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    from tests.servers import RedisServer
    from tests.stack import Stack

    redis_server = RedisServer().start()
    stack = Stack(redis_server.url, f"sqlite:///{tmp_path_factory.mktemp('db') / 'a.db'}",
                  tmp_path_factory.mktemp("logs"))
    try:
        stack.init_db()
        stack.start_web(workers=1)
        yield stack
    finally:
        stack.close()
        redis_server.close()


@pytest.mark.slow
@pytest.mark.parametrize(("request_bytes", "status", "code"), [
    # gunicorn's limit_request_line is 4094 bytes; a little over it, all read at once (unread bytes left
    # behind when gunicorn closes would make the kernel answer with a reset instead)
    (b"GET /api/conversations?x=" + b"a" * 4200 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
    # limit_request_field_size is 8190 bytes
    (b"GET /api/conversations HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n",
     431, "request_header_fields_too_large"),
    # limit_request_fields is 100 headers
    (b"GET /api/conversations HTTP/1.1\r\nHost: x\r\n"
     + b"".join(b"X-H%d: v\r\n" % n for n in range(150)) + b"\r\n", 431, "request_header_fields_too_large"),
    (b"GET /api/conversations HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n", 400, "bad_request"),
])
def test_gunicorn_refusals_under_api_are_json(web, request_bytes, status, code):
    got_status, headers, body = _raw(web.port, request_bytes)
    assert got_status == status
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    error = json.loads(body)["error"]
    assert error["code"] == code
    assert error["message"]
    assert "<" not in error["message"]
    # the server still serves after it
    assert web.request("GET", "/healthz")[0] == 200
    # the worker class imports nothing of the app before gevent patches (gevent warns if it does)
    assert "MonkeyPatchWarning" not in web.log("web")


def test_json_error_answer_keeps_status_and_escaped_message():
    page = (b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: text/html\r\n"
            b"Content-Length: 9\r\n\r\n<html><body><h1><p>Bad Request</p></h1>\n"
            b"  Invalid header name &#x27;A B&#x27;\n</body></html>")
    head, _, body = json_error_answer(page).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert json.loads(body) == {"error": {"code": "bad_request", "message": "Invalid header name 'A B'"}}
    assert json_error_answer(b"not http") == b"not http"


def test_procfile_and_test_stack_run_this_worker_class():
    from honcho.environ import parse_procfile

    web = parse_procfile((ROOT / "Procfile").read_text()).processes["web"]
    assert "--worker-class scripts.gunicorn_worker.GeventWorker " in web
    assert '"--worker-class", "scripts.gunicorn_worker.GeventWorker"' in (ROOT / "tests" / "stack.py").read_text()
