"""The baseline of `arzani bench`'s ingest figure: the same insert and enqueue as
POST /api/sessions/SID/messages, without session resolution (no Redis session key, no lock).
Registered only when ARZANI_BENCH_BASELINE=1; never in a deployment."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from app.auth import authenticate
from app.conversations import _enqueue_or_leave_to_sweeper, _insert_user_message, message_json

bp = Blueprint("bench_baseline", __name__, url_prefix="/bench")


@bp.post("/baseline/<session_id>/<conversation_id>")
def baseline(session_id: str, conversation_id: str):
    services = current_app.extensions["arzani"]
    user_id = authenticate(services)
    message = _insert_user_message(services, conversation_id, session_id, user_id,
                                   request.get_json()["content"], None)
    job_id = _enqueue_or_leave_to_sweeper(services, message.id)
    return jsonify({"message": message_json(message), "job_id": job_id}), 202
