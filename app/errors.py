"""Domain exceptions. The web edge (app/api.py) turns them into {"error": {"code", "message"}}."""

from __future__ import annotations


class ArzaniError(Exception):
    """Base of every error this service raises on purpose."""

    code = "error"
    status = 500

    def __init__(self, message: str | None = None):
        super().__init__(message or self.__doc__ or self.code)
        self.message = message or (self.__doc__ or self.code).strip()


class ConfigurationError(ArzaniError):
    """The environment does not describe a runnable service."""

    code = "configuration_error"


class BadRequest(ArzaniError):
    """The request could not be understood."""

    code = "bad_request"
    status = 400


class InvalidSessionId(BadRequest):
    """Session ids match ^[A-Za-z0-9_-]{8,128}$."""

    code = "invalid_session_id"


class Unauthorized(ArzaniError):
    """Send Authorization: Bearer TOKEN, or open the chat page to get a cookie."""

    code = "unauthorized"
    status = 401


class Forbidden(ArzaniError):
    """The credentials are good but the request is refused (a cross-site request with the cookie)."""

    code = "forbidden"
    status = 403


class NotFound(ArzaniError):
    """Not found."""

    code = "not_found"
    status = 404


class Conflict(ArzaniError):
    """The request does not fit the current state of the resource."""

    code = "conflict"
    status = 409


class IdempotencyConflict(Conflict):
    """This client_message_id was already used in this session for different content."""

    code = "idempotency_conflict"


class SessionAnswering(Conflict):
    """The assistant is still answering this session (if_busy=reject): nothing was stored; send
    again once the reply is there, or with if_busy=enqueue or interrupt."""

    code = "session_busy"
    retry_after_s = 2


class ConversationFull(Conflict):
    """The conversation holds ARZANI_MAX_CONVERSATION_MESSAGES messages: start a new chat."""

    code = "conversation_full"


class TooManyStreams(ArzaniError):
    """Too many event streams are open for this user or this address; close some (other tabs)."""

    code = "too_many_streams"
    status = 429
    retry_after_s = 5


class ContentTooLarge(ArzaniError):
    """Message content is limited to 32 KiB."""

    code = "content_too_large"
    status = 413


class InvalidBody(ArzaniError):
    """The JSON body does not have the expected shape."""

    code = "invalid_body"
    status = 422


class TooManySessions(ArzaniError):
    """Too many sessions reserved and not used yet: send a message in one of them, or wait for them
    to expire (ARZANI_SESSION_TTL), before reserving more."""

    code = "too_many_sessions"
    status = 429


class Unavailable(ArzaniError):
    """A backing service (Redis or the database) is unavailable; try again."""

    code = "unavailable"
    status = 503


class SessionBusy(Unavailable):
    """Another process is creating this session's conversation and did not finish in time."""

    code = "session_busy"


class StaleFence(ArzaniError):
    """This process lost the creation lock (it expired and someone else took it) before writing."""

    code = "stale_fence"
    status = 503
