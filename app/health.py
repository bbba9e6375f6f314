"""Liveness and readiness probes."""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, jsonify, request

from app import metrics
from app.wiring import get_wiring

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@bp.get("/metrics")
def metrics_endpoint():
    """Prometheus exposition, summed over every process of this host (see app/metrics.py).

    With ARZANI_METRICS_TOKEN set, only `Authorization: Bearer <that token>` sees it; production
    without a token serves no metrics at all (the Procfile binds every interface)."""
    settings = get_wiring().settings
    token = settings.metrics_token
    if token is None and settings.production:
        return _plain(404, "not found")
    if token is not None:
        given = request.headers.get("Authorization", "").partition(" ")[2].strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            return _plain(401, "metrics need Authorization: Bearer $ARZANI_METRICS_TOKEN")
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)


def _plain(status: int, text: str) -> Response:
    return Response(text + "\n", status=status, content_type="text/plain; charset=utf-8")


@bp.get("/readyz")
def readyz():
    services = get_wiring()
    checks = {}
    for name, ping in (("redis", lambda: services.redis.ping()), ("database", services.db.ping)):
        try:
            ping()
            checks[name] = "ok"
        except Exception as exc:  # any failure means not ready; the reason goes to the caller
            checks[name] = f"unavailable: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return jsonify({"status": "ready" if ready else "unavailable", "checks": checks}), 200 if ready else 503
