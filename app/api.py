"""The JSON API under /api (CONTRACT.md, HTTP API). Parses, calls the domain, translates."""

from __future__ import annotations

import json
import secrets

from flask import Blueprint, Response, g, jsonify, request
from werkzeug.routing import BaseConverter

from app import conversations, events, keys, runs, streamslots
from app.auth import ANONYMOUS_USER_ID, authenticate
from app.defaults import IF_BUSY_POLICIES
from app.errors import BadRequest, ContentTooLarge, InvalidBody, InvalidSessionId
from app.ratelimit import hit_client_limit
from app.wiring import get_wiring

bp = Blueprint("api", __name__, url_prefix="/api")

MAX_CONTENT_BYTES = 32 * 1024
"""A message's content is limited to 32 KiB of UTF-8 (413 beyond)."""

NO_LOG_YET_RETRY_MS = 3000
"""How soon the page of a browser identity that has not written yet asks for its event stream again."""

MAX_CLIENT_MESSAGE_ID = 128
DEFAULT_PAGE = 20
MAX_PAGE = 100
MAX_TITLE = 200


class ConversationIdConverter(BaseConverter):
    """`<cid:...>`: conversation ids are ours (UUIDs). Anything else matches no route, a 404 like
    any unknown path, so no NUL or odd byte ever reaches the database (PostgreSQL would refuse it
    with an error). Message ids likewise: `<int(min=1, max=2147483647):...>`, the database's
    INTEGER, so an id beyond it is a 404, not an overflow."""

    regex = r"[A-Za-z0-9_.-]{1,64}"


@bp.record_once
def _register_converters(state) -> None:
    state.app.url_map.converters["cid"] = ConversationIdConverter


_READS = frozenset({"GET", "HEAD", "OPTIONS"})


def _user_id(*, write: bool = False) -> int:
    """The caller. A write (any unsafe method, or `write`) makes a browser identity's row if it has
    none yet; a read by such an identity is ANONYMOUS_USER_ID, which owns nothing."""
    return authenticate(get_wiring(), create=write or request.method not in _READS)


@bp.before_request
def _rate_limit():
    wiring = get_wiring()
    hit_client_limit(wiring)  # first: unauthenticated requests (401s) count against their address
    if wiring.rate_limiter is not None:
        _user_id()
        wiring.rate_limiter.hit(g.rate_limit_key)


def _session_id(session_id: str) -> str:
    if not keys.is_valid_session_id(session_id):
        raise InvalidSessionId()
    return session_id


def _json_object(allowed: set[str]) -> dict:
    if not request.is_json:
        raise BadRequest("send a JSON body with Content-Type: application/json")
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # json's decoder recurses once per nesting level
        raise BadRequest("the body is nested too deeply") from None
    if body is None:
        raise BadRequest("the body is not valid JSON")
    if not isinstance(body, dict):
        raise InvalidBody("the body must be a JSON object")
    unknown = set(body) - allowed
    if unknown:
        raise InvalidBody(f"unknown field(s): {', '.join(sorted(unknown))}")
    return body


