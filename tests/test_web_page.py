"""The chat page: cookie identity, static assets, security headers, and the API through the cookie.

The page's behaviour in a real browser (sending, replies arriving, double clicks, reloads, a phone)
is tested in tests/browser/; these tests check what the page is built on, without a browser."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "app" / "static"
MODULES = sorted(STATIC.glob("js/*.js"))  # the page's ES modules; js/main.js is the entry
IMPORT = re.compile(r'^import [^;]*? from "(\./[a-z]+\.js)";$', re.M)


class _Elements(HTMLParser):
    """Every start tag of a document as (tag, attributes), and the text inside <script>/<style>."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline: list[str] = []
        self._inside: str | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag in ("script", "style"):
            self._inside = tag

    def handle_endtag(self, tag):
        if tag == self._inside:
            self._inside = None

    def handle_data(self, data):
        if self._inside and data.strip():
            self.inline.append(data)

    def ids(self) -> set[str]:
        return {attrs["id"] for _, attrs in self.tags if attrs.get("id")}


def _parse(html: str) -> _Elements:
    parser = _Elements()
    parser.feed(html)
    return parser


def _page_cookie(response) -> str:
    cookies = [c for c in response.headers.getlist("Set-Cookie") if c.startswith("arzani_session_")]
    assert len(cookies) == 1, response.headers.getlist("Set-Cookie")
    return cookies[0]


# -- the page itself ----------------------------------------------------------------------------


