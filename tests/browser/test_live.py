"""Live delivery in a real browser (issue 10): streamed replies that resume exactly across
reloads, reconnects, a SIGKILLed web process and a SIGKILLed worker, and every tab in sync.

Every text the page ever shows for a reply being written is recorded (a MutationObserver
installed before the page's own scripts run, on every load): each must be a prefix of the stored
reply, which is what "no gap and no repeated fragment" means on screen."""

from __future__ import annotations

import os
import signal
import time

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import ChatPage
from tests.faults.conftest import horse_of
from tests.helpers import new_session_id
from tests.stack import descendants_of

pytestmark = pytest.mark.slow

WORDS = "one two three four five six seven eight nine ten eleven twelve"
PAUSE_AFTER = 6  # words the fake LLM streams before it waits for the test
PARTIAL = f"LLM heard '{WORDS}'".split(" ")[:PAUSE_AFTER]

RECORD_PARTIALS = """
window.__partials = [];
new MutationObserver(() => {
  for (const node of document.querySelectorAll('.message.assistant.streaming')) {
    const text = node.textContent;
    if (window.__partials[window.__partials.length - 1] !== text) window.__partials.push(text);
  }
}).observe(document, { childList: true, subtree: true, characterData: true });
"""


@pytest.fixture
def recording(context):
    context.add_init_script(RECORD_PARTIALS)
    return context


def partials(chat: ChatPage) -> list[str]:
    return chat.page.evaluate("window.__partials")


