"""Filtered search: only the rows a filter keeps are ranked, in every space.

The filter (`where`) is LanceDB's: a SQL expression over the chunk table's columns (`id`, `doc_id`,
`source`, `title`, `position`, `text`, and `metadata` as the JSON text it was written as), evaluated on the
table version the search reads. On the ANN path LanceDB applies it before its indexes are searched
(prefilter), and to its full-text search. In memory the rows it keeps are found once per matrix and filter
(`allowed`, cached), and
- the vector spaces rank those rows alone (`Filtered`): a copy of their vectors where they are few (at
  most SUBSET_SHARE of the rows), else the whole matrix ranked deeper until every line holds c of them;
- the in-memory full-text index scores those rows alone (`Bm25.search(allowed=...)`).
Either way a space's ranking is that of all rows with the others struck out (scores up to their last bits:
a copy puts rows at other positions, `exact.best_of`). The weights of the spaces (head scales) and BM25's
statistics stay those of the whole index: a filter narrows where to look, not how the spaces are weighed.
"""

from __future__ import annotations

import math
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mrag.documents import check_utf8
from mrag.errors import OBJECT_STORE_TROUBLE, RUST_SOURCE
from mrag.retrieve.types import QueryVectors, Ranker, Voter

MAX_WHERE_CHARS = 10_000  # a longer filter is refused (a server takes it from anyone)
SUBSET_SHARE = 0.25  # a filter that keeps at most this share of the rows ranks a copy of their vectors
CACHED = 8  # filters whose rows a process keeps (9 bytes a row of the matrix each), most recent last
COPIED_SHARE = 0.5  # ... and the copies of their vectors, at most this share of a matrix in all (oldest dropped)
# SQL words that come before a bracket and call nothing; the server takes only the functions of SERVED_FUNCTIONS:
# DataFusion's others include some whose cost has no bound but memory (repeat(text, 4000), lpad, array functions)
KEYWORDS = frozenset("and or not in like ilike similar between is case when then else end escape".split())
SERVED_FUNCTIONS = frozenset(
    "lower upper length char_length character_length trim ltrim rtrim btrim starts_with ends_with strpos substr "
    "substring regexp_like regexp_match coalesce nullif abs round floor ceil cast try_cast".split())
# a storage failure while a filter is evaluated is the storage's (a newer commit's pruning, a disk, a store)
STORAGE_TROUBLE = re.compile(r"lance error: Not found|os error \d+|\[Errno \d+\]|" + OBJECT_STORE_TROUBLE,
                             re.IGNORECASE)


class BadFilter(ValueError):
    """A filter LanceDB cannot evaluate on the chunk table (a misspelt column, a type mismatch, bad SQL)."""


def check_where(where: Any) -> str | None:
    """The filter as a search takes it: None, or SQL text that is not blank (an empty `--where ""` is a
    mistake, not "no filter"), at most MAX_WHERE_CHARS characters."""
    if where is None:
        return None
    if not isinstance(where, str):
        raise TypeError(f"the filter (where) must be SQL text, as LanceDB takes it, not {type(where).__name__}")
    check_utf8(where, "the filter")
    if not where.strip():
        raise ValueError("the filter (where) is empty: leave it out to search every row")
    if len(where) > MAX_WHERE_CHARS:
        raise ValueError(f"the filter has {len(where)} characters; at most {MAX_WHERE_CHARS} are taken")
    return where


def sql(where: str) -> str:
    """The filter as LanceDB is given it: in brackets, so that text after a whole expression is an error, not
    dropped (LanceDB evaluated `source = 'a'; position = 0` and `source = 'a' ANDposition = 0` as `source = 'a'`)."""
    return f"({where})"


