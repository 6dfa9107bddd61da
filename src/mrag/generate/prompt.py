"""The answer prompt: retrieved chunks numbered [1]..[k], a budget for them, and citations parsed back.

The context keeps the retrieval order (best voted first). When the chunks do not fit the budget the
lowest-ranked ones are dropped first; a single chunk longer than the whole budget is truncated.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from mrag.generate.base import Message

DEFAULT_MAX_CONTEXT_CHARS = 4000
TRUNCATED = " ..."

SYSTEM = (
    "You answer questions using only the numbered sources you are given, and cite them by number in "
    "square brackets, like [1] or [2][3]. If the sources do not contain the answer, say so."
)
INSTRUCTION = (
    "Using the sources above, answer: {question}\n"
    "Write two or three sentences. End each sentence with the number of its source in brackets, like [1]."
)


@dataclass
class ContextChunk:
    """One retrieved chunk as the model sees it: its number in the prompt, and where it came from."""

    number: int
    id: str
    source: str
    title: str
    text: str
    score: float = 0.0
    truncated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Answer:
    text: str
    cited: list[ContextChunk]  # in order of first citation
    context: list[ContextChunk]  # everything the model was shown, cited or not
    strategy: str = ""
    subqueries: list[str] = field(default_factory=list)

    @property
    def not_sources(self) -> list[int]:
        """The numbers the answer cites that name no source it was shown (a small model's [4] of three)."""
        shown = {c.number for c in self.context}
        return [n for n in cited_numbers(self.text) if n not in shown]

    def to_dict(self) -> dict[str, Any]:
        return {
            "answer": self.text,
            "cited": [c.to_dict() for c in self.cited],
            "context": [c.to_dict() for c in self.context],
            "strategy": self.strategy,
            "subqueries": self.subqueries,
        } | ({"not_sources": self.not_sources} if self.not_sources else {})


def header(chunk: ContextChunk) -> str:
    label = chunk.title or chunk.source or chunk.id
    if chunk.title and chunk.source and chunk.source != chunk.title:
        label += f" ({chunk.source})"
    return f"[{chunk.number}] {' '.join(label.split())}\n"  # one line: a title's line end could forge a "[2]"


def build_context(
    hits: Sequence[Any], max_chars: int = DEFAULT_MAX_CONTEXT_CHARS, measure: Callable[[str], int] = len
) -> list[ContextChunk]:
    """Number hits (objects with id, source, title, text and score) within a budget.

    `measure` sizes a text (characters by default; pass a tokenizer's length for tokens). Each
    chunk costs what `format_context` writes of it: its header, its text, its line end and, after the
    first, the blank line before it. Best hits come first; the first one that does not fit
    ends the context, except that a first hit too long on its own is truncated to fit (a budget that
    cannot hold even its header is refused).
    """
    if max_chars <= 0:
        raise ValueError(f"the context budget must be positive, got {max_chars}")
    out: list[ContextChunk] = []
    left = max_chars
    for hit in hits:
        chunk = ContextChunk(len(out) + 1, hit.id, hit.source, hit.title, hit.text, float(getattr(hit, "score", 0.0)))
        ends = measure("\n") * (2 if out else 1)  # the chunk's line end, and the blank line between chunks
        cost = measure(header(chunk)) + measure(chunk.text) + ends
        if cost <= left:
            out.append(chunk)
            left -= cost
            continue
        if not out:
            frame = measure(header(chunk)) + measure(TRUNCATED) + ends
            room = left - frame
            if room <= 0:  # an answer from no context at all would look like one from the index
                raise ValueError(f"a context budget of {max_chars} holds no source: the best one's header alone "
                                 f"takes {frame}; give a larger budget")
            chunk.text = _prefix_within(chunk.text, room, measure) + TRUNCATED
            chunk.truncated = True
            out.append(chunk)
        break
    return out


def _prefix_within(text: str, budget: int, measure: Callable[[str], int]) -> str:
    """The longest prefix of text whose size is within budget, cut at a word boundary when there is one."""
    lo, hi = 0, len(text)
    while lo < hi:  # largest n with measure(text[:n]) <= budget
        mid = (lo + hi + 1) // 2
        if measure(text[:mid]) <= budget:
            lo = mid
        else:
            hi = mid - 1
    prefix = text[:lo]
    if lo < len(text) and not text[lo].isspace() and " " in prefix:  # cut inside a word: back to its start
        prefix = prefix[: prefix.rindex(" ")]
    return prefix.rstrip()


def format_context(context: Sequence[ContextChunk]) -> str:
    return "\n".join(header(c) + c.text + "\n" for c in context)


def build_messages(question: str, context: Sequence[ContextChunk]) -> list[Message]:
    if not context:
        sources = "(no sources were found)\n"
    else:
        sources = format_context(context)
    user = f"Sources:\n\n{sources}\n" + INSTRUCTION.format(question=question.strip())
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


# [2], [1, 3], [1; 3], [2-4], [2–4], [1, 2, and 3], [ 2 ], [Source 2], [sources 1, 3]
# [1], [1, 2], [2-4]; CJK answers' brackets and commas too: 【1】, ［1］, [1，2], [1、3]
CITATION = re.compile(r"[\[【［]\s*(?:sources?\s*:?\s*)?(\d+(?:\s*(?:,\s*and|,|;|-|–|and|，|、|；)\s*\d+)*)\s*[\]】］]",
                      re.I)
CODE = re.compile(r"```.*?(?:```|$)|`[^`\n]*`", re.S)  # fenced blocks (one left open runs to the end), inline code


def cited_numbers(text: str) -> list[int]:
    """Source numbers cited in text, in order of first mention: [2], [1, 3], [1][2], [2-4] (or [4-2]),
    [1, 2, and 3], 【1】 and [1、3] all count; not inside code (`a[2]`) or right after a "/" (example.com/[3])."""
    seen: list[int] = []
    prose = CODE.sub(lambda m: " " * len(m.group()), text)
    for match in CITATION.finditer(prose):
        if match.start() and prose[match.start() - 1] == "/" and prose[: match.start() - 1].rstrip()[-1:] != "]":
            continue  # a path or URL's "[3]"; "[1]/[2]" cites both
        numbers: list[int] = []
        for part in re.split(r"\s*(?:,\s*and|,|;|and|，|、|；)\s*", match.group(1), flags=re.I):
            ends = sorted(int(x) for x in re.split(r"\s*[-–]\s*", part))
            if len(ends) == 2 and 0 < ends[1] - ends[0] < 50:
                numbers.extend(range(ends[0], ends[1] + 1))
            else:
                numbers.extend(ends)
        for n in numbers:
            if n not in seen:
                seen.append(n)
    return seen


def parse_citations(text: str, context: Sequence[ContextChunk]) -> list[ContextChunk]:
    """The context chunks an answer cites; numbers that name no chunk are ignored."""
    by_number = {c.number: c for c in context}
    return [by_number[n] for n in cited_numbers(text) if n in by_number]
