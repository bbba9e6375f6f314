"""Browser tests: Playwright driving Debian's Chromium (/usr/bin/chromium, headless, no sandbox)
against the real stack: gunicorn, a real redis-server and a stock rq worker. Without Chromium
they skip locally and FAIL under CI (`CI` set), where `.ci/run` installs it."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("ARZANI_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
# A reply needs the worker up (its first job imports the app: seconds on a loaded 2-core machine),
# the job, and the page's event or poll; a failed attempt is retried after 1 s, then 5 s. A minute
# covers all of that with room; a reply that never comes still fails the test.
REPLY_WAIT_MS = 60_000


def _patient_expectations():
    """expect(...) waits up to 15 s (Playwright's default is 5): the sidebar and the pane refresh
    after a reply with a round trip or two, which a loaded machine can stretch."""
    from playwright.sync_api import expect

    expect.set_options(timeout=15_000)


_patient_expectations()
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        message = f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message + ": browser tests must run in CI")
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _serving(stack):
    stack.start_web(workers=2)
    stack.start_worker("worker", "--with-scheduler", "-c", "workers.rq_settings")
    return stack


@pytest.fixture
def live(make_stack):
    """The stack with the echo agent."""
    return _serving(make_stack())


@pytest.fixture
def live_llm(make_stack, fake_llm):
    """The stack with the openai agent talking to a fake OpenAI-compatible server on loopback."""
    return _serving(make_stack(ARZANI_AGENT="openai", OPENAI_BASE_URL=fake_llm.url,
                               OPENAI_API_KEY="sk-test", ARZANI_REPLY_RETRIES="0"))


class ChatPage:
    """One tab of the chat page, with its console lines kept."""

    def __init__(self, page, url: str):
        self.page = page
        self.url = url
        self.console: list[str] = []
        page.on("console", lambda message: self.console.append(message.text))

    def open(self):
        self.page.goto(self.url)
        self.page.locator("#content").wait_for()
        return self

    def send(self, text: str):
        self.page.fill("#content", text)
        self.page.click("#send")

    def replies(self):
        return self.page.locator(".message.assistant:not(.streaming)")

    def wait_for_replies(self, count: int, timeout_ms: int = REPLY_WAIT_MS):
        self.replies().nth(count - 1).wait_for(timeout=timeout_ms)

    def status(self) -> dict:
        return self.page.evaluate("window.arzaniSessionSynchronizer.getStatus()")

    def api(self, path: str):
        """GET from the API with this tab's cookie identity."""
        return self.page.evaluate(f"fetch({path!r}).then((r) => r.json())")

    def wait_for_messages(self, conversation_id: str, count: int, timeout_ms: int = REPLY_WAIT_MS) -> list[dict]:
        """The conversation's messages, read from the API until it holds `count` and none awaits a
        reply. (Not page.wait_for_function: it does not await a promise, so a fetch in it is
        truthy at once and the wait returns before anything it meant to wait for.)"""
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            messages = self.api(f"/api/conversations/{conversation_id}?limit=500")["messages"]
            if len(messages) >= count and not any(m["status"] == "pending" for m in messages):
                return messages
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(messages)} messages after {timeout_ms} ms, not {count} answered")
            self.page.wait_for_timeout(100)

    def message_ids(self) -> list[int]:
        """The ids of the messages the pane shows, in its order (streaming drafts and words still
        on their way left out)."""
        return self.page.eval_on_selector_all(
            ".message:not(.streaming)",
            "(items) => items.map((item) => Number(item.dataset.id)).filter(Number.isInteger)")

    def api_call(self, method: str, path: str, body: dict | None = None):
        """A call from the page itself (its cookie, same-origin): returns the JSON answer, if any."""
        return self.page.evaluate(
            """([method, path, body]) => fetch(path, {method, headers: {"Content-Type": "application/json"},
                 body: body === null ? undefined : JSON.stringify(body)})
               .then((r) => { if (!r.ok) throw new Error(`${method} ${path}: ${r.status}`);
                              return r.status === 204 ? null : r.json(); })""",
            [method, path, body])

    def screenshot(self, name: str):
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / name), full_page=True)


@pytest.fixture
def context(browser):
    ctx = browser.new_context(viewport={"width": 1100, "height": 720})
    yield ctx
    ctx.close()


@pytest.fixture
def open_chat(context):
    def _open(stack) -> ChatPage:
        return ChatPage(context.new_page(), stack.url + "/").open()

    return _open