def _text(body: dict, name: str, *, required: bool, max_chars: int | None = None) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise InvalidBody(f"'{name}' is required")
        return None
    if not isinstance(value, str):
        raise InvalidBody(f"'{name}' must be a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidBody(f"'{name}' is not valid Unicode (lone surrogate)") from None
    if "\x00" in value:
        raise InvalidBody(f"'{name}' must not contain NUL characters")
    if not value.strip():
        raise InvalidBody(f"'{name}' must not be empty")
    if max_chars is not None and len(value) > max_chars:
        raise InvalidBody(f"'{name}' is longer than {max_chars} characters")
    return value


def message_body() -> tuple[str, str | None, str | None]:
    """(content, client_message_id, if_busy) of a POST .../messages body, validated (the bench's
    baseline endpoint parses with this too). if_busy is None when the body does not say."""
    body = _json_object({"content", "client_message_id", "if_busy"})
    content = _text(body, "content", required=True)
    if len(content.encode("utf-8")) > MAX_CONTENT_BYTES:
        raise ContentTooLarge()
    client_message_id = _text(body, "client_message_id", required=False, max_chars=MAX_CLIENT_MESSAGE_ID)
    if_busy = body.get("if_busy")
    if if_busy is not None and if_busy not in IF_BUSY_POLICIES:
        raise InvalidBody(f"if_busy must be one of {', '.join(IF_BUSY_POLICIES)}")
    return content, client_message_id, if_busy


@bp.post("/sessions")
def create_session():
    user_id = _user_id()
    session_id = secrets.token_urlsafe(24)
    get_wiring().sessions.reserve(session_id, user_id)
    return jsonify({"session_id": session_id}), 201


@bp.post("/sessions/<session_id>/messages")
def post_message(session_id: str):
    session_id = _session_id(session_id)
    user_id = _user_id()
    content, client_message_id, if_busy = message_body()
    wiring = get_wiring()
    policy = if_busy or wiring.settings.if_busy
    interrupt = None
    if policy == "interrupt":  # the reply being written is stopped first; this message follows it
        def interrupt():
            runs.stop(wiring, user_id, session_id, missing_ok=True)
    posted = conversations.post_message(wiring, user_id, session_id, content, client_message_id,
                                        reject_if_busy=policy == "reject", interrupt=interrupt)
    response = jsonify(posted.json())
    response.status_code = 202 if posted.created else 200
    response.headers["Arzani-Session-Resolution"] = posted.resolution
    return response


@bp.get("/sessions/<session_id>")
def session_status(session_id: str):
    session_id = _session_id(session_id)
    return jsonify(get_wiring().sessions.status(session_id, _user_id()))


def _event_stream(target: events.Log, *, replay: bool, user_id: int) -> Response:
    wiring = get_wiring()
    after = events.resume_position(request.headers.get("Last-Event-ID"), request.args.get("after"))
    settings = wiring.settings
    slot = streamslots.take(wiring.redis, user_id, request.remote_addr, per_user=settings.max_streams_per_user,
                            per_ip=settings.max_streams_per_ip)
    sock = request.environ.get("gunicorn.socket")  # under gunicorn: a closed page is noticed at once
    try:
        stream = events.EventStream(wiring.redis, wiring.event_hub, target, after=after, replay=replay,
                                    max_s=settings.sse_max_s, slot=slot,
                                    client_gone=(lambda: events.socket_closed(sock)) if sock is not None else None)
    except BaseException:
        slot.release()
        raise
    return Response(stream, mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@bp.get("/sessions/<session_id>/events")
def session_events(session_id: str):
    """Server-Sent Events of one session (message, start, token, reply, failed), resumable: each
    carries `id:`, and `Last-Event-ID` or `?after=` resumes exactly after it. Without either, the
    retained log is replayed first (a reply being written shows at once). A session id nobody has
    yet is reserved for the caller, so a client can listen before its first message."""
    session_id = _session_id(session_id)
    user_id = _user_id(write=True)  # claiming an id nobody has yet writes
    get_wiring().sessions.require_owner(session_id, user_id, claim=True)
    return _event_stream(events.session_log(session_id), replay=True, user_id=user_id)


@bp.post("/sessions/<session_id>/stop")
def stop_reply(session_id: str):
    """Stop the reply being written in this session (on whichever worker writes it): no token and
    no reply is committed after this answer; the text written so far is kept as the reply, marked
    `stopped`. Nothing being answered: 200 with "stopped": null."""
    session_id = _session_id(session_id)
    stopped = runs.stop(get_wiring(), _user_id(), session_id)
    return jsonify({"session_id": session_id, "stopped": stopped})


@bp.get("/events")
def user_events():
    """Server-Sent Events of the caller's chats (created, renamed, deleted, message, reply,
    failed), for the sidebars of all their tabs and devices; resumable like a session's.

    A browser identity with no row yet has no chats and no log: it gets a stream that ends at once
    at the log's origin, and the browser comes back in a few seconds (`retry:`) with that position;
    once the identity has written (in another tab), that return replays its whole log from the
    start, so no event is missed. Nothing is subscribed or stored for it meanwhile."""
    user_id = _user_id()
    if user_id == ANONYMOUS_USER_ID:
        body = f"retry: {NO_LOG_YET_RETRY_MS}\n\n" + events.frame(events.ORIGIN, "ready",
                                                                   json.dumps({"position": events.ORIGIN}))
        return Response(body, mimetype="text/event-stream", headers={"Cache-Control": "no-cache"})
    return _event_stream(events.user_log(user_id), replay=False, user_id=user_id)


@bp.post("/conversations/<cid:conversation_id>/messages/<int(min=1, max=2147483647):message_id>/retry")
def retry_reply(conversation_id: str, message_id: int):
    result = conversations.retry_reply(get_wiring(), _user_id(), conversation_id, message_id)
    return jsonify(result), 202


@bp.post("/conversations/<cid:conversation_id>/messages/<int(min=1, max=2147483647):message_id>/regenerate")
def regenerate_reply(conversation_id: str, message_id: int):
    result = conversations.regenerate_reply(get_wiring(), _user_id(), conversation_id, message_id)
    return jsonify(result), 202


@bp.get("/conversations")
def list_conversations():
    user_id = _user_id()
    raw_limit = request.args.get("limit", str(DEFAULT_PAGE))
    # isascii(): '²' and other Unicode digits pass isdigit() but not int()
    if not (raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= 3) or not 1 <= int(raw_limit) <= MAX_PAGE:
        raise BadRequest(f"limit must be a whole number from 1 to {MAX_PAGE}")
    cursor = request.args.get("cursor") or None
    return jsonify(conversations.list_conversations(get_wiring(), user_id, int(raw_limit), cursor))


@bp.get("/conversations/<cid:conversation_id>")
def get_conversation(conversation_id: str):
    user_id = _user_id()
    limit = _whole_number("limit", conversations.DEFAULT_MESSAGES_PAGE, conversations.MAX_MESSAGES_PAGE)
    before = _whole_number("before", None, 2**31 - 1)
    return jsonify(conversations.get_conversation(get_wiring(), user_id, conversation_id, limit=limit,
                                                  before=before))


def _whole_number(name: str, default: int | None, maximum: int) -> int | None:
    """A query parameter that is a whole number from 1 to `maximum` (BadRequest otherwise)."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    # isascii(): '²' and other Unicode digits pass isdigit() but not int()
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 10) or not 1 <= int(raw) <= maximum:
        raise BadRequest(f"{name} must be a whole number from 1 to {maximum}")
    return int(raw)


@bp.patch("/conversations/<cid:conversation_id>")
def rename_conversation(conversation_id: str):
    user_id = _user_id()
    body = _json_object({"title"})
    title = _text(body, "title", required=True, max_chars=MAX_TITLE)
    return jsonify(conversations.rename_conversation(get_wiring(), user_id, conversation_id, title.strip()))


@bp.delete("/conversations/<cid:conversation_id>")
def delete_conversation(conversation_id: str):
    user_id = _user_id()
    conversations.delete_conversation(get_wiring(), user_id, conversation_id)
    return "", 204
