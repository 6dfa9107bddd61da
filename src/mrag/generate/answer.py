"""Retrieval-augmented answers: retrieve, number the chunks, let the generator answer, parse citations.

`prepare()` does everything up to the prompt (no LLM needed unless the strategy is a fusion one),
so a caller can show the context, stream the tokens (`Prepared.stream`: no LLM call when nothing was
retrieved) and call `Prepared.answer(text)`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from mrag.documents import check_utf8
from mrag.generate.base import DEFAULT_MAX_TOKENS, Generator, Message, well_formed
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
from mrag.generate.thinking import without_thinking
from mrag.retrieve import filter_sql
from mrag.retrieve import strategies as retrieve

# the answer when nothing was retrieved: no LLM is asked, as its answer from no sources would read like one from
# the index
NO_SOURCES = "Nothing in the index matches this question, so there is no answer from it."


@dataclass
class Prepared:
    question: str
    strategy: str
    context: list[ContextChunk]
    subqueries: list[str]
    messages: list[Message]

    def answer(self, text: str) -> Answer:
        """The answer to `text`, the model's reply: a reasoning model's thoughts left out (its citations of
        sources it weighed and dropped are none of the answer's), its citations parsed."""
        answered = without_thinking(text).strip()
        if not answered and text.strip():  # its tokens ran out while it thought
            from mrag.generate.remote import UpstreamError

            raise UpstreamError("the model sent its reasoning and no answer (it may have stopped at max_tokens: "
                                "allow it more)", "the model sent its reasoning and no answer")
        text = answered
        return Answer(text, parse_citations(text, self.context), self.context, self.strategy, self.subqueries)

    def stream(self, generator: Generator, max_tokens: int = DEFAULT_MAX_TOKENS) -> Iterator[str]:
        """The answer's text as `generator` writes it; NO_SOURCES alone, and no LLM call, when nothing was
        retrieved."""
        if not self.context:
            yield NO_SOURCES
            return
        held = ""  # a high surrogate ending a piece: its low half may start the next (an emoji escaped in two)
        for piece in generator.stream(self.messages, max_tokens):
            piece = held + piece
            held = piece[-1] if piece and "\ud800" <= piece[-1] <= "\udbff" else ""
            whole = piece[: len(piece) - len(held)]
            if whole:
                yield well_formed(whole)  # a lone surrogate was a 400, or cut a stream off
        if held:
            yield well_formed(held)

    def generate(self, generator: Generator, max_tokens: int = DEFAULT_MAX_TOKENS) -> Answer:
        """The whole answer from `generator` (NO_SOURCES when nothing was retrieved), its citations parsed."""
        return self.answer(well_formed(generator.generate(self.messages, max_tokens)) if self.context else NO_SOURCES)

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
    where: str | None = None,
) -> Prepared:
    """Retrieve and build the prompt. Fusion strategies ask `generator` for sub-queries unless given;
    `strategy` None is the index's default; `where` keeps the chunks a filter keeps (`Index.search`)."""
    if not question or not question.strip():
        raise ValueError("the question is empty")
    check_utf8(question, "the question")  # before an LLM is asked for sub-queries
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    if max_context_chars <= 0:
        raise ValueError(f"the context budget must be positive, got {max_context_chars}")
    filter_sql.check_where(where)  # before an LLM is asked for sub-queries
    strategy = retrieve.check_strategy(strategy or index.default_strategy)
    hits, used = retrieve_for(index, question, k, strategy, generator, c=c, subqueries=subqueries, where=where)
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
    where: str | None = None,
) -> Answer:
    """Answer a question from the index with numbered citations (not streamed); nothing retrieved: NO_SOURCES,
    without asking the generator. `where`: only the chunks a filter keeps (`Index.search`)."""
    return prepare(index, question, k, strategy, generator, max_context_chars, c,
                   where=where).generate(generator, max_tokens)
