"""Issue 11's holes around the session lock and the database, each forced deterministically
against a real Redis server, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading

from app.locks import FencedLock
from app.models import User
from tests.helpers import new_session_id


def test_a_slow_redis_during_creation_holds_no_database_write_lock(services, api, monkeypatch):
    """Hole 9: the fence check (a Redis round trip) happens outside the write transaction, so a
    Redis that answers slowly while a conversation is created stalls no other writer."""
    in_check, go_on = threading.Event(), threading.Event()
    original = FencedLock.fence_is_current

    def slow_fence_check(self):
        in_check.set()
        go_on.wait(30)
        return original(self)

    monkeypatch.setattr(FencedLock, "fence_is_current", slow_fence_check)
    created = {}
    creator = threading.Thread(target=lambda: created.update(
        resolved=services.sessions.resolve(new_session_id(), api.user_id)))
    creator.start()
    try:
        assert in_check.wait(30), "the creation never reached its fence check"
        wrote = threading.Event()

        def another_writer():
            with services.db.write() as db:
                db.add(User(name="written-meanwhile", kind="api"))
            wrote.set()

        writer = threading.Thread(target=another_writer)
        writer.start()
        # The creator is parked in its Redis call; the other writer must not be waiting for it.
        assert wrote.wait(10), "a writer waited for a Redis round trip made inside a write transaction"
    finally:
        go_on.set()
        creator.join(30)
        writer.join(30)
    assert created["resolved"].how == "created"


def test_the_fence_stays_monotonic_when_redis_restarts_empty_between_two_holders(services, redis_server):
    """Hole 6: a holder from before a Redis restart must not pass the fence check of the holder
    after it (an INCR counter restarting at 1 would hand out the same fence twice)."""
    from app import keys
    from app.sessions import TrackedSession

    session_id = new_session_id()
    before = services.sessions.lock(session_id)
    assert before.acquire()
    redis_server.stop()
    redis_server.start()  # same port, nothing kept: the lock and the fence are gone
    after = services.sessions.lock(session_id)
    assert after.acquire()
    assert after.fence > before.fence
    assert services.sessions.commit(after, session_id, TrackedSession(conversation_id="after", user_id=1))
    assert not before.fence_is_current()
    written = services.sessions.commit(before, session_id, TrackedSession(conversation_id="before", user_id=1))
    assert not written
    assert services.redis.hget(keys.session_key(session_id), "cid") == "after"


def test_a_repair_never_writes_a_conversation_deleted_after_it_was_read(services, api, monkeypatch):
    """Hole 5: the reply job reads the conversation, then the user deletes it, then the job finds
    the key missing and repairs it: the key must not come back naming the deleted conversation."""
    from app import keys
    from app.sessions import SessionService
    from workers import jobs

    session_id = new_session_id()
    posted = api.send(session_id, "delete me while I am answered").json
    services.redis.delete(keys.session_key(session_id))  # the key is gone (Redis restarted empty)
    real = SessionService.tracked_conversation_id

    def deleted_just_now(self, sid):
        if sid == session_id:
            assert api.delete(f"/api/conversations/{posted['conversation_id']}").status_code == 204
        return real(self, sid)

    monkeypatch.setattr(SessionService, "tracked_conversation_id", deleted_just_now)
    jobs.reply(posted["message"]["id"])
    assert services.redis.hget(keys.session_key(session_id), "cid") is None
    monkeypatch.undo()
    again = api.send(session_id, "a new chat in the same session")  # starts a new conversation
    assert again.status_code == 202 and again.json["conversation_id"] != posted["conversation_id"]


def test_a_post_that_keeps_meeting_a_stale_key_answers_503_not_500(services, api, monkeypatch):
    """Hole 5: a key that names a deleted conversation again after every drop (a stale repair
    racing the post) makes the post give up after a bounded number of tries with a 503."""
    from app import keys
    from app.sessions import SessionService

    session_id = new_session_id()
    posted = api.send(session_id, "first").json
    assert api.delete(f"/api/conversations/{posted['conversation_id']}").status_code == 204
    real_forget = SessionService.forget

    def forget_then_restore_the_stale_key(self, sid, conversation_id):
        dropped = real_forget(self, sid, conversation_id)
        self.redis.hset(keys.session_key(sid), "cid", posted["conversation_id"])
        return dropped

    services.redis.hset(keys.session_key(session_id), "cid", posted["conversation_id"])
    monkeypatch.setattr(SessionService, "forget", forget_then_restore_the_stale_key)
    response = api.send(session_id, "second")
    assert response.status_code == 503 and response.json["error"]["code"] == "session_busy"
    monkeypatch.undo()
    services.redis.delete(keys.session_key(session_id))
    assert api.send(session_id, "third").status_code == 202  # and the session still works


def test_the_sweeper_never_deletes_a_job_a_worker_starts_while_it_looks(services, api, monkeypatch):
    """Hole 4: a worker takes the job off the queue and starts it right after the sweeper's first
    look at Redis: the sweeper must not delete it and enqueue it again (two agent calls)."""
    from workers.maintenance import sweep_pending

    posted = api.send(new_session_id(), "take me while the sweeper looks").json
    job_id = posted["job_id"]
    rq_redis = services.rq_redis
    real = rq_redis.execute_command
    started = []

    def a_worker_starts_it_meanwhile(*args, **options):
        result = real(*args, **options)
        if not started:
            started.append(True)
            real("LREM", services.queue.key, 0, job_id)  # BLMOVE'd, then started: in no list
            real("HSET", f"rq:job:{job_id}", "status", "started")
        return result

    monkeypatch.setattr(rq_redis, "execute_command", a_worker_starts_it_meanwhile)
    assert sweep_pending(services, older_than_s=0) == []
    monkeypatch.undo()
    assert rq_redis.hget(f"rq:job:{job_id}", "status") == b"started"
    assert services.queue.get_job_ids() == []  # not enqueued a second time


def test_a_backlog_of_queued_messages_does_not_hide_a_stranded_one(services, api):
    """Hole 4: more than a thousand pending messages whose jobs wait in the queue, then one whose
    job was lost: the sweeper still finds it."""
    from sqlalchemy import insert, select

    from app.jobqueue import enqueue_reply
    from app.models import Message, utcnow
    from workers.maintenance import sweep_pending

    first = api.send(new_session_id(), "the chat").json
    with services.db.write() as db:
        db.execute(insert(Message), [
            {"conversation_id": first["conversation_id"], "role": "user", "content": f"queued {n}",
             "status": "pending", "created_at": utcnow()} for n in range(1_050)])
    with services.db.read() as db:
        backlog = db.execute(select(Message.id, Message.created_at)
                             .where(Message.conversation_id == first["conversation_id"])).all()
    for message in backlog:  # each with its job waiting in the queue
        enqueue_reply(services.queue, services.settings, message)
    lost = api.send(first["session_id"], "my job was lost").json
    services.queue.remove(lost["job_id"])
    services.rq_redis.delete(f"rq:job:{lost['job_id']}")
    assert sweep_pending(services, older_than_s=0) == [lost["message"]["id"]]


def test_two_deployments_on_one_redis_never_share_a_job_id(services, settings, api, tmp_path):
    """Hole 8: a second deployment (its own database and queue) on the same Redis stores its
    message 1 too: its job must be enqueued, not refused as a duplicate of the first's."""
    import dataclasses

    from app import create_app
    from app.auth import create_api_user
    from app.wiring import Wiring

    first = api.send(new_session_id(), "deployment one").json
    other = Wiring(dataclasses.replace(settings, database_url=f"sqlite:///{tmp_path / 'other.db'}",
                                       queue_name="arzani-other"))
    other.db.create_all()
    try:
        _, token = create_api_user(other, "someone-else")
        client = create_app({"TESTING": True}, services=other).test_client()
        second = client.post(f"/api/sessions/{new_session_id()}/messages", json={"content": "deployment two"},
                             headers={"Authorization": f"Bearer {token}"}).json
        assert second["message"]["id"] == first["message"]["id"]  # both databases count from 1
        assert second["job_id"] != first["job_id"]
        assert other.queue.get_job_ids() == [second["job_id"]]
        assert services.queue.get_job_ids() == [first["job_id"]]
    finally:
        other.close()
