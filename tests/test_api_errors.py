"""Bad input gets the JSON error shape with a fitting status, and loses nothing stored."""

from __future__ import annotations

import uuid

import pytest

from tests.helpers import new_session_id


def assert_error(response, status: int, code: str | None = None):
    assert response.status_code == status, response.data
    assert response.is_json, response.data
    error = response.json["error"]
    assert set(error) == {"code", "message"} and error["message"]
    if code:
        assert error["code"] == code


def test_no_identity_is_401(client):
    assert_error(client.get("/api/conversations"), 401, "unauthorized")
    assert_error(client.get("/api/conversations", headers={"Authorization": "Bearer nope"}), 401)
    assert_error(client.get("/api/conversations", headers={"Authorization": "Basic abc"}), 401)


@pytest.mark.parametrize("bad", ["short", "has space in it", "a" * 129, "semi;colon", "br{ace}s12"])
def test_bad_session_ids_are_400(api, bad):
    assert_error(api.send(bad, "hi"), 400, "invalid_session_id")


def test_malformed_and_misshapen_bodies(api):
    session_id = new_session_id()
    path = f"/api/sessions/{session_id}/messages"
    assert_error(api.client.post(path, data="{not json", headers={**api.headers, "Content-Type": "application/json"}),
                 400)
    assert_error(api.client.post(path, data="content=hi", headers=api.headers), 400)
    assert_error(api.post(path, json=["content"]), 422, "invalid_body")
    assert_error(api.post(path, json={}), 422)
    assert_error(api.post(path, json={"content": 5}), 422)
    assert_error(api.post(path, json={"content": "   "}), 422)
    assert_error(api.post(path, json={"content": "hi", "extra": 1}), 422)
    assert_error(api.post(path, json={"content": "a\x00b"}), 422)
    assert_error(api.post(path, json={"content": "hi", "client_message_id": 7}), 422)
    assert_error(api.client.post(path, data='{"content": "\\ud800"}',
                                 headers={**api.headers, "Content-Type": "application/json"}), 422)
    # nothing was stored by any of those
    assert api.get("/api/conversations").json["conversations"] == []


def test_content_over_32_kib_is_413_and_at_the_limit_is_fine(api):
    session_id = new_session_id()
    assert_error(api.send(session_id, "x" * (32 * 1024 + 1)), 413, "content_too_large")
    assert api.send(session_id, "é" * (16 * 1024)).status_code == 202  # 32 KiB of UTF-8
    assert_error(api.client.post(f"/api/sessions/{session_id}/messages", data="x" * (300 * 1024),
                                 headers={**api.headers, "Content-Type": "application/json"}), 413)


def test_unicode_is_stored_and_returned_intact(api):
    text = "héllo 👋🏽 مرحبا עברית \u202e reversed 中文 \U0001f600 tab\there"
    posted = api.send(new_session_id(), text).json
    got = api.get(f"/api/conversations/{posted['conversation_id']}").json
    assert got["messages"][0]["content"] == text


def test_idempotent_retry_returns_the_first_message_and_no_second_job(api, services):
    session_id = new_session_id()
    first = api.send(session_id, "once", client_message_id="c-1")
    again = api.send(session_id, "once", client_message_id="c-1")
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json == first.json
    assert len(services.queue.get_job_ids()) == 1
    conversation = api.get(f"/api/conversations/{first.json['conversation_id']}").json
    assert len(conversation["messages"]) == 1


def test_a_retry_after_the_chat_was_deleted_answers_the_first_message_and_makes_nothing(api, services):
    """client_message_id is idempotent per session (issue 11, hole 7), not per conversation."""
    session_id = new_session_id()
    first = api.send(session_id, "only once", client_message_id="c-deleted")
    assert api.delete(f"/api/conversations/{first.json['conversation_id']}").status_code == 204
    jobs_before = services.queue.get_job_ids()
    again = api.send(session_id, "only once", client_message_id="c-deleted")
    assert again.status_code == 200 and again.json["message"] == first.json["message"]
    assert again.headers["Arzani-Session-Resolution"] == "replayed"
    assert services.queue.get_job_ids() == jobs_before
    assert api.get("/api/conversations").json["conversations"] == []  # no new conversation either
    assert api.get(f"/api/sessions/{session_id}").json["conversation_id"] is None


