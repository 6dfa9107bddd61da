"""Searching the HNSW graphs of `mrag.retrieve.graph`: `GraphRanker`, a `types.Ranker` that walks each
space's graph for every query part and re-scores the candidates in fp32, and the rule that gives a call's
walks one thread or every core (`one_thread`).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from mrag.matrix import Matrix
from mrag.retrieve.ann import query_vector
from mrag.retrieve.graph import Graphs, require_faiss, space_vectors, walkable
from mrag.retrieve.types import QueryVectors, Ranker, Voter
from mrag.settings import DEFAULT_EF

RESCORED = 2  # a search re-scores RESCORED x c rows of each graph in fp32 and keeps c
PARALLEL_WALKS = 64  # a call of fewer query parts, with full-text searches beside it, walks on one thread
_BESIDE: contextvars.ContextVar[bool] = contextvars.ContextVar("mrag_fulltext_beside", default=False)


class GraphRanker:
    """A `types.Ranker`: each voter with a graph walks it for every query part, skipping removed nodes,
    and the rows past the graph (appended since) are scanned; the candidates are re-scored in fp32 from
    the matrix. Voters without a graph (Split-RAG's slices, heads left out of the graphs) go to `exact`."""

    def __init__(self, matrix: Matrix, graphs: Graphs, exact: Ranker, ef: int = DEFAULT_EF) -> None:
        if ef <= 0:
            raise ValueError(f"ef must be positive, got {ef}")
        place = graphs.place(matrix)
        if place is None:
            raise ValueError("these graphs do not fit the matrix (`latest` finds those that do)")
        self.matrix, self.graphs, self.exact, self.ef, self.place = matrix, graphs, exact, ef, place
        faiss, bitmap = require_faiss(), place.bitmap  # the surviving nodes: the walk skips the others
        self.live = None if bitmap is None else faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
        self.walks = walkable(graphs, place)  # else every voter is scanned exactly until a rebuild

    def __call__(self, chosen: list[Voter], queries: list[QueryVectors], c: int) -> tuple[np.ndarray, np.ndarray]:
        ranking = np.full((len(queries), len(chosen), c), -1, dtype=np.int64)
        sims = np.full((len(queries), len(chosen), c), -np.inf)
        walked = [s for s, v in enumerate(chosen) if self.walks and self.graphs.usable(v.name)]
        scanned = [s for s in range(len(chosen)) if s not in walked]
        if scanned:
            ranking[:, scanned], sims[:, scanned] = self.exact([chosen[s] for s in scanned], queries, c)
        for s in walked:
            vectors = np.stack([query_vector(chosen[s], q) for q in queries])  # (P, d)
            ranking[:, s], sims[:, s] = self._walk(chosen[s].name, vectors, c)
        return ranking, sims

    def _rows(self, nodes: np.ndarray) -> np.ndarray:
        """The matrix rows of a walk's nodes, -1 for a removed one (and for none)."""
        return np.where(nodes >= 0, self.place.rows[np.maximum(nodes, 0)], -1)

    def _walk(self, space: str, vectors: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
        """One space, every part: the graph's c best rows and the rows past it, re-scored. (P, d) -> (P, c) x 2"""
        faiss = require_faiss()
        queries = np.ascontiguousarray(vectors, dtype=np.float32)
        # the 8-bit distances pick the rows and fp32 ranks them: twice c rows, so that a row the codes
        # place just past c still gets its exact score
        deep, place = RESCORED * c, self.place
        graph = self.graphs.graph(space)
        walk = faiss.SearchParametersHNSW(efSearch=max(self.ef, deep))  # per call: searches may run side by side
        rows = self._rows(search(graph, queries, deep, walk))  # (P, deep), -1: removed or none
        # the live rows among a part's nearest nodes are its nearest live rows, once there are c of them.
        # A part short of them is near removed nodes (a deleted document, a topic), which would also fill
        # a walk's candidates when skipped: it walks again past them, its breadth widened by twice their
        # number (a deleted topic of 1,000 rows among 20k, its queries: recall@10 0.016 at ef 128, 0.88 at
        # +1x, 1.0 at +2x; one-off)
        short = (rows >= 0).sum(axis=1) < min(c, place.covered)
        if short.any():
            wide = faiss.SearchParametersHNSW(efSearch=max(self.ef, deep) + 2 * place.removed, sel=self.live)
            rows[short] = self._rows(search(graph, queries[short], deep, wide))
        data = space_vectors(self.matrix, space)
        if len(data) > place.covered:  # appended since the graph was written: scanned exactly
            scores = queries @ data[place.covered:].T  # (P, tail)
            best = np.argsort(-scores, axis=1, kind="stable")[:, :c] + place.covered
            rows = np.concatenate([rows, best], axis=1)
        found = rows >= 0
        exact = np.einsum("pd,pkd->pk", queries, data[np.where(found, rows, 0)]).astype(np.float64)
        exact[~found] = -np.inf
        order = np.lexsort((np.where(found, rows, np.iinfo(np.int64).max), -exact), axis=1)[:, :c]  # best, then row
        best_rows = np.take_along_axis(np.where(found, rows, -1), order, axis=1)
        best_sims = np.take_along_axis(exact, order, axis=1)
        pad = c - best_rows.shape[1]
        if pad > 0:  # fewer rows than c
            best_rows = np.pad(best_rows, ((0, 0), (0, pad)), constant_values=-1)
            best_sims = np.pad(best_sims, ((0, 0), (0, pad)), constant_values=-np.inf)
        return best_rows, best_sims


@contextmanager
def fulltext_beside() -> Iterator[None]:
    """The walks in this block have full-text searches running beside them (`fulltext.FullTextRanker`)."""
    token = _BESIDE.set(True)
    try:
        yield
    finally:
        _BESIDE.reset(token)


def one_thread(parts: int) -> bool:
    """Whether a call walking this many query parts runs on one thread: when full-text searches run beside
    it (on the other core) and it is short. Against its walks on every core after the full text, the
    default then ran as fast to 1.12x faster on a quiet CPU and 1.57-1.84x on a busy one; without full
    text, every core (one thread was 1.38-1.47x slower on a quiet CPU; benchmarks/results/walk-threads.md)."""
    return _BESIDE.get() and parts < PARALLEL_WALKS


def search(graph: Any, queries: np.ndarray, depth: int, params: Any) -> np.ndarray:
    """The `depth` nearest nodes of each query (-1: none), on one thread where `one_thread` says so (OpenMP's
    thread count is per thread: searches on other threads keep theirs).  (P, d) -> (P, depth)"""
    if not one_thread(len(queries)):
        return graph.search(queries, depth, params=params)[1]  # type: ignore[no-any-return]
    faiss = require_faiss()
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return graph.search(queries, depth, params=params)[1]  # type: ignore[no-any-return]
    finally:
        faiss.omp_set_num_threads(before)
