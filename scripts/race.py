"""`arzani race`: race first messages against a running server and check the promise.

N processes x K threads each fire the first message of the same session at the same instant
(a multiprocessing barrier lines all N*K racers up, one round per session, M sessions). Then it
waits for the replies and checks, from the server's own answers:

- conversations: one per session (duplicates = the extra ones);
- misplaced: a reply whose `reply_to` is not a user message of its own conversation, a racer told
  a different conversation than the others of its session, or a session's message found in a
  conversation that is not the session's one;
- missing: an accepted user message with no reply after --reply-timeout (failed ones counted apart).

It prints messages/s (accepted, and accepted and answered: from the first POST to the last reply's
`created_at`) and the latency of the race's winner (`created`) and losers (`waited`), read
from the `Arzani-Session-Resolution` header. Exit status 0 only if nothing was duplicated,
misplaced, missing or refused.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import statistics
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime
from urllib.parse import urlsplit

import click

OK_STATUSES = (200, 202)
BARRIER_TIMEOUT_S = 120.0
"""A racer that cannot line up for this long (another one is stuck) breaks the barrier."""


class Client:
    """One keep-alive connection (one per racing thread)."""

    def __init__(self, url: str, token: str, timeout_s: float = 60.0):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.timeout_s = timeout_s
        self.conn = self._connect()

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict, dict | None]:
        payload = json.dumps(body) if body is not None else None
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=payload, headers=self.headers)
                response = self.conn.getresponse()
                raw = response.read()
                try:
                    data = json.loads(raw) if raw else None
                except ValueError:  # an HTML error page from a proxy, a truncated body...
                    data = {"error": {"code": "not-json", "message": raw[:200].decode("utf-8", "replace")}}
                return response.status, {k.lower(): v for k, v in response.getheaders()}, data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # A keep-alive connection the server closed while idle: reconnect once. (A POST
                # is only re-sent with its client_message_id, so a retry cannot duplicate it.)
                self.conn.close()
                self.conn = self._connect()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.conn.close()


def _racer_process(url, token, session_ids, concurrency, barrier, results, process_index):
    """One OS process: `concurrency` threads, each sending the first message of every session."""
    records: list[dict] = []
    lock = threading.Lock()

    def racer(thread_index: int) -> None:
        client = Client(url, token)
        try:
            for session_id in session_ids:
                barrier.wait(BARRIER_TIMEOUT_S)
                body = {"content": f"race {session_id} p{process_index} t{thread_index}",
                        "client_message_id": f"race-p{process_index}-t{thread_index}"}
                started = time.perf_counter()
                try:
                    status, headers, data = client.call("POST", f"/api/sessions/{session_id}/messages", body)
                except (OSError, http.client.HTTPException) as exc:
                    status, headers, data = 0, {}, {"error": {"code": "connection", "message": str(exc)}}
                latency_ms = (time.perf_counter() - started) * 1000
                record = {"session_id": session_id, "status": status, "latency_ms": latency_ms,
                          "resolution": headers.get("arzani-session-resolution")}
                if status in OK_STATUSES and data:
                    record["conversation_id"] = data["conversation_id"]
                    record["message_id"] = data["message"]["id"]
                else:
                    record["error"] = {"status": status, "body": data}
                with lock:
                    records.append(record)
        finally:
            client.close()

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put(records)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def run_race(url: str, token: str, processes: int, sessions: int, concurrency: int,
             reply_timeout_s: float) -> dict:
    context = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")
    session_ids = [uuid.uuid4().hex for _ in range(sessions)]
    barrier = context.Barrier(processes * concurrency)
    results = context.Queue()
    children = [context.Process(target=_racer_process,
                                args=(url, token, session_ids, concurrency, barrier, results, p))
                for p in range(processes)]
    started, started_at = time.perf_counter(), time.time()
    for child in children:
        child.start()
    records = [r for _ in children for r in results.get(timeout=600)]
    for child in children:
        child.join(30)
    post_wall_s = time.perf_counter() - started
    return _report(url, token, session_ids, records, post_wall_s, reply_timeout_s, started_at=started_at)


def _report(url, token, session_ids, records, post_wall_s, reply_timeout_s, *, started_at: float | None = None) -> dict:
    client = Client(url, token)
    accepted = [r for r in records if r["status"] in OK_STATUSES]
    errors = [r for r in records if r["status"] not in OK_STATUSES]
    by_session: dict[str, set[str]] = defaultdict(set)
    for record in accepted:
        by_session[record["session_id"]].add(record["conversation_id"])
    told_apart = sum(len(ids) - 1 for ids in by_session.values() if len(ids) > 1)

    # The server's own view: every conversation of this run's sessions, all its messages.
    ours = set(session_ids)
    server_conversations, cursor = [], None
    while True:
        path = "/api/conversations?limit=100" + (f"&cursor={cursor}" if cursor else "")
        status, _, page = client.call("GET", path)
        if status != 200:
            raise click.ClickException(f"GET /api/conversations answered {status}: {page}")
        server_conversations += [c for c in page["conversations"] if c["session_id"] in ours]
        cursor = page["next_cursor"]
        if not cursor:
            break

    deadline = time.monotonic() + reply_timeout_s
    while True:
        details = {}
        for conversation in server_conversations:
            _, _, details[conversation["id"]] = client.call("GET", f"/api/conversations/{conversation['id']}")
        pending = sum(1 for d in details.values() for m in d.get("messages", [])
                      if m["role"] == "user" and m["status"] == "pending")
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    client.close()

    per_session = Counter(c["session_id"] for c in server_conversations)
    duplicates = sum(n - 1 for n in per_session.values())
    misplaced = told_apart
    missing = failed = replies = 0
    last_reply_at = None
    found_in: dict[int, dict] = {}
    for conversation in server_conversations:
        messages = details[conversation["id"]].get("messages", [])
        users = {m["id"]: m for m in messages if m["role"] == "user"}
        found_in.update(dict.fromkeys(users, conversation))
        answered = set()
        for message in messages:
            if message["role"] != "assistant":
                continue
            replies += 1
            created = _epoch_s(message.get("created_at"))
            if created is not None:
                last_reply_at = max(last_reply_at or created, created)
            if message["reply_to"] not in users:
                misplaced += 1
            answered.add(message["reply_to"])
        for message_id, message in users.items():
            if message["status"] == "failed":
                failed += 1
            elif message_id not in answered:
                missing += 1
    # an accepted message that is in none of its session's conversations went somewhere else
    for record in accepted:
        home = found_in.get(record["message_id"])
        if home is None or home["session_id"] != record["session_id"] or home["id"] != record["conversation_id"]:
            misplaced += 1

    def latencies(kind: str | None) -> list[float]:
        return sorted(r["latency_ms"] for r in accepted if kind is None or r["resolution"] == kind)

    winners, losers, everyone = latencies("created"), latencies("waited"), latencies(None)
    report = {
        "sessions": len(session_ids),
        "racers_per_session": len(records) // max(1, len(session_ids)),
        "messages_accepted": len(accepted),
        "errors": len(errors),
        "conversations_created": len(server_conversations),
        "conversations_seen": len({r["conversation_id"] for r in accepted}),
        "duplicates": duplicates,
        "misplaced_replies": misplaced,
        "missing_replies": missing,
        "failed_replies": failed,
        "replies": replies,
        "messages_per_s": round(len(accepted) / post_wall_s, 1) if post_wall_s else None,
        # accepted and answered: from the first POST to the last reply attached (the server's clock)
        "answered_per_s": (round(len(accepted) / (last_reply_at - started_at), 1)
                           if started_at and last_reply_at and last_reply_at > started_at and not missing
                           else None),
        "resolutions": dict(Counter(r["resolution"] for r in accepted)),
        "winners_p50_ms": _round(percentile(winners, 50)),
        "winners_p99_ms": _round(percentile(winners, 99)),
        "losers_p50_ms": _round(percentile(losers, 50)),
        "losers_p99_ms": _round(percentile(losers, 99)),
        "all_p50_ms": _round(percentile(everyone, 50)),
        "all_p99_ms": _round(percentile(everyone, 99)),
        "error_samples": [e.get("error") for e in errors[:3]],
    }
    report["ok"] = not (duplicates or misplaced or missing or errors)
    return report


def _epoch_s(iso: str | None) -> float | None:
    """A message's `created_at` (ISO 8601; a naive one is UTC) as seconds since the epoch."""
    if not iso:
        return None
    moment = datetime.fromisoformat(iso)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _round(value: float | None) -> float | None:
    return round(value, 1) if value is not None else None


