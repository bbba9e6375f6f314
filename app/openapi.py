"""The OpenAPI 3 document of the HTTP API, served at /openapi.json.

Written by hand from CONTRACT.md; tests/test_openapi.py checks that every route of the app is
documented and every documented route exists, and a schemathesis run checks the answers."""

from __future__ import annotations

from flask import Blueprint, jsonify

bp = Blueprint("openapi", __name__)

SESSION_ID = {"type": "string", "pattern": "^[A-Za-z0-9_-]{8,128}$"}
TIME = {"type": "string", "format": "date-time"}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict) -> dict:
    return {"content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict:
    return {"description": description, **_json(_ref("Error"))}


EVENT_STREAM = {"description": "an event stream; each event's data is JSON",
                "content": {"text/event-stream": {"schema": {
                    "type": "object", "required": ["event", "data"],
                    "properties": {
                        "id": {"type": "string", "pattern": "^[0-9]+-[0-9]+$"},
                        "event": {"type": "string",
                                  "enum": ["ready", "reset", "message", "start", "token", "reply", "failed",
                                           "stopped", "created", "renamed", "deleted"]},
                        "data": {"type": "string", "contentMediaType": "application/json"},
                        "retry": {"type": "integer"}}}}}}
RESUME_PARAMS = [
    {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "the id of the last event received: the stream resumes exactly after it"},
    {"name": "after", "in": "query", "required": False, "schema": {"type": "string"},
     "description": "like Last-Event-ID (and preferred over it)"},
]

ERRORS = {
    "400": _error("malformed JSON, a bad session id, a bad query parameter"),
    "401": _error("no bearer token and no cookie, or an unknown or revoked token"),
    "403": _error("the chat page's cookie on a cross-site request (CSRF): refused"),
    "404": _error("not found, or another user's"),
    "409": _error("the request does not fit the current state (e.g. `idempotency_conflict`: a "
                  "client_message_id reused for other content; `session_busy` with Retry-After: the "
                  "assistant is still answering and the message asked `if_busy: reject`; "
                  "`conversation_full`: the conversation holds the most messages it may)"),
    "413": _error("content over 32 KiB, or a request body over 256 KiB"),
    "422": _error("a JSON body of the wrong shape"),
    "429": _error("rate limited (per user or per client address); too many sessions reserved and unused "
                  "(`too_many_sessions`); on an event stream also `too_many_streams` (ARZANI_MAX_STREAMS_PER_USER "
                  "or _PER_IP open already)"),
    "503": _error("Redis or the database is unavailable"),
}


def _errors(*codes: str) -> dict:
    return {code: ERRORS[code] for code in codes}


SCHEMAS = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "object", "required": ["code", "message"],
                                 "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}},
    },
    "Message": {
        "type": "object",
        "required": ["id", "conversation_id", "role", "content", "status", "reply_to", "created_at",
                     "failure_reason", "context_upto", "current_version", "versions"],
        "properties": {
            "id": {"type": "integer"},
            "conversation_id": {"type": "string"},
            "role": {"type": "string", "enum": ["user", "assistant"]},
            "content": {"type": "string"},
            "status": {"type": "string", "enum": ["pending", "answered", "failed", "stopped", "complete"],
                       "description": "a user message: pending, answered, failed or stopped; an assistant "
                                      "message: complete, or stopped (the partial text written before a Stop)"},
            "reply_to": {"type": ["integer", "null"]},
            "created_at": TIME,
            "failure_reason": {"type": ["string", "null"],
                               "enum": ["agent_error", "timeout", "worker_died", "error", None]},
            "context_upto": {"type": ["integer", "null"],
                             "description": "an assistant message written to its end: the id of the last "
                                            "message of the history the agent was given"},
            "current_version": {"type": ["integer", "null"],
                                "description": "a reply: its version shown as `content` (the latest); null "
                                               "on a user message"},
            "versions": {"type": "array", "description": "a reply: every version, oldest first, the current "
                                                         "one last (Regenerate adds one); empty on a user message",
                         "items": {"type": "object", "required": ["version", "content", "status", "created_at"],
                                   "properties": {"version": {"type": "integer"}, "content": {"type": "string"},
                                                  "status": {"type": "string", "enum": ["complete", "stopped"]},
                                                  "created_at": TIME}}},
        },
    },
    "Stopped": {
        "type": "object", "required": ["session_id", "stopped"],
        "properties": {
            "session_id": SESSION_ID,
            "stopped": {"oneOf": [{"type": "null"}, {
                "type": "object", "required": ["message", "reply"],
                "properties": {"message": _ref("Message"),
                               "reply": {"oneOf": [_ref("Message"), {"type": "null"}]}}}]},
        },
    },
    "Conversation": {
        "type": "object",
        "required": ["id", "session_id", "title", "created_at", "updated_at"],
        "properties": {
            "id": {"type": "string"},
            "session_id": SESSION_ID,
            "title": {"type": ["string", "null"]},
            "created_at": TIME,
            "updated_at": TIME,
        },
    },
    "ConversationSummary": {
        "allOf": [_ref("Conversation"), {
            "type": "object",
            "required": ["message_count", "last_message"],
            "properties": {"message_count": {"type": "integer"},
                           "last_message": {"oneOf": [_ref("Message"), {"type": "null"}]}},
        }],
    },
    "ConversationDetail": {
        "allOf": [_ref("Conversation"), {
            "type": "object", "required": ["messages", "next_before"],
            "properties": {"messages": {"type": "array", "items": _ref("Message")},
                           "next_before": {"type": ["integer", "null"],
                                           "description": "pass as `before` for the older messages; null: "
                                                          "these are the first"}},
        }],
    },
    "PostedMessage": {
        "type": "object",
        "required": ["session_id", "conversation_id", "message", "job_id"],
        "properties": {"session_id": SESSION_ID, "conversation_id": {"type": "string"},
                       "message": _ref("Message"), "job_id": {"type": "string"}},
    },
    "SessionStatus": {
        "type": "object",
        "required": ["session_id", "conversation_id", "tracked", "lock", "consistent", "pending_replies"],
        "properties": {
            "session_id": SESSION_ID,
            "conversation_id": {"type": ["string", "null"]},
            "tracked": {"type": "object", "required": ["key", "conversation_id", "ttl_ms", "last_seen_at"],
                        "additionalProperties": False, "properties": {
                "key": {"type": "string"}, "conversation_id": {"type": ["string", "null"]},
                "ttl_ms": {"type": ["integer", "null"]}, "last_seen_at": {"type": ["integer", "null"]}}},
            "lock": {"type": "object", "required": ["held", "ttl_ms"], "properties": {
                "held": {"type": "boolean"}, "ttl_ms": {"type": ["integer", "null"]}}},
            "consistent": {"type": "boolean"},
            "pending_replies": {"type": "integer"},
        },
    },
}

