"""The chat page. Its first visit gives the browser a signed-cookie identity."""

from __future__ import annotations

from flask import Blueprint, render_template
from flask import session as cookie

from app.auth import COOKIE_USER_KEY, create_web_user
from app.wiring import get_wiring

bp = Blueprint("web", __name__)


@bp.get("/")
def index():
    if not isinstance(cookie.get(COOKIE_USER_KEY), int):
        user = create_web_user(get_wiring())
        cookie[COOKIE_USER_KEY] = user.id
        cookie.permanent = True
    return render_template("index.html")


@bp.after_app_request
def security_headers(response):
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if response.mimetype == "text/html":
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'",
        )
    return response
