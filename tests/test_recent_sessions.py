"""A web process remembers the sessions it resolved lately (sessions.RecentSessions, issue 15), so a
message to one of them asks Redis nothing before its insert. What must still hold: the database
decides where a message goes, Redis down is a 503 with nothing stored, a key Redis lost is back
after the next message, another user is never answered from memory, and under several processes a
session still gets exactly one conversation."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select

from app import create_app, keys
from app.models import Conversation, Message
from app.sessions import RecentSessions
from app.wiring import Wiring
from tests.conftest import Api
from tests.helpers import new_session_id


def _messages(services, conversation_id=None) -> int:
    with services.db.read() as db:
        query = select(func.count()).select_from(Message)
        if conversation_id is not None:
            query = query.where(Message.conversation_id == conversation_id)
        return db.scalar(query)


def _live_conversations(services, session_id: str) -> list[Conversation]:
    with services.db.read() as db:
        return list(db.scalars(select(Conversation).where(Conversation.session_id == session_id,
                                                          Conversation.deleted_at.is_(None))))


@pytest.fixture
def other_process(settings, services, api):
    """A second web process on the same Redis and database: its own wiring, its own memory."""
    wiring = Wiring(settings)
    client = create_app({"TESTING": True}, services=wiring).test_client()
    yield Api(client, api.token, api.user_id), wiring
    wiring.close()


# -- the memory itself (no Redis) --------------------------------------------------------------

def test_the_memory_is_bounded_least_recently_used_first():
    recent = RecentSessions(size=2, max_age_s=60)
    recent.put("s1", 1, "c1")
    recent.put("s2", 1, "c2")
    assert recent.get("s1", 1) == "c1"  # s1 is now the most recently used
    recent.put("s3", 1, "c3")
    assert (recent.get("s1", 1), recent.get("s2", 1), recent.get("s3", 1)) == ("c1", None, "c3")
    assert len(recent) == 2


def test_an_entry_is_used_only_for_its_max_age_and_only_for_its_user(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("app.sessions.time.monotonic", lambda: clock[0])
    recent = RecentSessions(size=10, max_age_s=60)
    recent.put("s1", 1, "c1")
    assert recent.get("s1", 2) is None
    clock[0] += 59
    assert recent.get("s1", 1) == "c1"
    clock[0] += 2  # read is not renewal: the age counts from when Redis last named it
    assert recent.get("s1", 1) is None
    recent.put("s1", 1, "c1")
    recent.put("s1", 2, "c9")  # Redis named another owner since: the session is theirs now
    assert recent.get("s1", 1) is None and recent.get("s1", 2) == "c9"
    recent.drop("s1")
    assert recent.get("s1", 1) is None and recent.get("s1", 2) is None


def test_a_memory_of_size_zero_remembers_nothing():
    recent = RecentSessions(size=0)
    recent.put("s1", 1, "c1")
    assert recent.get("s1", 1) is None


# -- one process --------------------------------------------------------------------------------

def test_redis_down_after_the_session_is_known_is_503_and_nothing_is_stored(api, services, redis_server):
    session_id = new_session_id()
    first = api.send(session_id, "before the outage").json
    conversation_id = first["conversation_id"]
    redis_server.stop()
    try:
        refused = api.send(session_id, "during the outage")
        assert refused.status_code == 503
        assert refused.json["error"]["code"] == "unavailable"
        again = api.send(session_id, "during the outage, again")
        assert again.status_code == 503
    finally:
        redis_server.start()
    assert _messages(services) == 1  # the refused ones were withdrawn: only the first is there
    with services.db.read() as db:
        assert db.get(Conversation, conversation_id).message_count == 1
    page = api.get(f"/api/conversations/{conversation_id}").json
    assert [m["content"] for m in page["messages"]] == ["before the outage"]
    # This Redis came back empty: the next message is stored, and the key is back after it.
    after = api.send(session_id, "after the outage")
    assert after.status_code == 202
    assert after.json["conversation_id"] == conversation_id
    assert after.headers["Arzani-Session-Resolution"] == "recovered"
    assert services.redis.hget(keys.session_key(session_id), "cid") == conversation_id
    assert after.json["job_id"] in services.queue.job_ids


def test_a_retry_that_meets_the_message_being_withdrawn_is_503_too(api, services, redis_server, monkeypatch):
    """The same client_message_id twice at once while Redis is down: the second finds the first's
    row (committed, not yet withdrawn) and would answer 200 "already stored" for a message that is
    about to be deleted. It answers 503 as well; nothing is kept, and a later retry stores it once."""
    from app import conversations

    session_id = new_session_id()
    assert api.send(session_id, "first").status_code == 202
    real_withdraw, twin = conversations._withdraw, {}

    def withdraw_after_the_twin(services_, message):
        # exactly between the first request's failed enqueue and its delete
        twin["response"] = api.send(session_id, "once", client_message_id="cm-1")
        real_withdraw(services_, message)

    monkeypatch.setattr(conversations, "_withdraw", withdraw_after_the_twin)
    redis_server.stop()
    try:
        first = api.send(session_id, "once", client_message_id="cm-1")
    finally:
        redis_server.start()
    assert first.status_code == 503
    assert twin["response"].status_code == 503
    assert _messages(services) == 1
    monkeypatch.undo()
    stored = api.send(session_id, "once", client_message_id="cm-1")
    assert stored.status_code == 202
    assert api.send(session_id, "once", client_message_id="cm-1").json["message"]["id"] == stored.json["message"]["id"]
    assert _messages(services) == 2


def test_a_retry_of_a_stored_pending_message_while_redis_is_down_is_503_then_200(api, services, redis_server):
    """The message is stored and left to the sweeper (its enqueue refused); its retry during an
    outage cannot re-enqueue and says so (503), and after it answers the first message (200)."""
    session_id = new_session_id()
    assert api.send(session_id, "first").status_code == 202
    services.rq_redis.set(services.queue.key, "not a list")  # Redis refuses RQ's push (WRONGTYPE)
    stored = api.send(session_id, "kept", client_message_id="cm-2")
    assert stored.status_code == 202
    services.rq_redis.delete(services.queue.key)
    redis_server.stop()
    try:
        assert api.send(session_id, "kept", client_message_id="cm-2").status_code == 503
    finally:
        redis_server.start()
    again = api.send(session_id, "kept", client_message_id="cm-2")
    assert again.status_code == 200
    assert again.json["message"]["id"] == stored.json["message"]["id"]
    assert _messages(services) == 2


def test_a_process_killed_before_its_withdrawal_leaves_the_message_to_the_sweeper(api, services, redis_server,
                                                                                  monkeypatch, run_jobs):
    """Killed between the failed enqueue and the delete (here: the delete never runs, as with
    SIGKILL): the message stays `pending`, nobody answered the client, and the sweeper enqueues
    it once Redis is back. Nothing is lost; nothing is answered twice."""
    from app import conversations
    from workers.maintenance import sweep_pending

    class Killed(BaseException):
        """Not an Exception: no handler of ours may catch it, as none runs after SIGKILL."""

    session_id = new_session_id()
    assert api.send(session_id, "first").status_code == 202
    run_jobs()  # answered: the only pending message after the outage is the one in flight

    def killed(services_, message):
        raise Killed()

    monkeypatch.setattr(conversations, "_withdraw", killed)
    redis_server.stop()
    try:
        with pytest.raises(Killed):
            api.send(session_id, "in flight when the process died")
    finally:
        redis_server.start()
    with services.db.read() as db:
        [kept] = db.scalars(select(Message).where(Message.content == "in flight when the process died"))
    assert kept.status == "pending"
    assert sweep_pending(services, older_than_s=0) == [kept.id]
    assert sweep_pending(services, older_than_s=0) == []  # its job is queued now: not swept again


def test_a_redis_restarted_empty_gets_the_key_back_with_the_next_message(api, services):
    session_id = new_session_id()
    first = api.send(session_id, "one").json
    services.redis.flushall()
    services.redis.script_flush()
    second = api.send(session_id, "two")
    assert second.status_code == 202
    assert second.json["conversation_id"] == first["conversation_id"]
    assert second.headers["Arzani-Session-Resolution"] == "recovered"
    tracked = services.redis.hgetall(keys.session_key(session_id))
    assert tracked["cid"] == first["conversation_id"] and tracked["uid"] == str(api.user_id)
    assert services.redis.pttl(keys.session_key(session_id)) > 0
    third = api.send(session_id, "three")
    assert third.headers["Arzani-Session-Resolution"] == "tracked"
    assert len(_live_conversations(services, session_id)) == 1
    assert _messages(services, first["conversation_id"]) == 3


def test_a_redis_that_lost_only_its_scripts_still_renews_a_recent_session_once(api, services):
    """A Redis restarted with its data but without our scripts (SCRIPT FLUSH here) answers the
    renewal and the announcements NOSCRIPT inside RQ's transaction: the message is stored and
    queued, the events appended once each (the announcements' script sent again on its own),
    and the renewal's NOSCRIPT taken as a hash to look at again: the session is resolved through
    Redis, which renews the hash, finds it naming this conversation, and the process remembers
    the session again."""
    session_id = new_session_id()
    api.send(session_id, "one")
    services.redis.hset(keys.session_key(session_id), "seen", 1)
    services.redis.pexpire(keys.session_key(session_id), 5000)
    services.redis.script_flush()
    second = api.send(session_id, "two")
    assert second.status_code == 202
    assert second.headers["Arzani-Session-Resolution"] == "tracked"
    assert second.json["job_id"] in services.queue.job_ids
    assert int(services.redis.hget(keys.session_key(session_id), "seen")) > 1
    assert services.redis.pttl(keys.session_key(session_id)) > 5000
    kinds = [fields["type"] for _, fields in services.redis.xrange(keys.session_log(session_id))]
    assert kinds.count("message") == 2
    assert services.sessions.recent.get(session_id, api.user_id) == second.json["conversation_id"]


def test_a_key_that_expired_is_not_recreated_half_by_the_renewal(api, services):
    """The renewal only renews: a hash gone is rebuilt under the lock from the database, whole,
    never as a stray `seen` field without its conversation."""
    session_id = new_session_id()
    first = api.send(session_id, "one").json
    services.redis.delete(keys.session_key(session_id))
    second = api.send(session_id, "two")
    assert second.json["conversation_id"] == first["conversation_id"]
    tracked = services.redis.hgetall(keys.session_key(session_id))
    assert tracked["cid"] == first["conversation_id"] and "fence" in tracked


def test_another_user_is_never_answered_from_the_owners_memory(make_api, services):
    alice, bob = make_api("alice"), make_api("bob")
    session_id = new_session_id()
    assert alice.send(session_id, "mine").status_code == 202
    refused = bob.send(session_id, "let me in")
    assert refused.status_code == 404
    assert _messages(services) == 1


def test_a_hash_that_names_another_user_after_the_insert_is_no_500(make_api, services):
    """Redis lost the key and another user claimed the id (a reservation) while this process still
    knew the session: the database took the owner's message in the owner's conversation, so it is
    answered 202; the hash is left to its claimant, and the next message asks Redis again."""
    alice, bob = make_api("alice"), make_api("bob")
    session_id = new_session_id()
    first = alice.send(session_id, "mine").json
    services.redis.delete(keys.session_key(session_id))
    services.redis.hset(keys.session_key(session_id), mapping={"uid": bob.user_id, "seen": 1})
    second = alice.send(session_id, "still mine")
    assert second.status_code == 202
    assert second.json["conversation_id"] == first["conversation_id"]
    assert services.redis.hget(keys.session_key(session_id), "uid") == str(bob.user_id)
    assert services.sessions.recent.get(session_id, alice.user_id) is None


def test_a_conversation_deleted_in_another_process_starts_one_new_one(api, services, other_process):
    other, _wiring = other_process
    session_id = new_session_id()
    first = api.send(session_id, "one").json
    assert other.send(session_id, "two").json["conversation_id"] == first["conversation_id"]
    assert other.delete(f"/api/conversations/{first['conversation_id']}").status_code == 204
    # This process still remembers the deleted conversation: the insert refuses it, and the
    # session resolves through Redis and its lock to one new conversation.
    third = api.send(session_id, "three")
    assert third.status_code == 202
    assert third.json["conversation_id"] != first["conversation_id"]
    assert third.headers["Arzani-Session-Resolution"] == "created"
    fourth = other.send(session_id, "four").json
    assert fourth["conversation_id"] == third.json["conversation_id"]
    [live] = _live_conversations(services, session_id)
    assert live.id == third.json["conversation_id"]
    assert _messages(services, live.id) == 2


def test_a_recent_session_with_its_queue_on_another_redis_is_renewed_in_one_round_trip(settings, monkeypatch):
    """ARZANI_QUEUE_REDIS_URL: nothing rides RQ's transaction; the renewal and the announcements
    go together on our Redis, after the insert."""
    from dataclasses import replace

    from app.auth import create_api_user
    from tests.test_api_flow import _count_round_trips

    wiring = Wiring(replace(settings, queue_redis_url=settings.redis_url))
    wiring.db.create_all()
    try:
        _user, token = create_api_user(wiring, "q")
        client = create_app({"TESTING": True}, services=wiring).test_client()
        session_id = new_session_id()
        path, headers = f"/api/sessions/{session_id}/messages", {"Authorization": f"Bearer {token}"}
        assert client.post(path, json={"content": "one"}, headers=headers).status_code == 202
        wiring.redis.pexpire(keys.session_key(session_id), 5000)
        sent = _count_round_trips(monkeypatch)
        posted = client.post(path, json={"content": "two"}, headers=headers)
        assert posted.status_code == 202, posted.json
        assert len(sent["ours"]) == 1 and sent["ours"][0].count(b"EVALSHA") == 2
        assert wiring.redis.pttl(keys.session_key(session_id)) > 5000
    finally:
        wiring.close()


# -- several processes ---------------------------------------------------------------------------

@pytest.mark.slow
def test_processes_that_remember_a_deleted_conversation_all_move_to_one_new_one(api, services, make_stack):
    """gunicorn with three processes; each message on its own connection, so the processes all
    meet the session. Its conversation is deleted, then 24 messages race from 8 threads: every
    process that remembers the old conversation is refused by the insert, and all of them land
    in one new conversation, each message once."""
    stack = make_stack(services.settings.database_url)
    stack.start_web(workers=3)
    session_id = new_session_id()
    path = f"/api/sessions/{session_id}/messages"

    def post(content: str) -> dict:
        status, body = stack.request("POST", path, {"content": content}, token=api.token)
        assert status == 202, (status, body)
        return body

    first = post("warm 0")
    with ThreadPoolExecutor(8) as pool:
        warm = list(pool.map(post, [f"warm {n}" for n in range(1, 24)]))
    assert {body["conversation_id"] for body in warm} == {first["conversation_id"]}
    status, _ = stack.request("DELETE", f"/api/conversations/{first['conversation_id']}", token=api.token)
    assert status == 204

    start = threading.Barrier(8)

    def race(n: int) -> dict:
        if n < 8:
            start.wait(10)
        return post(f"after {n}")

    with ThreadPoolExecutor(8) as pool:
        after = list(pool.map(race, range(24)))
    new_ids = {body["conversation_id"] for body in after}
    assert len(new_ids) == 1 and first["conversation_id"] not in new_ids
    [live] = _live_conversations(services, session_id)
    assert live.id in new_ids
    with services.db.read() as db:
        contents = list(db.scalars(select(Message.content).where(Message.conversation_id == live.id)))
    assert sorted(contents) == sorted(f"after {n}" for n in range(24))
    assert services.redis.hget(keys.session_key(session_id), "cid") == live.id
