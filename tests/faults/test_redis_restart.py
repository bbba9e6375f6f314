"""Fault 2: Redis restarted empty while the service runs (keys, locks and queued jobs gone)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from app import keys
from app.models import Conversation, Message
from tests.helpers import new_session_id, wait_for
from workers.maintenance import sweep_pending

pytestmark = pytest.mark.slow


def test_after_redis_comes_back_empty_sessions_keep_their_conversations(api, services, redis_server,
                                                                        workers, fake_llm):
    session_ids = [new_session_id() for _ in range(5)]
    first = {s: api.send(s, f"before the restart {s[:6]}").json for s in session_ids}
    assert services.queue.count == 5  # queued, not yet run: no worker is up

    redis_server.stop()
    redis_server.start()  # same port, nothing kept: hashes, locks, fences and the queue are gone
    assert services.redis.dbsize() == 0

    for session_id in session_ids:
        again = api.send(session_id, "after the restart")
        assert again.status_code == 202
        assert again.headers["Arzani-Session-Resolution"] == "recovered"
        assert again.json["conversation_id"] == first[session_id]["conversation_id"]
        tracked = services.redis.hgetall(keys.session_key(session_id))
        assert tracked["cid"] == first[session_id]["conversation_id"]

    # The first messages' jobs died with Redis; the sweeper finds exactly those.
    lost = sorted(first[s]["message"]["id"] for s in session_ids)
    assert sorted(sweep_pending(services, older_than_s=0)) == lost

    workers.start_worker("w1", "--with-scheduler")
    workers.start_worker("w2")

    def all_answered():
        with services.db.read() as db:
            return db.scalar(select(func.count()).where(Message.role == "user",
                                                        Message.status != "answered")) == 0

    wait_for(all_answered, 90, "every user message to be answered")
    with services.db.read() as db:
        per_session = dict(db.execute(select(Conversation.session_id, func.count())
                                      .group_by(Conversation.session_id)).all())
        assert per_session == {s: 1 for s in session_ids}
        for session_id in session_ids:
            conversation_id = first[session_id]["conversation_id"]
            rows = db.execute(select(Message.role, Message.reply_to).where(
                Message.conversation_id == conversation_id).order_by(Message.id)).all()
            users = [i for i, (role, _) in enumerate(rows) if role == "user"]
            replies = [reply_to for role, reply_to in rows if role == "assistant"]
            assert len(users) == 2 and len(replies) == 2
            assert len(set(replies)) == 2  # one reply each, none twice
