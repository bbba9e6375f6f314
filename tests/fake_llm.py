"""A small OpenAI-compatible chat completions server on loopback, for tests (no network).

It can hold requests until the test releases them (`hold()`), or until `gather` requests are in
flight at once, so a test can kill a worker mid-request or make two runs overlap for certain.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeLLM:
    GATHER_TIMEOUT_S = 60.0

    def __init__(self):
        self.requests: list[dict] = []
        self.arrived = threading.Condition()
        self._release = threading.Event()
        self._release.set()
        self._gathered = True
        self.gather_timeouts = 0  # requests that waited GATHER_TIMEOUT_S for the others in vain
        self.fail_next = 0  # answer this many requests with HTTP 500
        self.token_delay_s = 0.0  # pause between streamed words (to watch a reply being written)
        self.pause_after: int | None = None  # stream this many words of each reply, then wait for resume()
        self.numbered = False  # end each reply with " (#N)", N its request's number: two answers differ
        self.pauses = 0  # streams that reached the pause
        self.resumes = 0
        self._in_flight = 0
        self._gather = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def start(self) -> FakeLLM:
        self.thread.start()
        return self

    def close(self) -> None:
        self._release.set()
        self.gather = 0
        self.server.shutdown()
        self.server.server_close()

    @property
    def gather(self) -> int:
        """When > 0: answer nobody until this many requests are in flight at once (then everybody)."""
        return self._gather

    @gather.setter
    def gather(self, count: int) -> None:
        with self.arrived:
            self._gather = count
            self._gathered = count <= self._in_flight
            self.arrived.notify_all()

    def hold(self) -> None:
        self._release.clear()

    def release(self) -> None:
        self._release.set()

    def wait_paused(self, count: int, timeout: float = 60) -> None:
        """Until `count` streamed replies in all have stopped at `pause_after` words."""
        with self.arrived:
            if not self.arrived.wait_for(lambda: self.pauses >= count, timeout):
                raise AssertionError(f"expected {count} paused replies, got {self.pauses}")

    def resume(self) -> None:
        """Let every paused reply go on (and the next `resumes` pauses pass at once)."""
        with self.arrived:
            self.resumes = self.pauses
            self.pause_after = None
            self.arrived.notify_all()

    def resume_one(self) -> None:
        """Let the replies paused so far go on; later ones still pause."""
        with self.arrived:
            self.resumes = self.pauses
            self.arrived.notify_all()

    def wait_for_requests(self, count: int, timeout: float = 30) -> None:
        with self.arrived:
            if not self.arrived.wait_for(lambda: len(self.requests) >= count, timeout):
                raise AssertionError(f"expected {count} requests, got {len(self.requests)}")

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/chat/completions":  # as OpenAI answers a base URL without /v1
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                with fake.arrived:
                    fake.requests.append(body)
                    fake._in_flight += 1
                    if fake._in_flight >= fake.gather:
                        # A latch, not a level: the first request through may finish (and leave
                        # `_in_flight`) before the others wake up and look at the count again.
                        fake._gathered = True
                    fake.arrived.notify_all()
                    if not fake.arrived.wait_for(lambda: fake._gathered, timeout=fake.GATHER_TIMEOUT_S):
                        fake.gather_timeouts += 1
                    failing = fake.fail_next > 0
                    fake.fail_next -= 1 if failing else 0
                fake._release.wait(120)
                with fake.arrived:
                    fake._in_flight -= 1
                if failing:
                    self._send(500, {"error": {"message": "upstream exploded"}})
                    return
                last = body["messages"][-1]["content"]
                text = f"LLM heard {last!r} after {len(body['messages'])} turns"
                if fake.numbered:
                    text += f" (#{len(fake.requests)})"
                if body.get("stream"):
                    self._stream(text)
                else:
                    self._send(200, {"choices": [{"message": {"role": "assistant", "content": text}}]})

            def _stream(self, text):
                """The reply word by word as chat.completion.chunk events, then [DONE]."""
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    words = text.split(" ")
                    for n, word in enumerate(words):
                        if fake.pause_after is not None and n == fake.pause_after:
                            with fake.arrived:
                                fake.pauses += 1
                                mine = fake.pauses
                                fake.arrived.notify_all()
                                fake.arrived.wait_for(lambda mine=mine: fake.resumes >= mine, 120)
                        delta = word if n == 0 else " " + word
                        chunk = {"choices": [{"index": 0, "delta": {"content": delta}}]}
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                        self.wfile.flush()
                        if fake.token_delay_s:
                            time.sleep(fake.token_delay_s)
                    self.wfile.write(b"data: [DONE]\n\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _send(self, status, payload):
                raw = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the worker that asked was killed mid-request

        return Handler
