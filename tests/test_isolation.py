"""Two users, every route: another user's session, conversation or message answers exactly
like a missing one, and no identity at all is 401, on every route of the OpenAPI document."""

from __future__ import annotations

import uuid

import pytest

from app.openapi import PATHS
from tests.helpers import new_session_id

BODIES = {"post": {"content": "hello"}, "patch": {"title": "mine now"}}


def routes():
    for path, operations in PATHS.items():
        if path.startswith("/api/"):
            for method in operations:
                yield path, method


def call(client, method, path, headers):
    kwargs = {"headers": headers}
    if method in BODIES:
        kwargs["json"] = BODIES[method]
    return getattr(client, method)(path, **kwargs)


@pytest.mark.parametrize(("path", "method"), list(routes()))
def test_every_route_wants_an_identity(client, path, method):
    concrete = path.format(session_id=new_session_id(), conversation_id=str(uuid.uuid4()), message_id=1)
    response = call(client, method, concrete, {})
    assert response.status_code == 401
    assert response.json["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(("path", "method"), [r for r in routes() if "{" in r[0]])
def test_another_users_things_are_indistinguishable_from_missing_ones(make_api, run_jobs, path, method):
    alice, bob = make_api("alice"), make_api("bob")
    session_id = new_session_id()
    posted = alice.send(session_id, "alice's secret").json
    run_jobs()
    theirs = path.format(session_id=session_id, conversation_id=posted["conversation_id"],
                         message_id=posted["message"]["id"])
    missing = path.format(session_id=new_session_id(), conversation_id=str(uuid.uuid4()), message_id=10**6)

    foreign = call(bob.client, method, theirs, bob.headers)
    absent = call(bob.client, method, missing, bob.headers)
    if method == "post" and path.endswith("/messages"):
        assert absent.status_code == 202  # posting to a new session id is how a chat starts...
        assert foreign.status_code == 404  # ...but a session of someone else's is not for taking
    elif path.endswith("/events"):
        assert absent.status_code == 200  # listening before the first message claims a new id...
        absent.close()
        assert foreign.status_code == 404  # ...but not someone else's
    else:
        assert (foreign.status_code, foreign.json) == (absent.status_code, absent.json)
        assert foreign.status_code == 404
    # and nothing of alice's changed
    conversation = alice.get(f"/api/conversations/{posted['conversation_id']}").json
    assert conversation["title"] == "alice's secret"
    assert [m["role"] for m in conversation["messages"]] == ["user", "assistant"]
