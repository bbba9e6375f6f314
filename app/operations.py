"""Operator-side queries over all sessions (used by `arzani sessions ...`)."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import select

from app import keys
from app.models import Conversation
from app.services import Services


def known_session_ids(services: Services, scan_count: int = 500) -> Iterator[str]:
    """Every session Redis tracks (SCAN, never KEYS), then those only the database knows."""
    seen: set[str] = set()
    for key in services.redis.scan_iter(match=f"{keys.PREFIX}*", count=scan_count):
        session_id = keys.session_id_from_key(key)
        if session_id is not None and session_id not in seen:
            seen.add(session_id)
            yield session_id
    with services.db.session() as db:
        rows = db.execute(
            select(Conversation.session_id)
            .where(Conversation.deleted_at.is_(None))
            .order_by(Conversation.updated_at.desc())
            .execution_options(yield_per=500)
        )
        for (session_id,) in rows:
            if session_id not in seen:
                seen.add(session_id)
                yield session_id
