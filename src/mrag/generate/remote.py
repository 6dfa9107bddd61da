"""Generators behind an HTTP API: Ollama (/api/chat) and any OpenAI-compatible server
(/v1/chat/completions). Both stream; decoding is greedy (temperature 0).

Ollama's host comes from OLLAMA_HOST (default http://localhost:11434). The OpenAI-compatible base
URL comes from OPENAI_BASE_URL (default https://api.openai.com/v1) and the key from OPENAI_API_KEY.
An unreachable server is a ConnectionError naming the host; an error answer an `UpstreamError` (one too).
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import Any

from mrag.generate.base import DEFAULT_MAX_TOKENS, Generator, Message, as_messages, check_max_tokens

DEFAULT_OLLAMA_HOST = "http://localhost:11434"
DEFAULT_OLLAMA_MODEL = "llama3.2"
DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"
DEFAULT_OPENAI_MODEL = "gpt-4o-mini"
TIMEOUT = 300.0


def _httpx() -> Any:
    try:
        import httpx
    except ImportError as e:  # pragma: no cover - httpx comes with the extras
        raise ImportError("the ollama and openai generators need httpx: pip install 'mrag[server]'") from e
    return httpx


class UpstreamError(ConnectionError):
    """The LLM server answered, with an error: not the caller's fault (the HTTP server's 502). `brief` says
    so without the server's address or its answer's text, which stay in the message (the log, the CLI)."""

    def __init__(self, message: str, brief: str) -> None:
        super().__init__(message)
        self.brief = brief


def _with_scheme(host: str) -> str:
    host = host.strip().rstrip("/")
    return host if "://" in host else f"http://{host}"


def ollama_url(host: str) -> str:
    """OLLAMA_HOST as Ollama's own clients read it: without a scheme, http and port 11434 unless given
    ("0.0.0.0" -> http://0.0.0.0:11434, ":8080" -> http://127.0.0.1:8080); with one, its port or the
    scheme's."""
    host = host.strip().rstrip("/")
    if "://" in host:
        return host
    split = urllib.parse.urlsplit(f"//{host}")
    try:
        port = split.port or 11434
    except ValueError as e:  # "::1" (an IPv6 address is written [::1]), "host:port1"
        raise ValueError(f"cannot read the Ollama host {host!r}: {e}") from None
    name = split.hostname or "127.0.0.1"
    return f"http://{f'[{name}]' if ':' in name else name}:{port}"


class HTTPGenerator(Generator):
    """Shared plumbing: POST a JSON body, read the streamed lines, turn failures into clear errors."""

    service = "server"

    def __init__(self, model: str, base_url: str, headers: dict[str, str] | None = None, timeout: float = TIMEOUT):
        self.model = model
        self.base_url = base_url
        self.headers = headers or {}
        self.timeout = timeout

    def _lines(self, path: str, body: dict[str, Any]) -> Iterator[str]:
        httpx = _httpx()
        url = self.base_url + path
        try:
            with httpx.Client(timeout=httpx.Timeout(self.timeout, connect=10.0)) as client:
                with client.stream("POST", url, json=body, headers=self.headers) as response:
                    if response.status_code >= 400:
                        detail = response.read().decode("utf-8", "replace").strip().replace("\n", " ")[:300]
                        raise UpstreamError(f"{self.service} at {self.base_url} answered {response.status_code}: "
                                            f"{detail}", f"{self.service} answered {response.status_code}")
                    yield from response.iter_lines()
        except httpx.TransportError as e:
            raise ConnectionError(f"cannot reach {self.service} at {self.base_url}: {e or type(e).__name__}") from e


class OllamaGenerator(HTTPGenerator):
    service = "Ollama"

    def __init__(self, model: str | None = None, host: str | None = None, timeout: float = TIMEOUT) -> None:
        host = ollama_url(host or os.environ.get("OLLAMA_HOST") or DEFAULT_OLLAMA_HOST)
        super().__init__(model or DEFAULT_OLLAMA_MODEL, host, timeout=timeout)
        self.name = f"ollama:{self.model}"

    def stream(self, messages: Sequence[Message] | str, max_tokens: int = DEFAULT_MAX_TOKENS) -> Iterator[str]:
        body = {
            "model": self.model,
            "messages": as_messages(messages),
            "stream": True,
            "options": {"temperature": 0, "num_predict": check_max_tokens(max_tokens)},
        }
        for line in self._lines("/api/chat", body):
            if not line.strip():
                continue
            event = _json(line, self)
            if event.get("error"):
                raise UpstreamError(f"Ollama at {self.base_url}: {event['error']}", "Ollama sent an error")
            piece = (event.get("message") or {}).get("content") or ""
            if piece:
                yield piece
            if event.get("done"):
                return


class OpenAIGenerator(HTTPGenerator):
    service = "OpenAI-compatible server"

    def __init__(
        self,
        model: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = TIMEOUT,
    ) -> None:
        base = _with_scheme(base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_OPENAI_BASE_URL)
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        super().__init__(model or DEFAULT_OPENAI_MODEL, base, headers, timeout)
        self.name = f"openai:{self.model}"

    def stream(self, messages: Sequence[Message] | str, max_tokens: int = DEFAULT_MAX_TOKENS) -> Iterator[str]:
        body = {
            "model": self.model,
            "messages": as_messages(messages),
            "stream": True,
            "temperature": 0,
            "max_tokens": check_max_tokens(max_tokens),
        }
        for line in self._lines("/chat/completions", body):
            if not line.startswith("data:"):
                continue  # SSE comments, event names, blank separators
            data = line[len("data:") :].strip()
            if data == "[DONE]":
                return
            event = _json(data, self)
            if event.get("error"):
                raise UpstreamError(f"{self.service} at {self.base_url}: {event['error']}",
                                    f"{self.service} sent an error")
            for choice in event.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content") or ""
                if piece:
                    yield piece


def _json(line: str, gen: HTTPGenerator) -> dict[str, Any]:
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        raise UpstreamError(f"{gen.service} at {gen.base_url} sent something that is not JSON: {line[:100]!r}",
                            f"{gen.service} sent something that is not JSON") from None
    if not isinstance(event, dict):
        raise UpstreamError(f"{gen.service} at {gen.base_url} sent {type(event).__name__}, not a JSON object",
                            f"{gen.service} sent something that is not a JSON object")
    return event