SID_PARAM = {"name": "session_id", "in": "path", "required": True, "schema": SESSION_ID}
CID_PARAM = {"name": "conversation_id", "in": "path", "required": True, "schema": {"type": "string"}}

PATHS = {
    "/api/sessions": {
        "post": {"summary": "Mint a new session id (no conversation until the first message)",
                 "responses": {"201": {"description": "a new session id",
                                       **_json({"type": "object", "required": ["session_id"],
                                                "properties": {"session_id": SESSION_ID}})},
                               **_errors("401", "403", "429", "503")}},
    },
    "/api/sessions/{session_id}/messages": {
        "post": {
            "summary": "Post a user message; its reply is attached later by a worker",
            "parameters": [SID_PARAM],
            "requestBody": {"required": True, **_json({
                "type": "object", "required": ["content"], "additionalProperties": False,
                "properties": {"content": {"type": "string", "minLength": 1},
                               "client_message_id": {"type": ["string", "null"], "minLength": 1, "maxLength": 128},
                               "if_busy": {"type": ["string", "null"], "enum": ["enqueue", "reject", "interrupt", None],
                                           "description": "if the assistant is still answering this session: "
                                                          "enqueue (answered in order, after it), reject (409 "
                                                          "session_busy, nothing stored) or interrupt (the reply "
                                                          "being written is stopped, then this message is "
                                                          "answered). Default: ARZANI_IF_BUSY (enqueue)"}}})},
            "responses": {
                "202": {"description": "stored (committed) and its reply job enqueued",
                        **_json(_ref("PostedMessage"))},
                "200": {"description": "the same client_message_id again: the first answer",
                        **_json(_ref("PostedMessage"))},
                **_errors("400", "401", "403", "404", "409", "413", "422", "429", "503"),
            },
        },
    },
    "/api/sessions/{session_id}/stop": {
        "post": {"summary": "Stop the reply being written in this session, on whichever worker writes it: "
                            "no token and no reply is committed after this answer. The text written so far "
                            "is kept as the reply, marked `stopped` (none if no token came), and the user "
                            "message becomes `stopped`; it is never answered again. Nothing being answered: "
                            "200 with `stopped: null`",
                 "parameters": [SID_PARAM],
                 "responses": {"200": {"description": "what was stopped, or null",
                                       **_json(_ref("Stopped"))},
                               **_errors("400", "401", "403", "404", "429", "503")}},
    },
    "/api/sessions/{session_id}": {
        "get": {"summary": "What Redis and the database each believe about the session",
                "parameters": [SID_PARAM],
                "responses": {"200": {"description": "status", **_json(_ref("SessionStatus"))},
                              **_errors("400", "401", "404", "429", "503")}},
    },
    "/api/sessions/{session_id}/events": {
        "get": {"summary": "Live events of the session as Server-Sent Events, resumable: `message` (a user "
                           "message stored), `start` (a reply being written; its id is the attempt's epoch), "
                           "`token` (a piece of it), `reply` (attached), `failed`, `stopped`; `reset` (re-read the "
                           "conversation) and `ready` (caught up). Each event has an `id:`; Last-Event-ID or "
                           "`?after=` resumes exactly after it, and without either the retained log is "
                           "replayed. A session id nobody has yet is reserved for the caller. The stream "
                           "ends after about a minute and EventSource reconnects",
                "parameters": [SID_PARAM, *RESUME_PARAMS],
                "responses": {"200": EVENT_STREAM, **_errors("400", "401", "404", "429", "503")}},
    },
    "/api/events": {
        "get": {"summary": "Live events of all the caller's chats as Server-Sent Events, resumable like a "
                           "session's: `created`, `renamed`, `deleted`, `message`, `reply`, `failed`, `stopped` (each "
                           "with conversation_id and session_id), `reset`, `ready`. Without a position it "
                           "starts at the present",
                "parameters": RESUME_PARAMS,
                "responses": {"200": EVENT_STREAM, **_errors("400", "401", "429", "503")}},
    },
    "/api/conversations/{conversation_id}/messages/{message_id}/retry": {
        "post": {"summary": "Try again to answer a failed user message",
                 "parameters": [CID_PARAM, {"name": "message_id", "in": "path", "required": True,
                                            "schema": {"type": "integer"}}],
                 "responses": {"202": {"description": "the message is pending again; its reply job enqueued",
                                       **_json({"type": "object", "required": ["message", "job_id"],
                                                "properties": {"message": _ref("Message"),
                                                               "job_id": {"type": "string"}}})},
                               "409": _error("the message is not failed"),
                               **_errors("401", "403", "404", "429", "503")}},
    },
    "/api/conversations/{conversation_id}/messages/{message_id}/regenerate": {
        "post": {"summary": "Write a new version of the reply to the conversation's last user message (answered "
                            "or stopped): the message is pending again and its reply job enqueued; the current "
                            "reply stays until the new version replaces it, then it is kept in `versions`. The "
                            "history the agent is given uses the current version of every reply",
                 "parameters": [CID_PARAM, {"name": "message_id", "in": "path", "required": True,
                                            "schema": {"type": "integer"}}],
                 "responses": {"202": {"description": "the message is pending again; its reply job enqueued",
                                       **_json({"type": "object", "required": ["message", "job_id"],
                                                "properties": {"message": _ref("Message"),
                                                               "job_id": {"type": "string"}}})},
                               "409": _error("not the last user message, or not answered or stopped (a reply "
                                             "is already being written)"),
                               **_errors("401", "403", "404", "429", "503")}},
    },
    "/api/conversations": {
        "get": {
            "summary": "The sidebar: conversations, newest activity first",
            "parameters": [
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
                {"name": "cursor", "in": "query", "schema": {"type": "string"},
                 "description": "opaque: only a next_cursor this server returned (anything else: 400)"},
            ],
            "responses": {"200": {"description": "a page", **_json({
                "type": "object", "required": ["conversations", "next_cursor"],
                "properties": {"conversations": {"type": "array", "items": _ref("ConversationSummary")},
                               "next_cursor": {"type": ["string", "null"]}}})},
                **_errors("400", "401", "429", "503")},
        },
    },
    "/api/conversations/{conversation_id}": {
        "get": {"summary": "A conversation with its latest messages (100 unless `limit` says), oldest first; "
                           "`before` pages back",
                "parameters": [CID_PARAM,
                               {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                          "maximum": 500}},
                               {"name": "before", "in": "query", "schema": {"type": "integer", "minimum": 1},
                                "description": "only messages older than this message id (a `next_before`)"}],
                "responses": {"200": {"description": "the conversation", **_json(_ref("ConversationDetail"))},
                              **_errors("400", "401", "404", "429", "503")}},
        "patch": {"summary": "Rename", "parameters": [CID_PARAM],
                  "requestBody": {"required": True, **_json({
                      "type": "object", "required": ["title"], "additionalProperties": False,
                      "properties": {"title": {"type": "string", "minLength": 1, "maxLength": 200}}})},
                  "responses": {"200": {"description": "renamed", **_json(_ref("Conversation"))},
                                **_errors("400", "401", "403", "404", "422", "429", "503")}},
        "delete": {"summary": "Delete; the session's next message starts a new conversation",
                   "parameters": [CID_PARAM],
                   "responses": {"204": {"description": "deleted"},
                                 **_errors("401", "403", "404", "429", "503")}},
    },
    "/healthz": {"get": {"summary": "The process is up", "security": [],
                         "responses": {"200": {"description": "up"}}}},
    "/readyz": {"get": {"summary": "Redis and the database answer", "security": [],
                        "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
}

DOCUMENT = {
    "openapi": "3.1.0",
    "info": {"title": "Arzani-X conversation service", "version": "1"},
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "description": "a token from `arzani users create`"},
            "cookie": {"type": "apiKey", "in": "cookie", "name": "arzani_session_<8 hex>",
                       "description": "the chat page's signed cookie (its name has a per-instance suffix; "
                                      "__Host- in production)"},
        },
    },
    "security": [{"bearer": []}, {"cookie": []}],
    "paths": PATHS,
}


@bp.get("/openapi.json")
def openapi_json():
    return jsonify(DOCUMENT)
