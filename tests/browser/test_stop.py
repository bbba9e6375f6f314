"""Stop in a real browser (issue 12): the Stop button shows while a reply is being written, stops
it on the worker that writes it, and the page keeps exactly the partial text the server kept;
another tab of the same chat sees the same stopped reply."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.slow

WORDS = "one two three four five six seven eight nine ten"
PAUSE_AFTER = 4
PARTIAL = " ".join(f"LLM heard '{WORDS}'".split(" ")[:PAUSE_AFTER])


def test_the_stop_button_stops_a_reply_mid_stream_in_every_tab(live_llm, fake_llm, open_chat):
    fake_llm.pause_after = PAUSE_AFTER
    chat = open_chat(live_llm)
    expect(chat.page.locator("#stop")).to_be_hidden()  # nothing being written
    chat.send(WORDS)
    fake_llm.wait_paused(1)
    other = open_chat(live_llm)  # a second tab on the same chat
    streaming = chat.page.locator(".message.assistant.streaming")
    expect(streaming).to_have_text(PARTIAL)
    expect(chat.page.locator("#stop")).to_be_visible()
    chat.page.click("#stop")
    stopped = chat.page.locator(".message.assistant.stopped")
    expect(stopped).to_have_text(PARTIAL)
    expect(chat.page.locator("#stop")).to_be_hidden()
    fake_llm.resume()  # the rest reaches the worker, which commits none of it
    conversation_id = chat.status()["page"]["conversation_id"]
    messages = chat.api(f"/api/conversations/{conversation_id}")["messages"]
    assert [(m["role"], m["status"], m["content"]) for m in messages] == [
        ("user", "stopped", WORDS), ("assistant", "stopped", PARTIAL)]
    expect(other.page.locator(".message.assistant.stopped")).to_have_text(PARTIAL)
    expect(other.page.locator(".message.assistant.streaming")).to_have_count(0)
    assert any("Session synchronization: stop" in line for line in chat.console)
    chat.send("and now?")  # the chat goes on: the next message is answered as usual
    chat.wait_for_replies(2)
    expect(chat.page.locator(".message.assistant.stopped")).to_have_text(PARTIAL)
    chat.screenshot("chat-page-stopped.png")


def test_regenerate_makes_a_new_version_and_the_arrows_page_through_them(live_llm, fake_llm, open_chat):
    fake_llm.numbered = True
    chat = open_chat(live_llm)
    chat.send("say it twice")
    chat.wait_for_replies(1)
    reply = chat.page.locator(".message.assistant")
    expect(reply).to_have_text("LLM heard 'say it twice' after 1 turns (#1)")
    expect(chat.page.locator(".reply-tools .version-label")).to_have_count(0)  # one version: no arrows
    chat.page.click(".reply-tools .regenerate")
    expect(reply).to_have_text("LLM heard 'say it twice' after 1 turns (#2)")
    expect(chat.page.locator(".reply-tools .version-label")).to_have_text("2/2")
    chat.page.click(".reply-tools .version-prev")
    expect(reply).to_have_text("LLM heard 'say it twice' after 1 turns (#1)")
    expect(chat.page.locator(".reply-tools .version-label")).to_have_text("1/2")
    chat.page.click(".reply-tools .version-next")
    expect(reply).to_have_text("LLM heard 'say it twice' after 1 turns (#2)")
    conversation_id = chat.status()["page"]["conversation_id"]
    messages = chat.api(f"/api/conversations/{conversation_id}")["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert [v["content"][-4:] for v in messages[1]["versions"]] == ["(#1)", "(#2)"]
    assert messages[1]["current_version"] == 2
    chat.send("and what did you say?")  # the agent is given the current version
    chat.wait_for_replies(2)
    assert [m["content"] for m in fake_llm.requests[-1]["messages"]][1].endswith("(#2)")
    expect(chat.page.locator(".reply-tools .regenerate")).to_have_count(1)  # on the last reply only
    chat.screenshot("chat-page-versions.png")
