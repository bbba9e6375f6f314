"""Agents write replies. `echo` is offline and deterministic; `openai` calls any
OpenAI-compatible chat completions endpoint."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Protocol

from app.config import Settings


@dataclass(frozen=True)
class Turn:
    role: str  # "user" or "assistant"
    content: str


class AgentError(Exception):
    """The agent could not produce a reply (RQ retries the job)."""


class Agent(Protocol):
    def reply(self, conversation_id: str, history: list[Turn]) -> str: ...


class EchoAgent:
    """Quotes the last message, the conversation's first message and counts what it saw, so a
    reply attached to the wrong conversation, or a history split across two, shows in its text."""

    def reply(self, conversation_id: str, history: list[Turn]) -> str:
        users = [t for t in history if t.role == "user"]
        if not users:
            raise AgentError("no user message to answer")
        first, last = _clip(users[0].content), _clip(users[-1].content)
        return (
            f'Echo: "{last}" (conversation {conversation_id}: message {len(users)} of this chat, '
            f'{len(history)} messages seen, first was "{first}")'
        )


def _clip(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class OpenAIAgent:
    """POST {base_url}/chat/completions with the whole conversation as history."""

    def __init__(self, base_url: str, api_key: str | None, model: str, timeout_s: float = 60.0):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.api_key = api_key
        self.model = model
        self.timeout_s = timeout_s

    def reply(self, conversation_id: str, history: list[Turn]) -> str:
        body = json.dumps(
            {"model": self.model, "messages": [{"role": t.role, "content": t.content} for t in history]}
        ).encode()
        request = urllib.request.Request(self.url, data=body, method="POST")
        request.add_header("Content-Type", "application/json")
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                answer = json.load(response)
            content = answer["choices"][0]["message"]["content"]
        except (urllib.error.URLError, TimeoutError, KeyError, IndexError, ValueError) as exc:
            raise AgentError(f"chat completions call failed: {exc}") from exc
        if not isinstance(content, str) or not content:
            raise AgentError("chat completions answered with no content")
        return content


def make_agent(settings: Settings) -> Agent:
    if settings.agent == "openai":
        return OpenAIAgent(settings.openai_base_url, settings.openai_api_key, settings.model)
    return EchoAgent()
