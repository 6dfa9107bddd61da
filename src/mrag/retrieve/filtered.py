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
The filter's text is checked first (`filter_sql`); what LanceDB then refuses is a `BadFilter`.
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

from mrag.errors import OBJECT_STORE_TROUBLE, RUST_SOURCE
from mrag.retrieve.filter_sql import sql
from mrag.retrieve.types import QueryVectors, Ranker, Voter

SUBSET_SHARE = 0.25  # a filter that keeps at most this share of the rows ranks a copy of their vectors
CACHED = 8  # filters whose rows a process keeps (9 bytes a row of the matrix each), most recent last
COPIED_SHARE = 0.5  # ... and the copies of their vectors, at most this share of a matrix in all (oldest dropped)
# a storage failure while a filter is evaluated is the storage's (a newer commit's pruning, a disk, a store); its
# words are looked for in the error less the filter and the quoted values (a row's text may say "timed out")
STORAGE_TROUBLE = re.compile(r"lance error: Not found|os error \d+|\[Errno \d+\]|" + OBJECT_STORE_TROUBLE,
                             re.IGNORECASE)


class BadFilter(ValueError):
    """A filter LanceDB cannot evaluate on the chunk table (a misspelt column, a type mismatch, bad SQL)."""


def bad_filter(where: str, error: Exception) -> BadFilter:
    """LanceDB's refusal of a filter, told as the user's mistake, without Lance's source paths."""
    message = str(error).replace(sql(where), f"({where})")  # the filter as given, on its line
    told = RUST_SOURCE.sub("", message.splitlines()[0] if message else type(error).__name__)
    told = re.sub(r"^(lance error: |Invalid input, )+", "", told).strip()
    told = re.sub(r"\s*Valid fields are [^;]*?\.(?=\)?$)", "", told)  # the stored columns, vectors and all
    missing = re.search(r"No field named (\"[^\"]*\"|\S+?)\.?$", told)
    name = missing.group(1).strip('"') if missing else ""
    compared = rf'(?:[=<>]|\bLIKE|\bIN\s*\(|,)\s*"{re.escape(name)}"'  # `title = "bees"`: "..." names a column in SQL
    if missing and re.search(compared, where, re.IGNORECASE):
        told = f"{told.rstrip('.')}; a string takes single quotes: '{name.replace(chr(39), chr(39) * 2)}'"
    return BadFilter(f"the filter {where!r} is not valid on the chunk table ({told}); it is SQL over the columns "
                     "id, doc_id, source, title, position, text and metadata (JSON text), e.g. "
                     "\"source LIKE '%/notes/%' AND position < 3\"")


def refused(where: str, error: Exception) -> bool:
    """Whether LanceDB refused the filter, rather than failed to read: planning errors are ValueErrors, a value
    that does not convert (or a field a text has not) fails while the filter runs, and some SQL its planner has
    not implemented panics."""
    text = re.sub(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"", "''", str(error).replace(where, ""))
    if STORAGE_TROUBLE.search(text):
        return False
    return (isinstance(error, ValueError) or "Query Execution error" in text or "filter" in text.lower()
            or type(error).__name__ == "RustPanic")


def matching_row_ids(table: Any, where: str) -> np.ndarray:
    """The Lance row ids of the rows of `table` the filter keeps (uint64); its refusal as `BadFilter`."""
    try:
        found = table.search().where(sql(where)).select(["_rowid"]).with_row_id(True).limit(None).to_arrow()
    except Exception as e:
        if refused(where, e):
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
        _purge()
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
        _cache[key] = (weakref.ref(matrix.ids), made)
        while len(_cache) > CACHED:
            _cache.popitem(last=False)
    return made


def _purge() -> None:
    """Drop the entries of matrices that are gone (their copies with them); under `_cache_lock`."""
    for dead in [key for key, (ref, _) in _cache.items() if ref() is None]:
        del _cache[dead]


def forget_gone() -> None:
    """Drop what is kept for matrices that are gone (a search without a filter calls it: a newer version's)."""
    with _cache_lock:
        _purge()


def _within_budget(made: Allowed) -> None:
    """Drop the copies of the same matrix's filters used least recently (not `made`'s) while its copies hold
    more than COPIED_SHARE of its rows."""
    n = len(made.mask)
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
    makes over a copy of their vectors where they are few, else `full` (all the matrix's rows) ranked deeper."""

    def __init__(self, full: Ranker, keep: Allowed, subset: Callable[[np.ndarray], Ranker]) -> None:
        self.full, self.keep, self.make_subset = full, keep, subset
        self.n = len(keep.mask)  # the matrix's rows

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
            subset = self.keep.subset  # (another search's budget may drop it meanwhile: this one keeps it)
            if subset is None:
                subset = self.keep.subset = self.make_subset(self.keep.rows)
                _within_budget(self.keep)
        ranking, sims = subset(chosen, queries, c)
        return np.where(ranking >= 0, self.keep.rows[np.maximum(ranking, 0)], -1), sims

    def _deeper(self, chosen: list[Voter], queries: list[QueryVectors], c: int) -> tuple[np.ndarray, np.ndarray]:
        """Every row ranked deeper: a kept row is one in n / m, so twice c x n / m rows hold c of them in most
        lines. The parts and voters of the lines that fall short (the kept rows lie far from the query, as
        where a filter follows what the texts are about) are ranked again over a copy of the kept rows, or
        where that copy would pass the copies' budget, over every row."""
        m = len(self.keep.rows)
        depth = min(self.n, 2 * c * math.ceil(self.n / m))
        out_rows, out_sims, found = _first_kept(*self.full(chosen, queries, depth), self.keep.mask, c)
        short = (found < min(c, m)) & (depth < self.n)  # (P, S)
        if short.any():
            parts, voters = np.flatnonzero(short.any(axis=1)), np.flatnonzero(short.any(axis=0))
            at = np.ix_(parts, voters)
            again = [chosen[v] for v in voters], [queries[p] for p in parts]
            if m <= COPIED_SHARE * self.n:
                out_rows[at], out_sims[at] = self._copied(*again, c)
            else:
                out_rows[at], out_sims[at], _ = _first_kept(*self.full(*again, self.n), self.keep.mask, c)
        return out_rows, out_sims


def _first_kept(ranking: np.ndarray, sims: np.ndarray, mask: np.ndarray, c: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each line's first c rows that `mask` keeps, in rank order (-1 / -inf past them), and how many it ranked.
    rankings and similarities (P, S, depth) -> (P, S, c), (P, S, c), (P, S)."""
    kept = (ranking >= 0) & mask[np.maximum(ranking, 0)]
    first = np.argsort(~kept, axis=2, kind="stable")[:, :, :c]  # kept entries first, each in rank order
    valid = np.take_along_axis(kept, first, axis=2)
    rows = np.full(ranking.shape[:2] + (c,), -1, dtype=np.int64)
    scores = np.full(ranking.shape[:2] + (c,), -np.inf)
    width = first.shape[2]  # c, or fewer where the matrix has fewer rows
    rows[:, :, :width] = np.where(valid, np.take_along_axis(ranking, first, axis=2), -1)
    scores[:, :, :width] = np.where(valid, np.take_along_axis(sims, first, axis=2), -np.inf)
    return rows, scores, kept.sum(axis=2)
