"""/openapi.json matches the routes the app really has."""

from __future__ import annotations

import re

METHODS = {"get", "post", "patch", "delete", "put"}


def app_routes(app) -> set[tuple[str, str]]:
    routes = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        if path.startswith("/api/") or path in ("/healthz", "/readyz"):
            routes |= {(path, m.lower()) for m in rule.methods if m.lower() in METHODS}
    return routes


def test_every_route_is_documented_and_every_documented_route_exists(app, client):
    document = client.get("/openapi.json").json
    documented = {(path, method) for path, ops in document["paths"].items() for method in ops}
    assert documented == app_routes(app)
    assert document["openapi"].startswith("3.")


def test_a_message_has_exactly_the_fields_its_schema_lists(client, api, run_jobs):
    """Every key message_json returns is in the OpenAPI Message schema, and the reverse."""
    from tests.helpers import new_session_id

    posted = api.send(new_session_id(), "which fields?").json
    run_jobs()
    messages = api.get(f"/api/conversations/{posted['conversation_id']}").json["messages"]
    schema = client.get("/openapi.json").json["components"]["schemas"]["Message"]
    assert {m["role"] for m in messages} == {"user", "assistant"}
    for message in messages:
        assert set(message) == set(schema["properties"])
        assert set(schema["required"]) <= set(message)
