"""The chat page. Its first visit gives the browser a signed-cookie identity: a random one, with no
database row until the browser first writes (app/auth.py), so a visit costs no storage."""

from __future__ import annotations

from flask import Blueprint, render_template, request
from flask import session as cookie

from app.auth import COOKIE_USER_KEY, new_web_identity
from app.ratelimit import hit_client_limit
from app.wiring import get_wiring

bp = Blueprint("web", __name__)

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'", "img-src 'self' data:", "style-src 'self'", "script-src 'self'",
    "object-src 'none'", "base-uri 'none'", "form-action 'self'", "frame-ancestors 'none'",
])
"""Same-origin everything; no plugins, no <base> rewriting, no form posting elsewhere, no framing."""


@bp.get("/")
def index():
    hit_client_limit(get_wiring())
    if not isinstance(cookie.get(COOKIE_USER_KEY), int | str):  # an int: a row's id, from before
        cookie[COOKIE_USER_KEY] = new_web_identity()
        cookie.permanent = True
    return render_template("index.html")


@bp.after_app_request
def security_headers(response):
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if get_wiring().settings.production:
        # Browsers that once saw it over https never downgrade this host to http (for a year).
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    if request.path.startswith("/api/"):
        # Answers are one user's conversations: no shared or browser cache keeps them.
        response.headers.setdefault("Cache-Control", "no-store")
    if response.mimetype == "text/html":
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    return response
