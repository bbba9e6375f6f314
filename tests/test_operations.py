"""`arzani reconcile` and `arzani cleanup` on data made inconsistent on purpose."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, text

from app import keys
from app.models import Conversation, Message, utcnow
from scripts.cli import cli
from tests.helpers import new_session_id


@pytest.fixture
def arzani(settings, services):
    env = {"REDIS_URL": settings.redis_url, "DATABASE_URL": settings.database_url}

    def _run(*args: str):
        return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)

    return _run


def test_reconcile_repairs_keys_from_the_database(arzani, api, services):
    mismatched, dangling, untracked, fine = new_session_id(), new_session_id(), new_session_id(), new_session_id()
    posted = {s: api.send(s, "hello").json for s in (mismatched, dangling, untracked, fine)}
    services.redis.hset(keys.session_key(mismatched), "cid", "not-this-one")
    api.delete(f"/api/conversations/{posted[dangling]['conversation_id']}")
    services.redis.hset(keys.session_key(dangling), mapping={
        "cid": posted[dangling]["conversation_id"], "uid": api.user_id})
    services.redis.delete(keys.session_key(untracked))

    report = arzani("reconcile")
    assert report.exit_code == 1
    kinds = {line.split()[0]: line.split()[1] for line in report.output.splitlines()[:-1]}
    assert kinds == {"key_mismatch": mismatched, "key_dangling": dangling, "untracked": untracked}
    assert services.redis.hget(keys.session_key(mismatched), "cid") == "not-this-one"

    fixed = arzani("reconcile", "--fix")
    assert fixed.exit_code == 0, fixed.output
    assert "3 finding(s), 3 fixed" in fixed.output
    assert services.redis.hget(keys.session_key(mismatched), "cid") == \
        posted[mismatched]["conversation_id"]
    assert services.redis.hget(keys.session_key(dangling), "cid") is None  # untracked (the fence stays)
    assert services.redis.hget(keys.session_key(untracked), "cid") == \
        posted[untracked]["conversation_id"]
    assert arzani("reconcile").output.strip() == "0 finding(s), 0 fixed"
    statuses = [json.loads(line) for line in arzani("sessions", "list", "--json").output.splitlines()]
    assert all(s["consistent"] for s in statuses)


def test_reconcile_merges_duplicate_conversations_into_the_oldest(arzani, api, services, run_jobs):
    session_id = new_session_id()
    first = api.send(session_id, "first in the old conversation", client_message_id="dup").json
    run_jobs()
    # Legacy data: a database written without the unique index, where a second process made a
    # second conversation for the same session and the chat went on there.
    with services.db.write() as db:
        db.execute(text("DROP INDEX uq_conversations_live_session"))
        twin = Conversation(session_id=session_id, user_id=api.user_id, created_by="web:legacy:9",
                            created_at=utcnow() + timedelta(seconds=1))
        db.add(twin)
    services.redis.hset(keys.session_key(session_id), "cid", twin.id)
    services.sessions.recent.drop(session_id)  # the chat went on in a process that asked Redis
    second = api.send(session_id, "second, in the twin").json
    assert second["conversation_id"] == twin.id
    with services.db.write() as db:  # legacy too: the id was idempotent per conversation then
        db.execute(text("UPDATE messages SET client_message_id = 'dup' WHERE id = :id"),
                   {"id": second["message"]["id"]})
    run_jobs()

    report = arzani("reconcile", "--fix")
    assert report.exit_code == 0, report.output
    assert "duplicate_conversations" in report.output
    with services.db.read() as db:
        live = db.scalars(select(Conversation).where(Conversation.session_id == session_id,
                                                     Conversation.deleted_at.is_(None))).all()
        assert [c.id for c in live] == [first["conversation_id"]]
        messages = db.scalars(select(Message).where(Message.conversation_id == live[0].id)
                              .order_by(Message.id)).all()
    assert [(m.role, m.content[:6]) for m in messages] == [
        ("user", "first "), ("assistant", "Echo: "), ("user", "second"), ("assistant", "Echo: ")]
    assert messages[1].reply_to == messages[0].id and messages[3].reply_to == messages[2].id
    assert live[0].message_count == 4
    assert services.redis.hget(keys.session_key(session_id), "cid") == live[0].id
    with services.db.write() as db:  # and the index can be put back: one live row per session
        db.execute(text("CREATE UNIQUE INDEX uq_conversations_live_session ON conversations "
                        "(session_id) WHERE deleted_at IS NULL"))


def make_orphan(services, api, session_id: str) -> Conversation:
    """A two-day-old conversation whose first message never arrived, tracked by its session key."""
    with services.db.write() as db:
        orphan = Conversation(session_id=session_id, user_id=api.user_id, created_by="web:gone:1",
                              created_at=utcnow() - timedelta(days=2))
        db.add(orphan)
    services.redis.hset(keys.session_key(session_id), mapping={"cid": orphan.id,
                                                               "uid": api.user_id})
    services.redis.pexpire(keys.session_key(session_id), services.sessions.session_ttl_ms)
    return orphan


def test_cleanup_never_deletes_a_message_posted_while_it_runs(api, services):
    """Issue 11, hole 1: cleanup picks an orphan, then a real message is posted to its session
    just before cleanup's DELETE runs (forced with an engine event). The message was answered
    202: it must survive, in a live conversation of its session, on both databases."""
    import threading

    from sqlalchemy import event

    from app import operations

    session_id = new_session_id()
    make_orphan(services, api, session_id)
    posted, poster = {}, None

    def post_just_before_the_delete(conn, cursor, statement, parameters, context, executemany):
        nonlocal poster
        if poster is None and statement.lstrip().upper().startswith("DELETE FROM MESSAGES"):
            poster = threading.Thread(target=lambda: posted.update(
                response=api.send(session_id, "posted during cleanup")))
            poster.start()
            # Let the post commit if nothing holds it back (the hole); with the fix it waits for
            # cleanup's lock, and cleanup must go on rather than wait for it.
            poster.join(2)

    event.listen(services.db.engine, "before_cursor_execute", post_just_before_the_delete)
    try:
        operations.cleanup(services, older_than=timedelta(days=1), dry_run=False)
    finally:
        event.remove(services.db.engine, "before_cursor_execute", post_just_before_the_delete)
    assert poster is not None, "cleanup never reached its DELETE"
    poster.join(30)
    response = posted["response"]
    assert response.status_code == 202
    message_id = response.json["message"]["id"]
    with services.db.read() as db:
        message = db.get(Message, message_id)
        assert message is not None, "an accepted message was deleted by cleanup"
        conversation = db.get(Conversation, message.conversation_id)
        assert conversation.session_id == session_id and conversation.deleted_at is None
    assert api.get(f"/api/sessions/{session_id}").json["consistent"] is True


def test_cleanup_removes_orphans_and_leftovers_and_keeps_real_chats(arzani, api, services):
    kept = api.send(new_session_id(), "a real chat").json
    orphan_session = new_session_id()
    orphan = make_orphan(services, api, orphan_session)
    services.redis.set(keys.lock_key("leftover-lock"), "token-of-a-dead-process")  # no TTL
    services.redis.hset(keys.session_key("no-ttl-session"), "fence", 5)  # no TTL: bounded, fence kept
    services.redis.set(keys.session_key("old-layout") + ":fence", 7)  # the fence key before it moved
    young_session = new_session_id()
    with services.db.write() as db:
        db.add(Conversation(session_id=young_session, user_id=api.user_id, created_by="web:new:1"))

    dry = arzani("cleanup", "--older-than", "1d", "--dry-run")
    assert "would remove conversation " + orphan.id in dry.output
    assert "4 item(s) to remove" in dry.output
    with services.db.read() as db:
        assert db.get(Conversation, orphan.id) is not None

    done = arzani("cleanup", "--older-than", "1d")
    assert "4 item(s) removed" in done.output, done.output
    with services.db.read() as db:
        assert db.get(Conversation, orphan.id) is None
        assert db.get(Conversation, kept["conversation_id"]) is not None
        assert db.scalar(select(func.count()).where(Conversation.session_id == young_session)) == 1
    assert services.redis.hget(keys.session_key(orphan_session), "cid") is None  # untracked (the fence stays)
    assert services.redis.exists(keys.lock_key("leftover-lock")) == 0
    assert services.redis.exists(keys.session_key("old-layout") + ":fence") == 0
    assert services.redis.hget(keys.session_key("no-ttl-session"), "fence") == "5"
    assert 0 < services.redis.pttl(keys.session_key("no-ttl-session")) <= services.sessions.session_ttl_ms
    assert arzani("cleanup", "--older-than", "bogus").exit_code == 2
