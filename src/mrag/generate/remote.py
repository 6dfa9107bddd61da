"""Generators behind an HTTP API: Ollama (/api/chat) and any OpenAI-compatible server
(/v1/chat/completions). Both stream; decoding is greedy (temperature 0).

Ollama's host comes from OLLAMA_HOST (default http://localhost:11434). The OpenAI-compatible base
URL comes from OPENAI_BASE_URL (default https://api.openai.com/v1) and the key from OPENAI_API_KEY.
Redirects are followed. Each read waits at most MRAG_LLM_TIMEOUT seconds (default 300; a local model's
first token may take long), the connection 10. An unreachable server, or one that broke off mid-answer,
is a ConnectionError naming the host; an error answer, or one that is no answer of the API (an HTML
page, a JSON error with status 200, nothing at all), an `UpstreamError` (one too): never an empty answer.
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
TIMEOUT = 300.0  # seconds a read may wait (MRAG_LLM_TIMEOUT)
TIMEOUT_VARIABLE = "MRAG_LLM_TIMEOUT"
SHOWN = 200  # characters of an answer that is no answer of the API shown in its error
OTHER_CHARS = 2**20  # characters kept of a reply's lines that are no server-sent event (a whole completion)


def default_timeout() -> float:
    """MRAG_LLM_TIMEOUT seconds, else TIMEOUT."""
    value = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    if not value:
        return TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"{TIMEOUT_VARIABLE} must be a number of seconds above 0, got {value!r}")
    return seconds


def _httpx() -> Any:
    try:
        import httpx
    except ImportError as e:  # pragma: no cover - httpx comes with the extras
        raise ImportError("the ollama and openai generators need httpx: pip install 'mrag[server]'") from e
    return httpx


class UpstreamError(ConnectionError):
    """The LLM server answered, with an error: not the caller's fault (the HTTP server's 502). `brief` says
    so without the server's address or its answer's text, which stay in the message (the log, the CLI);
    `status` is its HTTP status, `retry_after` its Retry-After (a 429 or 503: try again later)."""

    def __init__(self, message: str, brief: str, status: int | None = None, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.brief, self.status, self.retry_after = brief, status, retry_after


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

    def __init__(self, model: str, base_url: str, headers: dict[str, str] | None = None, timeout: float | None = None):
        self.model = model
        self.base_url = base_url
        self.headers = headers or {}
        self.timeout = default_timeout() if timeout is None else timeout

    def _lines(self, path: str, body: dict[str, Any]) -> Iterator[str]:
        httpx = _httpx()
        url = self.base_url + path
        answered = False
        try:
            with httpx.Client(timeout=httpx.Timeout(self.timeout, connect=10.0), follow_redirects=True) as client:
                with client.stream("POST", url, json=body, headers=self.headers) as response:
                    answered = True
                    if not 200 <= response.status_code < 300:  # a redirect not followed is no answer either
                        detail = response.read().decode("utf-8", "replace").strip().replace("\n", " ")[:300]
                        raise UpstreamError(f"{self.service} at {self.base_url} answered {response.status_code}: "
                                            f"{detail}", f"{self.service} answered {response.status_code}",
                                            response.status_code, response.headers.get("retry-after"))
                    yield from response.iter_lines()
        except httpx.TransportError as e:
            if answered:  # a timeout between two reads, or a dropped connection
                raise ConnectionError(f"{self.service} at {self.base_url} broke off its answer: "
                                      f"{e or type(e).__name__}") from e
            raise ConnectionError(f"cannot reach {self.service} at {self.base_url}: {e or type(e).__name__}") from e

    def no_answer(self, seen: str) -> UpstreamError:
        """The error for a reply that holds no answer of the API (`seen`: its first characters)."""
        shown = " ".join(seen.split())[:SHOWN]
        return UpstreamError(f"{self.service} at {self.base_url} sent no answer of its API"
                             f"{': ' + repr(shown) if shown else ' (an empty reply)'}; is {self.base_url} the API's "
                             "address?", f"{self.service} sent no answer of its API")

    def only_thinking(self, stop: str | None, max_tokens: int) -> UpstreamError:
        """The error for a reasoning model that sent its thoughts and no answer (an empty answer, as it was,
        reads as the model's)."""
        why = f"it stopped at max_tokens = {max_tokens}: allow it more" if stop == "length" else f"stop: {stop}"
        return UpstreamError(f"{self.service} at {self.base_url}: the model {self.model} sent its reasoning and no "
                             f"answer ({why})", f"the model {self.model} sent its reasoning and no answer")


class OllamaGenerator(HTTPGenerator):
    service = "Ollama"

    def __init__(self, model: str | None = None, host: str | None = None, timeout: float | None = None) -> None:
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
        events, answered, reasoned = 0, False, False
        for line in self._lines("/api/chat", body):
            if not line.strip():
                continue
            event = _json(line, self)
            if event.get("error"):
                raise UpstreamError(f"Ollama at {self.base_url}: {event['error']}", "Ollama sent an error")
            if "message" not in event and "done" not in event:
                raise self.no_answer(line)
            events += 1
            message = event.get("message") or {}
            piece = message.get("content") or ""
            reasoned = reasoned or bool(message.get("thinking"))  # a thinking model's thoughts, sent apart
            if piece:
                answered = True
                yield piece
            if event.get("done"):
                if reasoned and not answered:
                    raise self.only_thinking(event.get("done_reason"), max_tokens)
                return
        if not events:
            raise self.no_answer("")


class OpenAIGenerator(HTTPGenerator):
    service = "OpenAI-compatible server"

    def __init__(
        self,
        model: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float | None = None,
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
        events, other = 0, list[str]()  # the lines of no server-sent event, kept (a little) for the error
        answered, reasoned, stop = False, False, None
        for data in _sse_events(self._lines("/chat/completions", body), other):
            if data == "[DONE]":
                break
            event = _json(data, self)
            if event.get("error"):
                raise UpstreamError(f"{self.service} at {self.base_url}: {event['error']}",
                                    f"{self.service} sent an error")
            events += 1
            for choice in event.get("choices") or []:
                delta = choice.get("delta") or {}
                piece = delta.get("content") or ""
                # a reasoning model's thoughts, sent apart (vLLM, DeepSeek: reasoning_content; others: reasoning)
                reasoned = reasoned or bool(delta.get("reasoning_content") or delta.get("reasoning"))
                stop = choice.get("finish_reason") or stop
                if piece:
                    answered = True
                    yield piece
        if not events:  # a server that ignored "stream": its whole answer as one JSON, or no answer at all
            yield self.whole_answer("\n".join(other))
        elif reasoned and not answered:
            raise self.only_thinking(stop, max_tokens)

    def whole_answer(self, text: str) -> str:
        """The answer of a reply that is one chat completion (not streamed), else an `UpstreamError`."""
        try:
            reply = json.loads(text)
        except json.JSONDecodeError:
            raise self.no_answer(text) from None
        if isinstance(reply, dict) and reply.get("error"):
            raise UpstreamError(f"{self.service} at {self.base_url}: {reply['error']}", f"{self.service} sent an error")
        choices = reply.get("choices") if isinstance(reply, dict) else None
        if not choices or not isinstance(choices[0], dict) or not isinstance(choices[0].get("message"), dict):
            raise self.no_answer(text)
        return str(choices[0]["message"].get("content") or "")


def _sse_events(lines: Iterator[str], other: list[str]) -> Iterator[str]:
    """The data of each server-sent event: its "data:" lines joined by line ends, as the spec reads them,
    given as soon as they are whole JSON (or "[DONE]"): a streamed piece is not held back until the blank
    line that ends its event. The first other lines go to `other`."""
    data: list[str] = []
    for line in lines:
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
            if _whole("\n".join(data)):
                yield "\n".join(data)
                data = []
        elif not line.strip():
            if data:  # an event that never became whole: its parse names what it was
                yield "\n".join(data)
            data = []
        elif sum(map(len, other)) < OTHER_CHARS:  # comments, event names, or a reply that is no event stream
            other.append(line)
    if data:
        yield "\n".join(data)


def _whole(data: str) -> bool:
    """Whether an event's data is complete: "[DONE]" or a JSON value."""
    try:
        json.loads(data)
    except json.JSONDecodeError:
        return data == "[DONE]"
    return True


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
