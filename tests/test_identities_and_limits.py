"""Issue 13, item 2: identities cost nothing until they write, and what they can cost is bounded.

A visit to the page (`GET /`, `HEAD /`) stores nothing: the cookie's identity gets its row on its
first write. Every request to the API and the page counts against its client address
(ARZANI_RATE_LIMIT_IP), before authentication, so 401s and fresh identities count. A user holds at
most ARZANI_MAX_RESERVATIONS reserved and unused session ids."""

from __future__ import annotations

import dataclasses

import pytest
from flask.sessions import SecureCookieSessionInterface
from sqlalchemy import func, select

from app import create_app
from app.auth import COOKIE_USER_KEY, create_web_user
from app.config import Settings
from app.errors import ConfigurationError
from app.models import User
from app.wiring import Wiring
from tests.helpers import new_session_id


def user_rows(services) -> int:
    with services.db.read() as db:
        return db.scalar(select(func.count()).select_from(User))


@pytest.fixture
def make_app(settings):
    """An app on the test's Redis and database with some settings changed."""
    made = []

    def _make(**changes):
        wiring = Wiring(dataclasses.replace(settings, **changes))
        wiring.db.create_all()
        made.append(wiring)
        return create_app({"TESTING": True}, services=wiring), wiring

    yield _make
    for wiring in made:
        wiring.close()


# -- lazy identities -------------------------------------------------------------------------

def test_visits_store_nothing_until_the_first_write(app, client, services):
    before = user_rows(services)
    for _ in range(20):
        assert client.head("/").status_code == 200
        assert client.get("/").status_code == 200
    fresh = [app.test_client() for _ in range(20)]
    for browser in fresh:
        assert browser.get("/").status_code == 200
    assert user_rows(services) == before  # 40 visits, 21 identities: no row

    # Reads as the identity find nothing, and store nothing either.
    listing = client.get("/api/conversations")
    assert listing.status_code == 200 and listing.json == {"conversations": [], "next_cursor": None}
    assert client.get(f"/api/sessions/{new_session_id()}").status_code == 404
    events = client.get("/api/events")
    assert events.status_code == 200 and events.mimetype == "text/event-stream"
    assert events.get_data(as_text=True) == 'retry: 3000\n\nid: 0-0\nevent: ready\ndata: {"position": "0-0"}\n\n'
    assert user_rows(services) == before

    # The first write makes the row; the identity then keeps it.
    created = client.post("/api/sessions")
    assert created.status_code == 201
    assert user_rows(services) == before + 1
    session_id = created.json["session_id"]
    assert client.get(f"/api/sessions/{session_id}").status_code == 200
    assert client.post(f"/api/sessions/{session_id}/messages", json={"content": "hi"}).status_code == 202
    assert client.get("/").status_code == 200
    assert len(client.get("/api/conversations").json["conversations"]) == 1
    assert user_rows(services) == before + 1
    with services.db.read() as db:
        assert db.scalars(select(User.kind).order_by(User.id.desc())).first() == "web"
    # ...and another browser sees none of it
    other = fresh[0]
    assert other.get("/api/conversations").json["conversations"] == []
    assert other.get(f"/api/sessions/{session_id}").status_code == 404


def test_listening_to_a_session_is_a_write_that_makes_the_row(client, services):
    client.get("/")
    before = user_rows(services)
    session_id = new_session_id()
    with client.get(f"/api/sessions/{session_id}/events", buffered=False) as stream:
        assert stream.status_code == 200
    assert user_rows(services) == before + 1
    assert client.get(f"/api/sessions/{session_id}").status_code == 200  # reserved for the identity


def test_a_cross_site_first_write_makes_no_row(client, services):
    client.get("/")
    before = user_rows(services)
    refused = client.post("/api/sessions", headers={"Sec-Fetch-Site": "cross-site"})
    assert refused.status_code == 403
    assert user_rows(services) == before


