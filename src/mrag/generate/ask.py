"""Retrieval-augmented answers: retrieve, number the chunks, let the generator answer, parse citations.

`prepare()` does everything up to the prompt (no LLM needed unless the strategy is a fusion one),
so a caller can show the context, stream the tokens itself and call `Prepared.answer(text)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mrag.generate.base import DEFAULT_MAX_TOKENS, Generator, Message
from mrag.generate.fusion import retrieve_for
from mrag.generate.prompt import (
    DEFAULT_MAX_CONTEXT_CHARS,
    Answer,
    ContextChunk,
    build_context,
    build_messages,
    format_context,
    parse_citations,
)
from mrag.retrieve import strategies as retrieve


@dataclass
class Prepared:
    question: str
    strategy: str
    context: list[ContextChunk]
    subqueries: list[str]
    messages: list[Message]

    def answer(self, text: str) -> Answer:
        text = text.strip()
        return Answer(text, parse_citations(text, self.context), self.context, self.strategy, self.subqueries)

    def context_text(self) -> str:
        return format_context(self.context)


def prepare(
    index: Any,
    question: str,
    k: int = 5,
    strategy: str | None = None,
    generator: Generator | None = None,
    max_context_chars: int = DEFAULT_MAX_CONTEXT_CHARS,
    c: int | None = None,
    subqueries: Sequence[str] | None = None,
) -> Prepared:
    """Retrieve and build the prompt. Fusion strategies ask `generator` for sub-queries unless given;
    `strategy` None is the index's default."""
    if not question or not question.strip():
        raise ValueError("the question is empty")
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    if max_context_chars <= 0:
        raise ValueError(f"the context budget must be positive, got {max_context_chars}")
    strategy = retrieve.check_strategy(strategy or index.default_strategy)
    hits, used = retrieve_for(index, question, k, strategy, generator, c=c, subqueries=subqueries)
    context = build_context(hits, max_context_chars)
    return Prepared(question, strategy, context, used, build_messages(question, context))


def ask(
    index: Any,
    question: str,
    generator: Generator,
    k: int = 5,
    strategy: str | None = None,
    max_context_chars: int = DEFAULT_MAX_CONTEXT_CHARS,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    c: int | None = None,
) -> Answer:
    """Answer a question from the index with numbered citations (not streamed)."""
    prepared = prepare(index, question, k, strategy, generator, max_context_chars, c)
    return prepared.answer(generator.generate(prepared.messages, max_tokens))
