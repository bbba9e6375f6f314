"""Liveness and readiness probes."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    services = current_app.extensions["arzani"]
    checks = {}
    for name, ping in (("redis", lambda: services.redis.ping()), ("database", services.db.ping)):
        try:
            ping()
            checks[name] = "ok"
        except Exception as exc:  # any failure means not ready; the reason goes to the caller
            checks[name] = f"unavailable: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return jsonify({"status": "ready" if ready else "unavailable", "checks": checks}), 200 if ready else 503
