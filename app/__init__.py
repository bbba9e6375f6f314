"""Arzani-X conversation service: the Flask application factory."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask, jsonify, request
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, OperationalError
from werkzeug.exceptions import HTTPException

from app import wiring
from app.config import Settings
from app.errors import ArzaniError, Unavailable
from app.logs import configure_logging
from app.wiring import Wiring

log = logging.getLogger("arzani.web")

MAX_REQUEST_BYTES = 256 * 1024
"""Any request body over this is refused (413) before it is read."""


def cookie_name(settings: Settings) -> str:
    """The chat page's cookie. Unique per instance (a digest of its signing key), so two stacks on
    one host, whose cookies browsers do not tell apart by port, never overwrite each other's. In
    production `__Host-`: the browser accepts it only Secure, with Path=/ and no Domain, so a
    sibling host cannot plant one ("cookie tossing")."""
    digest = hashlib.sha256(settings.secret_key.encode()).hexdigest()[:8]
    return f"{'__Host-' if settings.production else ''}arzani_session_{digest}"


def create_app(test_config: Mapping[str, Any] | None = None, *, services: Wiring | None = None) -> Flask:
    """Build the web app. `services` lets tests hand in their own wiring; otherwise the
    environment decides (CONTRACT.md, Configuration)."""
    if services is None:
        services = Wiring(Settings.from_env(), process_kind="web")
    settings = services.settings
    configure_logging(settings.log_level)
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_mapping(
        SECRET_KEY=settings.secret_key,
        MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.production,
        SESSION_COOKIE_NAME=cookie_name(settings),
        PERMANENT_SESSION_LIFETIME=settings.session_ttl_s,
        JSON_SORT_KEYS=False,
    )
    if test_config:
        app.config.from_mapping(test_config)
    if settings.trusted_proxies:
        from werkzeug.middleware.proxy_fix import ProxyFix

        # The client address (rate limits, logs) from X-Forwarded-For, as far as the proxies we
        # run wrote it; never from a header a client alone could have written.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies)
    wiring.init_app(app, services)

    from app import api, health, openapi, web

    app.register_blueprint(api.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(web.bp)
    _register_error_handlers(app)
    return app


def error_response(code: str, message: str, status: int):
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    return response


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ArzaniError)
    def _domain_error(exc: ArzaniError):
        if exc.status >= 500:
            log.warning("request failed: %s", exc.message, extra={"path": request.path})
        response = error_response(exc.code, exc.message, exc.status)
        if getattr(exc, "retry_after_s", None) is not None:  # rate limited; a session still answering
            response.headers["Retry-After"] = str(exc.retry_after_s)
        return response

    @app.errorhandler(RedisConnectionError)
    @app.errorhandler(RedisTimeoutError)
    def _redis_down(exc: Exception):
        log.error("Redis unavailable: %s", exc, extra={"path": request.path})
        return error_response(Unavailable.code, "Redis is unavailable; try again", 503)

    @app.errorhandler(OperationalError)
    def _database_down(exc: OperationalError):
        log.error("database unavailable: %s", exc.orig, extra={"path": request.path})
        return error_response(Unavailable.code, "the database is unavailable; try again", 503)

    @app.errorhandler(DBAPIError)
    def _database_error(exc: DBAPIError):
        if exc.connection_invalidated:
            return _database_down(exc)
        raise exc

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        if not request.path.startswith("/api/") and request.path not in ("/healthz", "/readyz"):
            return exc
        code = (exc.name or "error").lower().replace(" ", "_")
        response = error_response(code, exc.description or exc.name, exc.code or 500)
        if exc.code == 405 and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error", extra={"path": request.path})
        if request.path.startswith("/api/"):
            return error_response("internal_error", "internal error; it has been logged", 500)
        return "Internal Server Error", 500