def test_first_visit_gets_a_signed_httponly_cookie_and_a_safe_page(client):
    response = client.get("/")
    assert response.status_code == 200 and response.mimetype == "text/html"
    cookie = _page_cookie(response)
    attributes = [part.strip().lower() for part in cookie.split(";")]
    assert "httponly" in attributes and "samesite=lax" in attributes
    value = cookie.split(";")[0].split("=", 1)[1]
    assert value and "." in value  # itsdangerous-signed, not a bare user id
    assert response.headers["Content-Security-Policy"] == (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    html = response.get_data(as_text=True)
    assert "/static/js/main.js" in html and "/static/style.css" in html


def test_the_page_obeys_its_own_csp_and_has_the_testable_structure(client):
    page = _parse(client.get("/").get_data(as_text=True))
    # No inline script or style, no style attributes, no inline event handlers: the CSP forbids them.
    assert page.inline == []
    for tag, attrs in page.tags:
        assert "style" not in attrs, tag
        assert not [name for name in attrs if name.startswith("on")], (tag, attrs)
        if tag == "script":
            assert attrs.get("src", "").startswith("/static/"), attrs
            assert attrs.get("type") == "module", attrs  # deferred, strict, same-origin imports only
        if tag == "link" and attrs.get("rel") == "stylesheet":
            assert attrs["href"].startswith("/static/"), attrs
    # Nothing leaves the origin: every URL is same-origin (or the empty data: icon).
    for _, attrs in page.tags:
        for name in ("src", "href", "action"):
            url = attrs.get(name)
            if url:
                assert url.startswith("/") or url == "data:,", url
    assert {"sidebar", "conversation-list", "new-chat", "messages", "composer", "content", "send",
            "chat-title", "chat-error", "toggle-sidebar"} <= page.ids()
    textarea = [attrs for tag, attrs in page.tags if tag == "textarea"]
    assert len(textarea) == 1 and textarea[0]["id"] == "content"
    assert any(tag == "meta" and attrs.get("name") == "viewport" for tag, attrs in page.tags)


def _served_modules(client) -> dict[str, str]:
    """Every module the page loads, by following imports from the <script type="module">."""
    page = _parse(client.get("/").get_data(as_text=True))
    (entry,) = [attrs["src"] for tag, attrs in page.tags if tag == "script"]
    assert entry == "/static/js/main.js"
    sources, todo = {}, [entry]
    while todo:
        url = todo.pop()
        if url in sources:
            continue
        response = client.get(url)
        # A module script needs a JavaScript MIME type (and nosniff is on): anything else is refused.
        assert response.status_code == 200, url
        assert response.mimetype in ("text/javascript", "application/javascript"), (url, response.mimetype)
        sources[url] = response.get_data(as_text=True)
        todo += [url.rsplit("/", 1)[0] + "/" + name[2:] for name in IMPORT.findall(sources[url])]
    return sources


def test_static_assets_are_served_and_define_the_synchronizer(client):
    modules = _served_modules(client)
    # Every module in static/js is reachable from main.js, and none is over about 200 lines.
    assert sorted(modules) == [f"/static/js/{path.name}" for path in MODULES]
    for url, text in modules.items():
        assert text.count("\n") <= 200, url
    source = "\n".join(modules.values())
    assert "window.arzaniSessionSynchronizer" in source
    assert 'console.info("Session synchronization: start"' in source
    assert 'console.info("Session synchronization: new chat"' in source
    assert 'console.info("Session synchronization: send"' in source
    assert 'console.warn("Session synchronization mismatch' in source
    assert '"arzani.session_id"' in source  # kept across reloads in localStorage
    assert "crypto.randomUUID" in source and "client_message_id" in source
    assert "getStatus" in source and "pending_sends" in source
    # Message text is user data: rendered with textContent only, never parsed as HTML.
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in source, sink
    # Elements are made in one place, dom.js's el(), which sets text through textContent only.
    assert [url for url, text in modules.items() if "createElement" in text] == ["/static/js/dom.js"]
    # Nothing but same-origin calls and relative imports (the CSP would block the rest anyway).
    assert not re.search(r"https?://", source)
    assert len(re.findall(r"^import ", source, re.M)) == len(IMPORT.findall(source))
    css = client.get("/static/style.css")
    assert css.status_code == 200 and css.mimetype == "text/css"
    assert "@media" in css.get_data(as_text=True)  # the sidebar collapses on a phone
    assert client.get("/static/missing.js").status_code == 404
    assert client.get("/static/app.js").status_code == 404  # the old one-file page is gone


def test_the_installed_package_ships_the_modules():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    patterns = config["options.package_data"]["app"].split()
    assert MODULES
    for path in MODULES + [STATIC / "style.css", ROOT / "app" / "templates" / "index.html"]:
        relative = PurePosixPath(path.relative_to(ROOT / "app").as_posix())
        assert any(relative.match(pattern) for pattern in patterns), relative


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
@pytest.mark.parametrize("module", MODULES, ids=lambda path: path.name)
def test_modules_are_valid_javascript(module):
    result = subprocess.run(["node", "--input-type=module", "--check"], input=module.read_text(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# -- the cookie is the page's identity for the API -----------------------------------------------


def test_the_cookie_is_an_identity_for_the_api(client, run_jobs):
    client.get("/")  # the test client keeps the cookie, like a browser
    created = client.post("/api/sessions")
    assert created.status_code == 201
    session_id = created.json["session_id"]
    status = client.get(f"/api/sessions/{session_id}")
    assert status.status_code == 200 and status.json["conversation_id"] is None

    # What the page sends, and what a double click sends again: the same client_message_id.
    body = {"content": "from the page", "client_message_id": "0b0d2a6e-6a55-4bb8-9a0c-6f5f1c1a9c01"}
    posted = client.post(f"/api/sessions/{session_id}/messages", json=body)
    assert posted.status_code == 202
    again = client.post(f"/api/sessions/{session_id}/messages", json=body)
    assert again.status_code == 200
    assert again.json["message"]["id"] == posted.json["message"]["id"]
    assert again.json["conversation_id"] == posted.json["conversation_id"]
    assert posted.json["message"]["status"] == "pending"  # the page polls while it is

    run_jobs()

    listing = client.get("/api/conversations?limit=50")
    assert listing.status_code == 200
    conversations = listing.json["conversations"]
    assert len(conversations) == 1
    (conversation,) = conversations
    assert conversation["session_id"] == session_id
    assert conversation["id"] == posted.json["conversation_id"]
    assert conversation["title"] == "from the page"
    assert conversation["message_count"] == 2
    assert conversation["last_message"]["role"] == "assistant"
    assert listing.json["next_cursor"] is None

    messages = client.get(f"/api/conversations/{conversation['id']}").json["messages"]
    assert [(m["role"], m["status"]) for m in messages] == [("user", "answered"), ("assistant", "complete")]
    assert messages[1]["reply_to"] == messages[0]["id"]
    # What the page's getStatus() compares: the server agrees with the page's conversation.
    status = client.get(f"/api/sessions/{session_id}").json
    assert status["conversation_id"] == conversation["id"] and status["consistent"] is True
    assert status["pending_replies"] == 0


def test_a_visit_again_keeps_the_identity_and_no_cookie_is_401(client, app):
    client.get("/")
    client.post(f"/api/sessions/{'k' * 20}/messages", json={"content": "still me"})
    assert client.get("/").status_code == 200  # a reload: the same user, not a new one
    assert len(client.get("/api/conversations").json["conversations"]) == 1

    stranger = app.test_client()  # no cookie, no token
    for method, path in (("get", "/api/conversations"), ("post", "/api/sessions"),
                         ("get", f"/api/sessions/{'k' * 20}")):
        response = getattr(stranger, method)(path)
        assert response.status_code == 401, (method, path)
        assert response.mimetype == "application/json"
        assert response.json["error"]["code"] == "unauthorized"


def test_a_forged_cookie_is_no_identity(app):
    browser = app.test_client()
    browser.set_cookie(app.config["SESSION_COOKIE_NAME"], "eyJ1aWQiOjF9.forged.signature")
    response = browser.get("/api/conversations")
    assert response.status_code == 401 and response.json["error"]["code"] == "unauthorized"


def test_two_browsers_are_two_users(app):
    first, second = app.test_client(), app.test_client()
    first_cookie = _page_cookie(first.get("/")).split(";")[0]
    second_cookie = _page_cookie(second.get("/")).split(";")[0]
    assert first_cookie != second_cookie

    session_id = first.post("/api/sessions").json["session_id"]
    posted = first.post(f"/api/sessions/{session_id}/messages", json={"content": "mine"}).json
    conversation_id = posted["conversation_id"]

    # The other browser: exactly as if none of it existed.
    assert second.get(f"/api/conversations/{conversation_id}").status_code == 404
    assert second.get(f"/api/sessions/{session_id}").status_code == 404
    assert second.patch(f"/api/conversations/{conversation_id}", json={"title": "x"}).status_code == 404
    assert second.delete(f"/api/conversations/{conversation_id}").status_code == 404
    assert second.post(f"/api/sessions/{session_id}/messages", json={"content": "x"}).status_code == 404
    assert second.get("/api/conversations").json["conversations"] == []

    # Its own chats stay its own.
    other_session = second.post("/api/sessions").json["session_id"]
    other = second.post(f"/api/sessions/{other_session}/messages", json={"content": "theirs"}).json
    assert first.get(f"/api/conversations/{other['conversation_id']}").status_code == 404
    assert [c["id"] for c in first.get("/api/conversations").json["conversations"]] == [conversation_id]
    assert first.get(f"/api/conversations/{conversation_id}").json["messages"][0]["content"] == "mine"


def test_the_sidebar_pages_through_every_conversation_once(client):
    """The page asks with limit=50 and follows next_cursor; here a small limit shows the paging."""
    client.get("/")
    ids = []
    for n in range(5):
        session_id = client.post("/api/sessions").json["session_id"]
        ids.append(client.post(f"/api/sessions/{session_id}/messages",
                               json={"content": f"chat {n}"}).json["conversation_id"])
    seen, cursor, pages = [], None, 0
    while True:
        response = client.get("/api/conversations", query_string={"limit": 2, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200
        seen += [c["id"] for c in response.json["conversations"]]
        pages += 1
        cursor = response.json["next_cursor"]
        if not cursor:
            break
    assert pages == 3
    assert seen == list(reversed(ids))  # newest activity first, each conversation once


def test_an_api_error_is_json_the_page_can_show(client):
    """The page shows error.message inline: every refusal must carry it."""
    client.get("/")
    session_id = client.post("/api/sessions").json["session_id"]
    cases = [
        client.post(f"/api/sessions/{session_id}/messages", json={"content": "   "}),  # 422
        client.post(f"/api/sessions/{session_id}/messages", json={"content": "x" * (32 * 1024 + 1)}),  # 413
        client.post("/api/sessions/bad!/messages", json={"content": "hi"}),  # 400
        client.get("/api/conversations/does-not-exist"),  # 404
    ]
    assert [r.status_code for r in cases] == [422, 413, 400, 404]
    for response in cases:
        assert response.mimetype == "application/json"
        error = response.json["error"]
        assert error["code"] and error["message"]