def test_the_same_client_message_id_with_other_content_is_a_409(api, services):
    session_id = new_session_id()
    first = api.send(session_id, "what I meant", client_message_id="c-x")
    other = api.send(session_id, "something else", client_message_id="c-x")
    assert_error(other, 409)
    assert other.json["error"]["code"] == "idempotency_conflict"
    messages = api.get(f"/api/conversations/{first.json['conversation_id']}").json["messages"]
    assert [m["content"] for m in messages] == ["what I meant"]
    # another session may use the same id for anything
    assert api.send(new_session_id(), "something else", client_message_id="c-x").status_code == 202


def test_other_users_things_are_404_like_missing_ones(make_api):
    alice, bob = make_api("alice"), make_api("bob")
    session_id = new_session_id()
    posted = alice.send(session_id, "mine").json
    missing_conversation = bob.get(f"/api/conversations/{uuid.uuid4()}")
    foreign_conversation = bob.get(f"/api/conversations/{posted['conversation_id']}")
    assert_error(missing_conversation, 404)
    assert foreign_conversation.json == missing_conversation.json
    assert_error(bob.get(f"/api/sessions/{session_id}"), 404)
    assert_error(bob.send(session_id, "let me in"), 404)  # no takeover by posting to it
    assert_error(bob.patch(f"/api/conversations/{posted['conversation_id']}", json={"title": "x"}), 404)
    assert_error(bob.delete(f"/api/conversations/{posted['conversation_id']}"), 404)
    assert len(alice.get(f"/api/conversations/{posted['conversation_id']}").json["messages"]) == 1
    reserved = bob.post("/api/sessions").json["session_id"]
    assert_error(alice.send(reserved, "taking bob's fresh session"), 404)


def test_pagination_and_its_bounds(api):
    ids = [api.send(new_session_id(), f"chat {n}").json["conversation_id"] for n in range(5)]
    first = api.get("/api/conversations?limit=2").json
    second = api.get(f"/api/conversations?limit=2&cursor={first['next_cursor']}").json
    third = api.get(f"/api/conversations?limit=2&cursor={second['next_cursor']}").json
    seen = [c["id"] for page in (first, second, third) for c in page["conversations"]]
    assert seen == list(reversed(ids))
    assert third["next_cursor"] is None
    for bad in ("limit=0", "limit=101", "limit=abc", "limit=-1", "cursor=garbage!!", "cursor=eyJ4Ijox"):
        assert_error(api.get(f"/api/conversations?{bad}"), 400)


def test_rename_and_delete(api, services):
    session_id = new_session_id()
    posted = api.send(session_id, "first words become the title").json
    cid = posted["conversation_id"]
    assert api.get(f"/api/conversations/{cid}").json["title"] == "first words become the title"
    renamed = api.patch(f"/api/conversations/{cid}", json={"title": "Renamed"})
    assert renamed.status_code == 200 and renamed.json["title"] == "Renamed"
    assert_error(api.patch(f"/api/conversations/{cid}", json={"title": ""}), 422)
    assert api.delete(f"/api/conversations/{cid}").status_code == 204
    assert_error(api.get(f"/api/conversations/{cid}"), 404)
    assert_error(api.delete(f"/api/conversations/{cid}"), 404)


def test_wrong_method_and_unknown_route_are_json(api):
    assert_error(api.client.put("/api/conversations", headers=api.headers), 405)
    assert_error(api.get("/api/nothing-here"), 404)


def test_rate_limit_is_per_user_shared_and_says_when_to_retry(services, settings, make_api):
    import dataclasses

    from app import create_app
    from app.wiring import Wiring

    limited = Wiring(dataclasses.replace(settings, rate_limit="3/minute"))
    # Two app instances (two "processes") share the count through Redis.
    first, second = (create_app({"TESTING": True}, services=limited).test_client() for _ in range(2))
    alice, bob = make_api("alice"), make_api("bob")
    for client in (first, second, first):
        assert client.get("/api/conversations", headers=alice.headers).status_code == 200
    refused = second.get("/api/conversations", headers=alice.headers)
    assert_error(refused, 429, "rate_limited")
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert first.get("/api/conversations", headers=bob.headers).status_code == 200  # per user
    assert first.get("/healthz").status_code == 200  # probes are not limited
    limited.close()
