"""Redis key names (CONTRACT.md, Redis keys). The only place a key string is built.

Session ids are validated before they get here, so input can never steer a key name beyond the
`{SID}` slot: the pattern admits no braces, colons or spaces.
"""

from __future__ import annotations

import re

SESSION_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{8,128}")
PREFIX = "arzani:session:"


def is_valid_session_id(session_id: object) -> bool:
    return isinstance(session_id, str) and SESSION_ID_PATTERN.fullmatch(session_id) is not None


def session_key(session_id: str) -> str:
    """The tracked hash; its fields are app.sessions.TrackedSession's (that module owns them),
    and the lock's fence counter is one of them (app.sessions.FENCE_FIELD): one key per session."""
    return f"{PREFIX}{{{session_id}}}"


def lock_key(session_id: str) -> str:
    """The creation lock: holds its owner's random token, set only with SET NX PX."""
    return f"{session_key(session_id)}:lock"


def released_channel(session_id: str) -> str:
    """Pub/sub channel (not a key) on which a lock holder announces it is done, waking waiters."""
    return f"{session_key(session_id)}:released"


def events_channel(session_id: str) -> str:
    """Pub/sub channel (not a key) on which each entry appended to the session's log is announced."""
    return f"{session_key(session_id)}:events"


def session_log(session_id: str) -> str:
    """A Redis Stream: the session's live events (messages, reply tokens with their generation's
    epoch, replies, failures), kept while a reply is written and briefly after (app/events.py)."""
    return f"{session_key(session_id)}:log"


def run_key(session_id: str) -> str:
    """Which generation may write to the session's log: `MID:ATTEMPT` while one streams, or
    `stopped:MID` once its reply was stopped (app/runs.py). Tokens are appended only while it
    names their generation, in the same script, so none lands after a Stop."""
    return f"{session_key(session_id)}:run"


USER_PREFIX = "arzani:user:"


def user_log(user_id: int) -> str:
    """A Redis Stream: the user's events across all their chats (created, renamed, deleted, message,
    reply, failed), for the sidebar of every tab and device."""
    return f"{USER_PREFIX}{{{int(user_id)}}}:log"


def user_reservations(user_id: int) -> str:
    """A sorted set: the session ids reserved by the user and not used yet, each scored by the epoch
    milliseconds its reservation expires at (ARZANI_MAX_RESERVATIONS caps their number)."""
    return f"{USER_PREFIX}{{{int(user_id)}}}:reserved"


def user_events_channel(user_id: int) -> str:
    """Pub/sub channel (not a key) announcing each entry appended to the user's log."""
    return f"{USER_PREFIX}{{{int(user_id)}}}:events"


def session_id_from_key(key: str) -> str | None:
    """`arzani:session:{SID}` -> SID; None for the lock, log and run keys or anything else."""
    if key.startswith(PREFIX + "{") and key.endswith("}"):
        return key[len(PREFIX) + 1 : -1]
    return None