def test_a_cookie_from_before_naming_its_row_keeps_its_chats(app, services):
    """Browsers that got their cookie before issue 13 carry their row's id: still them."""
    user = create_web_user(services)
    signer = SecureCookieSessionInterface().get_signing_serializer(app)
    browser = app.test_client()
    browser.set_cookie(app.config["SESSION_COOKIE_NAME"], signer.dumps({COOKIE_USER_KEY: user.id}))
    posted = browser.post(f"/api/sessions/{new_session_id()}/messages", json={"content": "old cookie"})
    assert posted.status_code == 202
    assert browser.get("/").status_code == 200  # the page keeps the old cookie
    assert len(browser.get("/api/conversations").json["conversations"]) == 1


def test_two_first_writes_at_once_make_one_row(services):
    identity = "x" * 24
    first, second = create_web_user(services, identity), create_web_user(services, identity)
    assert first.id == second.id


def test_a_browser_identity_is_no_bearer_token(client, app, services):
    client.get("/")
    client.post("/api/sessions")
    signer = SecureCookieSessionInterface().get_signing_serializer(app)
    cookie = client.get_cookie(app.config["SESSION_COOKIE_NAME"])
    identity = signer.loads(cookie.value)[COOKIE_USER_KEY]
    stranger = app.test_client()
    for token in (identity, "web:" + identity):
        answer = stranger.get("/api/conversations", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 401


# -- per-address limit -----------------------------------------------------------------------

def test_the_address_limit_counts_the_page_fresh_identities_and_401s(make_app):
    app, _ = make_app(rate_limit_ip="6/minute")
    from_a = {"REMOTE_ADDR": "192.0.2.1"}
    answers = []
    for _ in range(3):
        browser = app.test_client()  # a fresh identity each time
        answers.append(browser.get("/", environ_base=from_a).status_code)
        answers.append(browser.post("/api/sessions", environ_base=from_a).status_code)
    nobody = app.test_client()
    refused = nobody.get("/api/conversations", headers={"Authorization": "Bearer guess"}, environ_base=from_a)
    assert answers == [200, 201] * 3
    assert refused.status_code == 429 and refused.json["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert app.test_client().get("/", environ_base=from_a).status_code == 429  # the page too
    # guessing tokens: 401s count as well
    app_b, _ = make_app(rate_limit_ip="3/minute")
    from_b = {"REMOTE_ADDR": "192.0.2.2"}
    statuses = [app_b.test_client().get("/api/conversations", headers={"Authorization": f"Bearer guess{n}"},
                                        environ_base=from_b).status_code for n in range(4)]
    assert statuses == [401, 401, 401, 429]
    # another address has its own count; probes are not limited
    assert app.test_client().get("/", environ_base={"REMOTE_ADDR": "192.0.2.9"}).status_code == 200
    assert app.test_client().get("/healthz", environ_base=from_a).status_code == 200


def test_x_forwarded_for_is_trusted_only_from_configured_proxies(make_app):
    untrusting, _ = make_app(rate_limit_ip="2/minute")
    proxy = {"REMOTE_ADDR": "10.0.0.1"}
    spoofed = [untrusting.test_client().get("/", environ_base=proxy, headers={"X-Forwarded-For": f"198.51.100.{n}"})
               .status_code for n in range(3)]
    assert spoofed == [200, 200, 429]  # a header any client can write changes nothing

    behind_proxy, _ = make_app(rate_limit_ip="2/minute", trusted_proxies=1)
    clients = [behind_proxy.test_client().get("/", environ_base={"REMOTE_ADDR": "10.0.0.2"},
                                              headers={"X-Forwarded-For": f"198.51.100.{n}"}).status_code
               for n in range(3)]
    assert clients == [200, 200, 200]  # three clients behind our one proxy
    same = [behind_proxy.test_client().get("/", environ_base={"REMOTE_ADDR": "10.0.0.2"},
                                           headers={"X-Forwarded-For": "203.0.113.7"}).status_code
            for _ in range(3)]
    assert same == [200, 200, 429]


def test_the_user_limit_of_an_identity_with_no_row_is_its_own(make_app):
    app, _ = make_app(rate_limit="2/minute")
    first, second = app.test_client(), app.test_client()
    first.get("/")
    second.get("/")
    assert [first.get("/api/conversations").status_code for _ in range(3)] == [200, 200, 429]
    assert second.get("/api/conversations").status_code == 200  # not one shared anonymous bucket


# -- reservations ----------------------------------------------------------------------------

def test_reservations_are_capped_per_user_and_free_again_once_used(make_app, services):
    from app.auth import create_api_user

    app, _ = make_app(max_reservations=3)
    client = app.test_client()
    _, token = create_api_user(services, "hoarder")
    _, other_token = create_api_user(services, "other")
    auth = {"Authorization": f"Bearer {token}"}
    reserved = [client.post("/api/sessions", headers=auth) for _ in range(3)]
    assert [r.status_code for r in reserved] == [201, 201, 201]
    refused = client.post("/api/sessions", headers=auth)
    assert refused.status_code == 429 and refused.json["error"]["code"] == "too_many_sessions"
    # listening before the first message reserves too
    assert client.get(f"/api/sessions/{new_session_id()}/events", headers=auth).status_code == 429
    # per user
    assert client.post("/api/sessions", headers={"Authorization": f"Bearer {other_token}"}).status_code == 201
    # a reservation that got its conversation no longer counts
    session_id = reserved[0].json["session_id"]
    assert client.post(f"/api/sessions/{session_id}/messages", json={"content": "used"},
                       headers=auth).status_code == 202
    assert client.post("/api/sessions", headers=auth).status_code == 201
    assert client.post("/api/sessions", headers=auth).status_code == 429


def test_reservations_by_many_clients_stay_under_the_cap(make_app, services):
    """The 2,000 reservations of the issue: one user gets at most the cap, Redis keeps that many."""
    from app.auth import create_api_user
    from app.keys import user_reservations

    app, wiring = make_app(max_reservations=10)
    user, token = create_api_user(services, "flood")
    client = app.test_client()
    statuses = [client.post("/api/sessions", headers={"Authorization": f"Bearer {token}"}).status_code
                for _ in range(50)]
    assert statuses.count(201) == 10 and statuses.count(429) == 40
    assert wiring.redis.zcard(user_reservations(user.id)) == 10
    assert 0 < wiring.redis.pttl(user_reservations(user.id)) <= wiring.settings.session_ttl_s * 1000
    assert len(list(wiring.redis.scan_iter("arzani:session:*"))) == 10


# -- configuration ---------------------------------------------------------------------------

def test_the_new_settings_default_and_validate():
    development = Settings.from_env({})
    assert development.rate_limit_ip is None and development.trusted_proxies == 0
    assert development.max_reservations == 100
    production = Settings.from_env({"ARZANI_ENV": "production", "ARZANI_SECRET_KEY": "k" * 32})
    assert production.rate_limit_ip == "600/minute"
    assert Settings.from_env({"ARZANI_RATE_LIMIT_IP": "off", "ARZANI_ENV": "production",
                              "ARZANI_SECRET_KEY": "k" * 32}).rate_limit_ip is None
    for name, value, says in (("ARZANI_RATE_LIMIT_IP", "lots", "ARZANI_RATE_LIMIT_IP must look like"),
                              ("ARZANI_TRUSTED_PROXIES", "-1", "ARZANI_TRUSTED_PROXIES must be at least 0"),
                              ("ARZANI_MAX_RESERVATIONS", "0", "ARZANI_MAX_RESERVATIONS must be at least 1")):
        with pytest.raises(ConfigurationError) as error:
            Settings.from_env({name: value})
        assert says in error.value.message