def functions(where: str) -> list[str]:
    """The functions a filter calls (lower case, in order, once each), outside its quoted strings and names."""
    bare = re.sub(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"", "''", where)
    called = (name.lower() for name in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(", bare))
    return list(dict.fromkeys(name for name in called if name not in KEYWORDS))


def check_served(where: str | None) -> None:
    """Refuse a filter that calls a function the server does not take (`SERVED_FUNCTIONS`)."""
    others = [name for name in functions(where or "") if name not in SERVED_FUNCTIONS]
    if others:
        raise ValueError(f"this server takes no {others[0]}() in a filter; its functions: "
                         f"{', '.join(sorted(SERVED_FUNCTIONS))}")


def bad_filter(where: str, error: Exception) -> BadFilter:
    """LanceDB's refusal of a filter, told as the user's mistake, without Lance's source paths."""
    told = RUST_SOURCE.sub("", str(error).splitlines()[0] if str(error) else type(error).__name__)
    told = re.sub(r"^(lance error: |Invalid input, )+", "", told).strip()
    return BadFilter(f"the filter {where!r} is not valid on the chunk table ({told}); it is SQL over the columns "
                     "id, doc_id, source, title, position, text and metadata (JSON text), e.g. "
                     "\"source LIKE 'notes/%' AND position < 3\"")


def refused(error: Exception) -> bool:
    """Whether LanceDB refused a filter, rather than failed to read: planning errors are ValueErrors, and a
    value that does not convert, or a field a text has not, fails while the filter runs."""
    text = str(error)
    if STORAGE_TROUBLE.search(text):
        return False
    return isinstance(error, ValueError) or "Query Execution error" in text or "filter" in text.lower()


def matching_row_ids(table: Any, where: str) -> np.ndarray:
    """The Lance row ids of the rows of `table` the filter keeps (uint64); its refusal as `BadFilter`."""
    try:
        found = table.search().where(sql(where)).select(["_rowid"]).with_row_id(True).limit(None).to_arrow()
    except (ValueError, RuntimeError) as e:
        if refused(e):
            raise bad_filter(where, e) from None
        raise
    return found["_rowid"].to_numpy().astype(np.uint64)


@dataclass
class Allowed:
    """The matrix rows one filter keeps: ascending positions, their mask, and (made at the first need) the
    ranker of a copy of their vectors. `owner`: the matrix's, for the copies' budget."""

    rows: np.ndarray  # (m,) int64 ascending
    mask: np.ndarray  # (N,) bool
    owner: int = 0
    subset: Ranker | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


# (id of a matrix's ids, filter) -> (a weak reference to those ids, what the filter keeps); no callback drops an
# entry (a callback run by a garbage collection inside the lock would wait on it): dead ones go at each look
_cache: OrderedDict[tuple[int, str], tuple[weakref.ref[np.ndarray], Allowed]] = OrderedDict()
_cache_lock = threading.Lock()


def allowed(matrix: Any, where: str, positions: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Allowed:
    """The rows of `matrix` (a `mrag.matrix.Matrix`) the filter keeps, found once per matrix and filter while
    it lives (CACHED filters). `positions`: the matrix's Lance row ids and some of them -> their matrix rows."""
    key = (id(matrix.ids), where)
    with _cache_lock:
        found = _cache.get(key)
        if found is not None and found[0]() is matrix.ids:
            _cache.move_to_end(key)
            return found[1]
    at = positions(matrix.row_ids, matching_row_ids(matrix.table, where))
    rows = np.unique(at[at >= 0]).astype(np.int64)
    mask = np.zeros(len(matrix.ids), dtype=bool)
    mask[rows] = True
    made = Allowed(rows, mask, id(matrix.ids))
    with _cache_lock:
        for dead in [k for k, (ref, _) in _cache.items() if ref() is None]:
            del _cache[dead]
        _cache[key] = (weakref.ref(matrix.ids), made)
        while len(_cache) > CACHED:
            _cache.popitem(last=False)
    return made


def _within_budget(made: Allowed, n: int) -> None:
    """Drop the copies of the same matrix's filters used least recently (not `made`'s) while its copies hold
    more than COPIED_SHARE of its `n` rows."""
    with _cache_lock:
        copies = [entry for _, entry in _cache.values()
                  if entry.owner == made.owner and entry.subset is not None and entry is not made]
        total = len(made.rows) + sum(len(entry.rows) for entry in copies)
        for entry in copies:  # oldest first
            if total <= COPIED_SHARE * n:
                break
            entry.subset, total = None, total - len(entry.rows)


class Filtered:
    """A `types.Ranker` of the rows `keep.rows` alone, numbering rows as the matrix does: the ranker `subset`
    makes over a copy of their vectors where they are few, else `full` (all `n` rows) ranked deeper."""

    def __init__(self, full: Ranker, keep: Allowed, n: int, subset: Callable[[np.ndarray], Ranker]) -> None:
        self.full, self.keep, self.n, self.make_subset = full, keep, n, subset

    def __call__(self, chosen: list[Voter], queries: list[QueryVectors], c: int) -> tuple[np.ndarray, np.ndarray]:
        m = len(self.keep.rows)
        if m == 0 or not queries or not chosen:
            shape = (len(queries), len(chosen), c)
            return np.full(shape, -1, dtype=np.int64), np.full(shape, -np.inf)
        if m == self.n:
            return self.full(chosen, queries, c)
        if m <= SUBSET_SHARE * self.n:
            return self._copied(chosen, queries, c)
        return self._deeper(chosen, queries, c)

    def _copied(self, chosen: list[Voter], queries: list[QueryVectors], c: int) -> tuple[np.ndarray, np.ndarray]:
        """The lines ranked over a copy of the kept rows' vectors, made once (within the copies' budget)."""
        with self.keep.lock:  # one copy, however many searches ask at once
            if self.keep.subset is None:
                self.keep.subset = self.make_subset(self.keep.rows)
                _within_budget(self.keep, self.n)
            subset = self.keep.subset
        ranking, sims = subset(chosen, queries, c)
        return np.where(ranking >= 0, self.keep.rows[np.maximum(ranking, 0)], -1), sims

    def _deeper(self, chosen: list[Voter], queries: list[QueryVectors], c: int) -> tuple[np.ndarray, np.ndarray]:
        """Every row ranked deeper: a kept row is one in n / m, so twice c x n / m rows hold c of them in most
        lines. The parts and voters of the lines that fall short (the kept rows lie far from the query, as
        where a filter follows what the texts are about) are ranked again over a copy of the kept rows."""
        m, mask = len(self.keep.rows), self.keep.mask
        depth = min(self.n, 2 * c * math.ceil(self.n / m))
        ranking, sims = self.full(chosen, queries, depth)  # (P, S, depth)
        kept = (ranking >= 0) & mask[np.maximum(ranking, 0)]
        first = np.argsort(~kept, axis=2, kind="stable")[:, :, :c]  # each line's kept entries, in rank order
        valid = np.take_along_axis(kept, first, axis=2)
        out_rows = np.full((len(queries), len(chosen), c), -1, dtype=np.int64)
        out_sims = np.full((len(queries), len(chosen), c), -np.inf)
        width = first.shape[2]  # c, or fewer where the matrix has fewer rows
        out_rows[:, :, :width] = np.where(valid, np.take_along_axis(ranking, first, axis=2), -1)
        out_sims[:, :, :width] = np.where(valid, np.take_along_axis(sims, first, axis=2), -np.inf)
        short = (kept.sum(axis=2) < min(c, m)) & (depth < self.n)  # (P, S)
        if short.any():
            parts, voters = np.flatnonzero(short.any(axis=1)), np.flatnonzero(short.any(axis=0))
            at = np.ix_(parts, voters)
            out_rows[at], out_sims[at] = self._copied([chosen[v] for v in voters], [queries[p] for p in parts], c)
        return out_rows, out_sims
