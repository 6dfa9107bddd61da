"""Query-time RAG-Fusion and MRAG-Fusion: the LLM writes search queries, each one retrieves, RRF merges.

As in the MRAG paper, the generator is asked for a few search queries related to the question; the
index runs the base strategy (standard for `fusion`, the MRAG vote for `mrag-fusion`) once per
sub-query and fuses the lists by reciprocal rank. The question itself is kept as the first
sub-query, so a weak generator cannot lose what plain search would have found.

Each sub-query retrieves only k chunks (per-space depth c = k unless given), as the paper's code does
for RAG-Fusion: with deep lists (c = 32), reciprocal rank fusion lets generic chunks that sit in the
middle of every list beat the chunk each sub-query is about. On the 75-document sample corpus,
"How did Roman aqueducts carry water, and how do honeybees keep their hive cool?" with two written
sub-queries found neither document at c = 32, and both (ranks 1 and 2) at c = 4, 8 or 16.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from mrag.generate.base import Generator, Message
from mrag.generate.thinking import without_thinking
from mrag.retrieve import filter_sql, filtered
from mrag.retrieve import strategies as retrieve

DEFAULT_SUBQUERIES = 4
SUBQUERY_MAX_TOKENS = 160

_BULLET = re.compile(r"^\s*(?:[-*•]+|\(?\d{1,2}[.):]|\(?[a-z][.)])\s+")  # "- ", "2. ", "3) ", "b) "
# "Query 3: ", "Q2. ", "Q) ": a label's mark ends it, or precedes a space ("Q-learning", "q.e.d." are words)
_LABEL = re.compile(r"^(?:(?:search\s+)?query|q)\s*\d*\s*(?::|[.)-](?=\s))\s*", re.I)


def is_fusion(strategy: str) -> bool:
    return strategy in retrieve.FUSION


EXAMPLE_QUESTION = "How do volcanoes form, and what do owls eat?"
EXAMPLE_QUERIES = ["how volcanoes form", "magma and plate tectonics", "what owls eat", "owl hunting prey"]


def subquery_messages(question: str, n: int = DEFAULT_SUBQUERIES) -> list[Message]:
    """The paper's request ("generate multiple search queries related to: ..."), with one worked example:
    small local models copy the short one-per-line form from it."""
    ask = "Generate {} search queries related to: {}"
    return [
        {"role": "system", "content": "You write short web search queries. Reply with the queries only, one per line."},
        {"role": "user", "content": ask.format(min(n, 4), EXAMPLE_QUESTION)},
        {"role": "assistant", "content": "\n".join(EXAMPLE_QUERIES[: min(n, 4)])},
        {"role": "user", "content": ask.format(n, question.strip())},
    ]


# a line introducing the list ("Sure! Here are some search queries ..."), not a query ("OK Computer album")
_PREAMBLE = re.compile(r"^(?:(?:sure|certainly|of course|okay|ok)\s*[!,.]|here (?:are|is)\b.*\bquer(?:y|ies)\b)", re.I)


def parse_subqueries(text: str, n: int = DEFAULT_SUBQUERIES) -> list[str]:
    """Queries from the model's reply: one per line, numbering, bullets, quotes and blanks stripped; a
    reasoning model's <think> block and a line that introduces the list left out; a JSON list of strings
    (or an object holding one) read as one."""
    text = without_thinking(text)
    listed = _json_strings(text.strip().removeprefix("```json").strip("`").strip())
    out: list[str] = []
    for line in listed if listed is not None else text.splitlines():
        line = _LABEL.sub("", _BULLET.sub("", line.strip()))
        line = line.strip().strip("\"'`“”‘’").strip()
        line = re.sub(r"^\*\*(.*)\*\*$", r"\1", line).strip()
        if len(line) < 3 or line.endswith(":") or _PREAMBLE.match(line) or same(line, *out):
            continue
        out.append(line)
        if len(out) == n:
            break
    return out


def _json_strings(text: str) -> list[str] | None:
    """The strings of a JSON list, or of the first list of strings in a JSON object; None if it is neither."""
    if not text.startswith(("[", "{")):
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    lists = [value] if isinstance(value, list) else [v for v in value.values() if isinstance(v, list)]
    for found in lists:
        if found and all(isinstance(q, str) for q in found):
            return found
    return None


def same(query: str, *others: str) -> bool:
    """Whether a query is one of others but for case, spacing and the punctuation that ends or wraps it
    ("C++ generics" and "C# generics" stay two)."""
    def key(text: str) -> str:
        return " ".join(text.lower().strip().strip("\"'“”‘’").rstrip("?!.,;:").split())

    return any(key(query) == key(o) for o in others)


def write_subqueries(generator: Generator, question: str, n: int = DEFAULT_SUBQUERIES) -> list[str]:
    """The question followed by up to n LLM-written queries about it."""
    if n < 0:
        raise ValueError(f"the number of sub-queries must be >= 0, got {n}")
    written = parse_subqueries(generator.generate(subquery_messages(question, n), SUBQUERY_MAX_TOKENS), n) if n else []
    return [question.strip(), *(q for q in written if not same(q, question))]


def fusion_search(
    index: Any,
    question: str,
    generator: Generator,
    k: int = 5,
    strategy: str = "mrag-fusion",
    n: int = DEFAULT_SUBQUERIES,
    c: int | None = None,
    **search_options: Any,
) -> tuple[list[Any], list[str]]:
    """(hits, sub-queries) of a fusion search whose sub-queries the generator writes;
    `search_options` (exact, nprobes, spaces) go to `Index.search`."""
    if not is_fusion(strategy):
        raise ValueError(f"{strategy!r} is not a fusion strategy; use one of {', '.join(retrieve.FUSION)}")
    if not question.strip():
        raise ValueError("the question is empty")
    where = filter_sql.check_where(search_options.get("where"))
    if where is not None and not index.store.reading(lambda table: len(filtered.matching_row_ids(table, where))):
        return [], []  # the filter keeps no row (or is refused): the LLM is not asked
    subqueries = write_subqueries(generator, question, n)
    return index.search(question, k=k, strategy=strategy, c=c or k, subqueries=subqueries, **search_options), subqueries


def retrieve_for(
    index: Any,
    question: str,
    k: int,
    strategy: str | None,
    generator: Generator | None = None,
    c: int | None = None,
    subqueries: Sequence[str] | None = None,
    **search_options: Any,
) -> tuple[list[Any], list[str]]:
    """(hits, sub-queries) for any strategy (None: the index's default); fusion ones use `subqueries` if
    given, else the generator's."""
    strategy = strategy or index.default_strategy
    if not is_fusion(strategy):  # given sub-queries: refused by the search, not dropped
        return index.search(question, k=k, strategy=strategy, c=c, subqueries=subqueries, **search_options), []
    given = [q for q in subqueries or [] if q.strip()]
    if given:  # blank ones are none: the generator writes them
        return index.search(question, k=k, strategy=strategy, c=c or k, subqueries=given, **search_options), given
    if generator is None:
        raise ValueError(f"strategy {strategy!r} needs an LLM to write sub-queries (or pass sub-queries)")
    return fusion_search(index, question, generator, k=k, strategy=strategy, c=c, **search_options)