def _plain(value) -> str:
    """A report value as a person reads it: `created=50 waited=400`, `a, b`, not Python reprs."""
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items()) or "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(_plain(v) for v in value) or "-"
    return str(value)


@click.command("race")
@click.option("--url", default="http://127.0.0.1:5000", show_default=True, help="the running server")
@click.option("--token", envvar="ARZANI_TOKEN", required=True,
              help="bearer token (arzani users create NAME); or ARZANI_TOKEN")
@click.option("-n", "--processes", default=4, show_default=True, help="racing OS processes")
@click.option("-m", "--sessions", default=50, show_default=True, help="sessions, one race each")
@click.option("-k", "--concurrency", default=8, show_default=True, help="racing threads per process")
@click.option("--reply-timeout", default=60.0, show_default=True, help="seconds to wait for the replies")
@click.option("--json", "as_json", is_flag=True, help="print the report as one JSON object")
def race(url: str, token: str, processes: int, sessions: int, concurrency: int, reply_timeout: float,
         as_json: bool) -> None:
    """Race N processes x M sessions x K concurrent first messages; report duplicates,
    misplaced and missing replies, throughput, and the latency of winners and losers."""
    report = run_race(url, token, processes, sessions, concurrency, reply_timeout)
    if as_json:
        click.echo(json.dumps(report))
    else:
        width = max(len(k) for k in report)
        for key, value in report.items():
            if key != "error_samples" or value:
                click.echo(f"{key + ':':<{width + 1}} {_plain(value)}")
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    race()
