"""The web server's edge: gunicorn's gevent worker, answering gunicorn's own errors in our JSON.

Some requests never reach Flask: gunicorn's HTTP parser refuses a request line over
`limit_request_line` (414), headers over `limit_request_field_size` or `limit_request_fields`
(431), a malformed request line or header (400), and writes its own HTML page for them
(`Worker.handle_error` -> `gunicorn.util.write_error`). The API promises
`{"error": {"code", "message"}}` and never an HTML page under /api/ (CONTRACT.md, HTTP API).

gunicorn has no server hook for these answers, so the Procfile's `web` (and tests/stack.py, and
`make run`, which runs the Procfile) names this worker class:
`--worker-class scripts.gunicorn_worker.GeventWorker`. It keeps gunicorn's `handle_error` whole
(its status mapping, its warning and access-log lines) and only changes what is written: the
client socket is handed in behind `_JSONErrorSocket`, which turns gunicorn's HTML answer into our
JSON with the same status line. Every answer gunicorn writes is JSON, whatever the path: a request
line too long to read has no path we could look at (gunicorn refuses it before splitting it), and
the chat page's own requests never hit these limits.

Not in `app/`: gunicorn's arbiter imports the worker class before it forks, and importing anything
of `app` there would import redis-py, ssl and the rest before gevent's monkey-patching (done in
each worker, later): gevent warns, and modules that took names from ssl directly stay unpatched.
This module imports gunicorn's gevent worker only.
"""

from __future__ import annotations

import html
import json
import re

from gunicorn.workers.ggevent import GeventWorker as _GunicornGeventWorker

_BODY_TEXT = re.compile(rb"</h1>\s*(.*?)\s*</body>", re.S)


def json_error_answer(http_answer: bytes) -> bytes:
    """gunicorn's HTML error answer (status line, headers, page) as the same status with our JSON
    body. Anything that does not look like one is passed on unchanged."""
    head, sep, body = http_answer.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    if not sep or len(parts) < 2 or not parts[1].isdigit():
        return http_answer
    status, reason = parts[1], parts[2] if len(parts) > 2 else "Error"
    found = _BODY_TEXT.search(body)
    message = html.unescape(found.group(1).decode("latin-1")) if found and found.group(1) else reason
    code = reason.lower().replace(" ", "_")  # like app/__init__.py's werkzeug errors: uri_too_long
    payload = json.dumps({"error": {"code": code, "message": message}}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Cache-Control: no-store\r\nContent-Length: {len(payload)}\r\n\r\n").encode("latin-1") + payload


class _JSONErrorSocket:
    """The client socket, as far as `gunicorn.util.write_error` uses it (timeout, blocking mode,
    sendall), with its one answer rewritten by `json_error_answer`."""

    def __init__(self, sock):
        self._sock = sock

    def gettimeout(self):
        return self._sock.gettimeout()

    def setblocking(self, flag) -> None:
        self._sock.setblocking(flag)

    def sendall(self, data: bytes) -> None:
        self._sock.sendall(json_error_answer(data))

    def __getattr__(self, name):
        return getattr(self._sock, name)


class GeventWorker(_GunicornGeventWorker):
    """gunicorn's gevent worker whose own error answers (400, 414, 431, 500...) are our JSON."""

    def handle_error(self, req, client, addr, exc) -> None:
        super().handle_error(req, _JSONErrorSocket(client), addr, exc)
