"""A query part's best rows from its posting lists (`best_rows`): each row's BM25 score is the sum of its
postings' weights, impact x (idf x repeats); the c best rows come back best first, ties to the smaller row.

Two engines give the same rows and the same score bits (each row's weights summed in float64 in the
same order, posting by posting):
- with numba installed (`pip install 'mrag[fast]'`): a compiled loop adds every posting into a float64
  row array kept per thread, then another walks the postings again, taking each row's total once,
  resetting it, and keeping only totals that can still place (the c-th best of a full buffer, cut by
  numpy, is a floor);
- else numpy: one dense `bincount` of all postings, then only the postings that can reach the c-th best
  row ranked.
The compiled loops' row array (8 bytes a row) is kept by each thread that searched, for that thread's life.
At 1M rows the postings' random access into the row array is most of the time; numpy also allocates
and zeroes the array each search (benchmarks/results/bm25-engines.md).
"""

from __future__ import annotations

import importlib
import threading
import warnings
from typing import Any, NamedTuple

import numpy as np


class Lists(NamedTuple):
    """A segment's posting lists of one query part: term j's postings are rows[starts[j]:ends[j]] with
    impacts impact[...], each weighing impact x factors[j] (in float32, as the index computes it)."""

    rows: np.ndarray  # (P_s,) int32, the segment's postings
    impact: np.ndarray  # (P_s,) float32
    starts: np.ndarray  # (m,) int64
    ends: np.ndarray  # (m,) int64
    factors: np.ndarray  # (m,) float32: idf x repeats


def best_rows(lists: list[Lists], n: int, c: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The c best of rows 0..n-1 by their postings' summed weights: (rows int64, scores float64), best first,
    ties to the smaller row. Segments hold disjoint rows. Nothing found: two empty arrays. `allowed` (n,)
    bool: only those rows (summed as the others are, in numpy: a filtered search)."""
    postings = sum(int((s.ends - s.starts).sum()) for s in lists)
    if c <= 0 or postings == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    if _kernels() is not None and allowed is None:
        return _best_compiled(lists, n, c)
    return _best_numpy(lists, n, c, allowed)


def top(rows: np.ndarray, scores: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    """The c best (row, score) pairs, best score first, ties to the smaller row: a partition down to the
    rows that reach the c-th best score, then one sort of those."""
    if len(scores) > c:
        cut = np.partition(scores, len(scores) - c)[len(scores) - c]  # the c-th best
        reach = np.flatnonzero(scores >= cut)
        rows, scores = rows[reach], scores[reach]
    order = np.lexsort((rows, -scores))[:c]
    return rows[order], scores[order]


def _best_numpy(lists: list[Lists], n: int, c: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All postings' weights summed by row in a dense accumulator; only the postings that can reach the c-th
    best row ranked. (A sort of the postings by row took 3x as long at 1M rows; skipping rows that cannot
    place, MaxScore, skipped few for sentences at c = 32 and cost 5-8x as much.)"""
    rows, weights = [], []
    for s in lists:
        for a, b, factor in zip(s.starts.tolist(), s.ends.tolist(), s.factors):
            rows.append(s.rows[a:b])
            weights.append(s.impact[a:b] * factor)
    row, weight = np.concatenate(rows), np.concatenate(weights)  # (P,) every posting
    total = np.bincount(row, weights=weight, minlength=n)  # (n,) float64
    if allowed is not None:  # the rows a filter strikes out have no postings to rank
        row = row[allowed[row]]
    # a row has at most one posting per term (segments hold disjoint rows), so the c-th best row's
    # postings are among the m * c best postings: fewer rows than c score above it
    most = max(len(s.starts) for s in lists) * c
    if len(row) > most:
        score = total[row]  # (P,) each posting's row's total
        row = row[score >= np.partition(score, len(score) - most)[len(score) - most]]
    found = np.unique(row)
    return top(found.astype(np.int64), total[found], c)


_local = threading.local()


def _best_compiled(lists: list[Lists], n: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    """The compiled loops over this thread's row array, left all zero again after each search."""
    kernels = _kernels()
    assert kernels is not None
    accumulate, collect = kernels
    totals = getattr(_local, "totals", None)
    if totals is None or len(totals) < n:
        totals = _local.totals = np.zeros(n)
    kept_rows, kept_scores = np.empty(max(4 * c, 1024), dtype=np.int64), np.empty(max(4 * c, 1024))
    try:
        for s in lists:
            accumulate(s.rows, s.impact, s.starts, s.ends, s.factors, totals)
        count, floor = 0, np.nextafter(0.0, 1.0)  # the least total above 0
        for s in lists:
            j, p = 0, 0
            while True:
                count, j, p = collect(s.rows, s.starts, s.ends, totals, kept_rows, kept_scores, count, floor, j, p)
                if j == len(s.starts):
                    break
                # full: cut to the totals at or above its c-th best, the floor from now on; larger when ties
                # keep it more than half full
                floor = np.partition(kept_scores, count - c)[count - c]
                keep = np.flatnonzero(kept_scores >= floor)
                count = len(keep)
                kept_rows[:count], kept_scores[:count] = kept_rows[keep], kept_scores[keep]
                if 2 * count > len(kept_rows):
                    kept_rows = np.concatenate([kept_rows, np.empty_like(kept_rows)])
                    kept_scores = np.concatenate([kept_scores, np.empty_like(kept_scores)])
    except BaseException:
        _local.totals = None  # left half summed: the next search starts from a new array
        raise
    return top(kept_rows[:count], kept_scores[:count], c)


_UNSET = object()
_compiled: Any = _UNSET  # (accumulate, collect), or None without numba: loaded at the first search


def _kernels() -> tuple[Any, Any] | None:
    global _compiled
    if _compiled is _UNSET:
        try:
            compiled = importlib.import_module("mrag.retrieve.bm25_compiled")
        except Exception as e:  # noqa: BLE001 - numba not installed, not importable with this numpy, or no cache
            _compiled = None  # folder it can write (RuntimeError: "no locator available"): numpy's engine
            if not isinstance(e, ImportError):
                warnings.warn(f"mrag: numba's full-text loops are off, numpy scores instead: {e}", stacklevel=2)
        else:
            _compiled = (compiled.accumulate, compiled.collect)
    return _compiled  # type: ignore[no-any-return]
