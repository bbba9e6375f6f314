"""Liveness and readiness probes."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from app import metrics
from app.wiring import get_wiring

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@bp.get("/metrics")
def metrics_endpoint():
    """Prometheus exposition, summed over every process of this host (see app/metrics.py)."""
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)


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
