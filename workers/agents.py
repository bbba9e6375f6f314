"""Agents write replies. `echo` is offline and deterministic; `openai` calls any
OpenAI-compatible chat completions endpoint."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from app.config import Settings
from app.errors import ConfigurationError


@dataclass(frozen=True)
class Turn:
    role: str  # "user" or "assistant"
    content: str


class AgentError(Exception):
    """The agent could not produce a reply (RQ retries the job)."""


OnToken = Callable[[str], None]
"""Called with each piece of the reply as the agent produces it (streamed to the page)."""


class Agent(Protocol):
    def reply(self, conversation_id: str, history: list[Turn], on_token: OnToken | None = None) -> str: ...


class EchoAgent:
    """Quotes the last message, the conversation's first message and counts what it saw, so a
    reply attached to the wrong conversation, or a history split across two, shows in its text."""

    def reply(self, conversation_id: str, history: list[Turn], on_token: OnToken | None = None) -> str:
        users = [t for t in history if t.role == "user"]
        if not users:
            raise AgentError("no user message to answer")
        first, last = _clip(users[0].content), _clip(users[-1].content)
        text = (
            f'Echo: "{last}" (conversation {conversation_id}: message {len(users)} of this chat, '
            f'{len(history)} message{"" if len(history) == 1 else "s"} seen, first was "{first}")'
        )
        if on_token:
            on_token(text)
        return text


def _clip(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class OpenAIAgent:
    """POST {base_url}/chat/completions with the whole conversation as history, streamed
    (`"stream": true`, server-sent `data:` lines), each delta handed to `on_token`."""

    def __init__(self, base_url: str, api_key: str | None, model: str, timeout_s: float = 60.0):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.api_key = api_key
        self.model = model
        self.timeout_s = timeout_s

    def reply(self, conversation_id: str, history: list[Turn], on_token: OnToken | None = None) -> str:
        body = json.dumps({
            "model": self.model,
            "stream": True,
            "messages": [{"role": t.role, "content": t.content} for t in history],
        }).encode()
        request = urllib.request.Request(self.url, data=body, method="POST")
        request.add_header("Content-Type", "application/json")
        request.add_header("Accept", "text/event-stream")
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        pieces: list[str] = []
        try:
            # timeout applies to each read: a stalled stream fails instead of hanging the job
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                if response.headers.get_content_type() == "application/json":  # a server that won't stream
                    pieces.append(json.load(response)["choices"][0]["message"]["content"] or "")
                else:
                    for raw in response:
                        line = raw.decode("utf-8").strip()
                        if not line.startswith("data:"):
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":
                            break
                        delta = json.loads(data)["choices"][0].get("delta", {}).get("content")
                        if delta:
                            pieces.append(delta)
                            if on_token:
                                on_token(delta)
        except urllib.error.HTTPError as exc:
            hint = ""
            if exc.code == 404:
                hint = (" (OPENAI_BASE_URL usually ends in /v1, e.g. https://api.openai.com/v1; "
                        "the agent appends /chat/completions)")
            elif exc.code in (401, 403):
                hint = " (check OPENAI_API_KEY)"
            raise AgentError(f"chat completions call to {self.url} failed: HTTP {exc.code} {exc.reason}{hint}") from exc
        except (urllib.error.URLError, TimeoutError, OSError, KeyError, IndexError, ValueError) as exc:
            raise AgentError(f"chat completions call to {self.url} failed: {exc}") from exc
        text = "".join(pieces)
        if not text:
            raise AgentError("chat completions answered with no content")
        return text


def _openai(settings: Settings) -> Agent:
    return OpenAIAgent(settings.openai_base_url, settings.openai_api_key, settings.model,
                       timeout_s=settings.agent_timeout_s)


REGISTRY: dict[str, Callable[[Settings], Agent]] = {
    "echo": lambda settings: EchoAgent(),
    "openai": _openai,
}
"""ARZANI_AGENT -> factory. The names are app.defaults.AGENT_NAMES (what the settings accept)."""


def make_agent(settings: Settings) -> Agent:
    """The configured agent. A name with no factory is a configuration error, never a silent echo."""
    factory = REGISTRY.get(settings.agent)
    if factory is None:
        raise ConfigurationError(f"ARZANI_AGENT names no agent: {settings.agent!r} "
                                 f"(registered: {', '.join(sorted(REGISTRY))})")
    return factory(settings)