def stored_reply(chat: ChatPage) -> str:
    conversation_id = chat.status()["page"]["conversation_id"]
    messages = chat.api(f"/api/conversations/{conversation_id}")["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    return messages[1]["content"]


def assert_only_prefixes(texts: list[str], final: str) -> None:
    for text in texts:
        assert final.startswith(text), f"the page showed {text!r}, which is not how {final!r} begins"


def streaming(chat: ChatPage):
    return chat.page.locator(".message.assistant.streaming")


def test_two_tabs_on_one_chat_render_the_same_streamed_reply(live_llm, fake_llm, recording, open_chat):
    fake_llm.pause_after = PAUSE_AFTER
    first = open_chat(live_llm)
    first.send(WORDS)
    fake_llm.wait_paused(1)
    second = open_chat(live_llm)  # the same browser: the same identity and the same open chat
    for tab in (first, second):
        expect(streaming(tab)).to_have_text(" ".join(PARTIAL))
    fake_llm.resume()
    for tab in (first, second):
        tab.wait_for_replies(1)
    final = stored_reply(first)
    for tab in (first, second):
        assert tab.replies().first.inner_text() == final
        assert_only_prefixes(partials(tab), final)
    assert first.status()["page"]["streams"]["session"]["position"]


def test_a_reload_mid_reply_shows_the_partial_text_at_once_and_ends_byte_equal(make_stack, database_url, fake_llm,
                                                                            recording, open_chat):
    """On SQLite and on PostgreSQL."""
    from tests.browser.conftest import _serving

    stack = make_stack(database_url, ARZANI_AGENT="openai", OPENAI_BASE_URL=fake_llm.url, OPENAI_API_KEY="sk-test")
    stack.init_db()
    _serving(stack)
    fake_llm.pause_after = PAUSE_AFTER
    chat = open_chat(stack)
    chat.send(WORDS)
    fake_llm.wait_paused(1)
    expect(streaming(chat)).to_have_text(" ".join(PARTIAL))
    before = partials(chat)
    chat.page.reload()
    # The reply is still paused: what shows now can only come from the session's event log.
    expect(streaming(chat)).to_have_text(" ".join(PARTIAL))
    fake_llm.resume()
    chat.wait_for_replies(1)
    final = stored_reply(chat)
    assert chat.replies().first.inner_text() == final
    assert_only_prefixes(before + partials(chat), final)


def test_the_web_process_serving_the_stream_sigkilled_mid_reply(live_llm, fake_llm, recording, open_chat):
    """Every gunicorn worker (the one serving the page's streams among them) is SIGKILLed while
    the reply is half written; gunicorn starts new ones, the page's EventSource reconnects with
    Last-Event-ID and the reply continues from exactly where the page was."""
    fake_llm.pause_after = PAUSE_AFTER
    chat = open_chat(live_llm)
    chat.send(WORDS)
    fake_llm.wait_paused(1)
    expect(streaming(chat)).to_have_text(" ".join(PARTIAL))
    position = chat.status()["page"]["streams"]["session"]["position"]
    arbiter = live_llm.processes["web"].pid
    doomed = descendants_of(arbiter)
    assert doomed
    for pid in doomed:
        os.kill(pid, signal.SIGKILL)
    chat.page.wait_for_function("() => !window.arzaniSessionSynchronizer.streams().session.live")
    chat.page.wait_for_function("() => window.arzaniSessionSynchronizer.streams().session.live", timeout=60_000)
    assert chat.status()["page"]["streams"]["session"]["position"] == position  # nothing was missed or replayed
    fake_llm.resume()
    chat.wait_for_replies(1)
    final = stored_reply(chat)
    assert chat.replies().first.inner_text() == final
    assert_only_prefixes(partials(chat), final)


def test_a_worker_sigkilled_mid_reply_its_retry_replaces_the_partial_text(make_stack, fake_llm, recording,
                                                                          open_chat):
    from tests.browser.conftest import _serving

    stack = _serving(make_stack(ARZANI_AGENT="openai", OPENAI_BASE_URL=fake_llm.url, OPENAI_API_KEY="sk-test"))
    fake_llm.pause_after = PAUSE_AFTER
    chat = open_chat(stack)
    chat.send(WORDS)
    fake_llm.wait_paused(1)
    expect(streaming(chat)).to_have_text(" ".join(PARTIAL))
    os.kill(horse_of(stack.processes["worker"].pid), signal.SIGKILL)
    fake_llm.wait_paused(2)  # RQ's retry is writing the reply again: a new epoch
    # The retry's words replace the dead attempt's; appended, they would read twice.
    expect(streaming(chat)).to_have_text(" ".join(PARTIAL))
    fake_llm.resume()
    chat.wait_for_replies(1)
    final = stored_reply(chat)
    assert chat.replies().first.inner_text() == final
    assert_only_prefixes(partials(chat), final)
    assert len(fake_llm.requests) == 2


def test_a_rename_a_delete_and_a_new_chat_in_one_tab_reach_another_within_a_second(live, open_chat):
    tab_a = open_chat(live)
    tab_a.send("first chat")
    tab_a.wait_for_replies(1)
    tab_b = open_chat(live)
    items_b = tab_b.page.locator(".conversation-item")
    expect(items_b).to_have_count(1)
    tab_b.page.locator(".conversation-item").first.wait_for()

    def within_a_second(action, check) -> None:
        action()
        started = time.monotonic()
        check()
        elapsed = time.monotonic() - started
        assert elapsed <= 1.0, f"tab B took {elapsed:.2f} s"

    # a new chat, from tab A: its first message
    posted = {}
    within_a_second(lambda: posted.update(tab_a.api_call("POST", f"/api/sessions/{new_session_id()}/messages",
                                                         {"content": "second chat"})),
                    lambda: expect(items_b).to_have_count(2, timeout=1_000))
    # a rename
    conversation_id = posted["conversation_id"]
    within_a_second(lambda: tab_a.api_call("PATCH", f"/api/conversations/{conversation_id}", {"title": "Renamed"}),
                    lambda: expect(tab_b.page.locator(".conversation-item .title", has_text="Renamed"))
                    .to_have_count(1, timeout=1_000))
    # a delete
    within_a_second(lambda: tab_a.api_call("DELETE", f"/api/conversations/{conversation_id}"),
                    lambda: expect(items_b).to_have_count(1, timeout=1_000))
    lines = [line for line in tab_b.console if line.startswith("Session synchronization")]
    for kind in ("created", "renamed", "deleted"):
        assert any(f": {kind}" in line for line in lines), lines
    assert tab_b.status()["page"]["streams"]["chats"]["live"] is True
