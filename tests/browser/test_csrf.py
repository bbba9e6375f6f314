"""CSRF in a real browser: a page of another origin on the same host (same site, so the Lax
cookie goes along) posts to the API with the victim's cookie, and is refused."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis

pytestmark = pytest.mark.slow


def _serve(html: str) -> ThreadingHTTPServer:
    class Page(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            body = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _session_keys(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return sum(1 for key in client.scan_iter(match="arzani:session:*") if not key.endswith((b":lock", b":fence")))
    finally:
        client.close()


def test_a_same_site_page_of_another_origin_cannot_post_with_the_cookie(live, open_chat):
    victim = open_chat(live)  # the victim has the page open: the browser holds its cookie
    attack = (f"<script>fetch('{live.url}/api/sessions', {{method: 'POST', credentials: 'include', "
              f"mode: 'no-cors'}}).finally(() => {{ document.title = 'sent'; }});</script>")
    evil = _serve(attack)
    try:
        before = _session_keys(live.env["REDIS_URL"])
        page = victim.page.context.new_page()
        page.goto(f"http://127.0.0.1:{evil.server_address[1]}/")
        page.wait_for_function("document.title === 'sent'")
        assert _session_keys(live.env["REDIS_URL"]) == before  # nothing was reserved for the victim
        # The same request from the page's own origin goes through: the origin is what refused it.
        status = victim.page.evaluate("fetch('/api/sessions', {method: 'POST'}).then((r) => r.status)")
        assert status == 201 and _session_keys(live.env["REDIS_URL"]) == before + 1
    finally:
        evil.shutdown()
        evil.server_close()
