"""The baseline of `arzani bench`'s ingest figure, served by gunicorn as
`scripts.bench_app:create_bench_app()`: the service's own app plus one endpoint that does the same
validation, insert and enqueue as POST /api/sessions/SID/messages, without session resolution
(no Redis session key, no lock). It lives here, not in app/: no deployment ever serves it."""

from __future__ import annotations

from flask import Blueprint, Flask, jsonify

from app import create_app, jobqueue
from app.api import message_body
from app.auth import authenticate
from app.conversations import message_json, store_user_message
from app.wiring import get_wiring

bp = Blueprint("bench_baseline", __name__, url_prefix="/bench")


@bp.post("/baseline/<session_id>/<conversation_id>")
def baseline(session_id: str, conversation_id: str):
    wiring = get_wiring()
    user_id = authenticate(wiring)
    content, client_message_id, _if_busy = message_body()
    message = store_user_message(wiring, conversation_id, session_id, user_id, content, client_message_id)
    job_id = jobqueue.enqueue_reply_or_leave_to_sweeper(wiring.queue, wiring.settings, message)
    return jsonify({"message": message_json(message), "job_id": job_id}), 202


def create_bench_app() -> Flask:
    app = create_app()
    app.register_blueprint(bp)
    return app
