"""A search filter's text (`where`), checked before LanceDB reads it: what every caller may send, and what the
server takes from anyone (`check_served`). `mrag.retrieve.filtered` evaluates it.

LanceDB parses a filter as `SELECT 1 FROM t WHERE <filter>` with DataFusion's SQL: it ignored text after a
whole expression, crashed the process (SIGSEGV, in a reviewer's run) on about 700 chained operators and
panicked on `$$...$$` strings; and some of its functions build text without bound (`repeat(text, 4000)`). The
checks read the filter as that tokenizer does, as far as they need: strings ('' a quote inside), quoted names
("..." and `...`), comments (`--` to the line's end, `/* */`, nested) are told apart from the rest (`bare`).
"""

from __future__ import annotations

import re
from typing import Any

from mrag.documents import check_utf8

MAX_WHERE_CHARS = 10_000  # a longer filter is refused
MAX_OPERATORS = 400  # operators (AND, OR, NOT, +, ||, =, ...) in a filter: 700 chained crashed LanceDB (600 did not)
MAX_DEPTH = 64  # brackets within brackets
# SQL words that come before a bracket and call nothing; the server takes only the functions of SERVED_FUNCTIONS:
# DataFusion's others include some whose cost has no bound but memory (repeat(text, 4000), lpad, array functions)
KEYWORDS = frozenset("and or not in like ilike similar between is case when then else end escape distinct from "
                     "exists any all".split())
SERVED_FUNCTIONS = frozenset(
    "lower upper length char_length character_length trim ltrim rtrim btrim starts_with ends_with strpos substr "
    "substring regexp_like regexp_match coalesce nullif abs round floor ceil cast try_cast".split())
OPERATOR = re.compile(r"\b(?:and|or|not)\b|\|\||[-+*/%<>=!]+", re.IGNORECASE)


def check_where(where: Any) -> str | None:
    """The filter as a search takes it: None, or SQL text that is not blank (an empty `--where ""` is a
    mistake, not "no filter"), of at most MAX_WHERE_CHARS characters, MAX_OPERATORS operators and MAX_DEPTH
    brackets within brackets, with no `$` outside its strings and no prefixed string (E'..', X'..')."""
    if where is None:
        return None
    if not isinstance(where, str):
        raise TypeError(f"the filter (where) must be SQL text, as LanceDB takes it, not {type(where).__name__}")
    check_utf8(where, "the filter")
    if not where.strip():
        raise ValueError("the filter (where) is empty: leave it out to search every row")
    if len(where) > MAX_WHERE_CHARS:
        raise ValueError(f"the filter has {len(where)} characters; at most {MAX_WHERE_CHARS} are taken")
    text = bare(where)
    operators = len(OPERATOR.findall(text))
    if operators > MAX_OPERATORS:
        raise ValueError(f"the filter has {operators} operators; at most {MAX_OPERATORS} are taken (a long list "
                         "of values is `IN ('a', 'b', ...)`)")
    nested = depth(text)
    if nested > MAX_DEPTH:
        raise ValueError(f"the filter nests brackets {nested} deep; at most {MAX_DEPTH} are taken")
    if "$" in text:
        raise ValueError("the filter has a `$` outside its strings: write strings in single quotes ('it''s')")
    return where


def sql(where: str) -> str:
    """The filter as LanceDB is given it: in brackets, so that text after a whole expression is an error, not
    dropped (`source = 'a'; position = 0` was read as `source = 'a'`); the bracket on a line of its own, so that
    a comment at the end (`-- why`) ends before it."""
    return f"({where}\n)"


def bare(where: str) -> str:
    """The filter with every string as '', every comment as a space, and every quoted name as a plain one
    ("repeat" -> repeat); a string prefixed by a letter (E'\\'', X'00') is refused: its escapes read otherwise."""
    out, i, n = [], 0, len(where)
    while i < n:
        ch = where[i]
        if ch == "'":
            if i and (where[i - 1].isalnum() or where[i - 1] in "_&"):
                raise ValueError("the filter has a prefixed string (E'...', X'...'): write plain strings ('...')")
            i = _string_end(where, i, "'")
            out.append("''")
        elif ch in "\"`":
            end = _string_end(where, i, ch)
            out.append(re.sub(r"\W", "_", where[i + 1 : end - 1]) or "_")
            i = end
        elif where.startswith("--", i):
            end = where.find("\n", i)
            i = n if end < 0 else end
            out.append(" ")
        elif where.startswith("/*", i):
            i = _comment_end(where, i)
            out.append(" ")
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _string_end(text: str, start: int, quote: str) -> int:
    """Where the string (or quoted name) opened at `start` ends (past its closing quote; a doubled quote is one
    inside it), or the text's end where it is not closed."""
    i = start + 1
    while i < len(text):
        if text[i] == quote:
            if text[i + 1 : i + 2] != quote:
                return i + 1
            i += 1
        i += 1
    return len(text)


def _comment_end(text: str, start: int) -> int:
    """Where the block comment opened at `start` ends (comments nest), or the text's end."""
    level, i = 0, start
    while i < len(text):
        if text.startswith("/*", i):
            level, i = level + 1, i + 2
        elif text.startswith("*/", i):
            level, i = level - 1, i + 2
            if level == 0:
                return i
        else:
            i += 1
    return len(text)


def depth(text: str) -> int:
    """How deep brackets nest in `text` (a filter's `bare` form)."""
    level = deepest = 0
    for ch in text:
        level += (ch == "(") - (ch == ")")
        deepest = max(deepest, level)
    return deepest


def functions(where: str) -> list[str]:
    """The functions a filter calls (lower case, in order, once each), outside its strings and comments."""
    called = (name.lower() for name in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(", bare(where)))
    return list(dict.fromkeys(name for name in called if name not in KEYWORDS))


def check_served(where: str | None) -> None:
    """Refuse a filter that calls a function the server does not take (`SERVED_FUNCTIONS`) or joins text (`||`,
    which repeats a text as often as it is written)."""
    if where is None:
        return
    others = [name for name in functions(where) if name not in SERVED_FUNCTIONS]
    if others:
        raise ValueError(f"this server takes no {others[0]}() in a filter; its functions: "
                         f"{', '.join(sorted(SERVED_FUNCTIONS))}")
    if "||" in bare(where):
        raise ValueError("this server takes no `||` (joined text) in a filter")
