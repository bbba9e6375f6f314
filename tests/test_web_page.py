"""The chat page: cookie identity, static assets, security headers, and the API through the cookie."""

from __future__ import annotations


def test_first_visit_gets_a_signed_httponly_cookie_and_a_safe_page(client):
    response = client.get("/")
    assert response.status_code == 200 and response.mimetype == "text/html"
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("arzani_session=")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    html = response.get_data(as_text=True)
    assert "/static/app.js" in html and "/static/style.css" in html
    assert "<script>" not in html  # no inline script: the CSP forbids it
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_static_assets_are_served_and_define_the_synchronizer(client):
    js = client.get("/static/app.js")
    assert js.status_code == 200
    source = js.get_data(as_text=True)
    assert "window.arzaniSessionSynchronizer" in source
    assert "Session synchronization" in source
    assert "innerHTML" not in source  # message text is rendered with textContent only
    assert client.get("/static/style.css").status_code == 200


def test_the_cookie_is_an_identity_for_the_api(client, run_jobs):
    client.get("/")
    session_id = client.post("/api/sessions").json["session_id"]
    assert client.get(f"/api/sessions/{session_id}").json["conversation_id"] is None
    posted = client.post(f"/api/sessions/{session_id}/messages",
                         json={"content": "from the page", "client_message_id": "ui-1"})
    assert posted.status_code == 202
    run_jobs()
    listing = client.get("/api/conversations").json["conversations"]
    assert [c["session_id"] for c in listing] == [session_id]
    assert listing[0]["last_message"]["role"] == "assistant"


def test_a_visit_again_keeps_the_identity_and_no_cookie_is_401(client, app):
    client.get("/")
    client.post(f"/api/sessions/{'k' * 20}/messages", json={"content": "still me"})
    client.get("/")  # a reload
    assert len(client.get("/api/conversations").json["conversations"]) == 1
    stranger = app.test_client()
    response = stranger.get("/api/conversations")
    assert response.status_code == 401 and response.json["error"]["code"] == "unauthorized"


def test_two_browsers_are_two_users(app):
    first, second = app.test_client(), app.test_client()
    first.get("/")
    second.get("/")
    posted = first.post(f"/api/sessions/{'a' * 16}/messages", json={"content": "mine"}).json
    assert second.get(f"/api/conversations/{posted['conversation_id']}").status_code == 404
    assert second.post(f"/api/sessions/{'a' * 16}/messages", json={"content": "x"}).status_code == 404
    assert second.get("/api/conversations").json["conversations"] == []
