"""The generator interface: chat messages in, a stream of text pieces out.

A backend implements `stream`; `generate` joins it. `mrag.generate.backends` builds one by name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import TypedDict


class Message(TypedDict):
    role: str  # "system", "user" or "assistant"
    content: str


DEFAULT_MAX_TOKENS = 256


class Generator(ABC):
    """An LLM that answers chat messages. `name` says which backend and model, for reports."""

    name: str = "generator"

    @abstractmethod
    def stream(self, messages: Sequence[Message], max_tokens: int = DEFAULT_MAX_TOKENS) -> Iterator[str]:
        """Yield the reply piece by piece as the model writes it."""

    def generate(self, messages: Sequence[Message], max_tokens: int = DEFAULT_MAX_TOKENS) -> str:
        return "".join(self.stream(messages, max_tokens))


def as_messages(prompt: str | Sequence[Message]) -> list[Message]:
    """A plain prompt becomes one user message; messages are checked and copied."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    out: list[Message] = []
    for i, m in enumerate(prompt):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in (
            "system", "user", "assistant"
        ):
            raise ValueError(f"message {i} needs a role (system, user, assistant) and a string content")
        out.append({"role": m["role"], "content": m["content"]})
    if not out:
        raise ValueError("no messages to answer")
    return out


def well_formed(text: str) -> str:
    """Text UTF-8 can hold: a pair of surrogates joined, a lone one (an emoji's halves escaped in two pieces of a
    stream) as U+FFFD. "a\ud83d" -> "a\ufffd" """
    if text.isascii():
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def check_max_tokens(max_tokens: int) -> int:
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    return max_tokens
