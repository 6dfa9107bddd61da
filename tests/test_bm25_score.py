"""Scoring a query part's posting lists (`mrag.retrieve.bm25_score`): the compiled engine (numba, when
installed) and numpy's give the same rows and the same score bits, ties to the smaller row, and the
compiled engine's row array is left all zero."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pyarrow as pa
import pytest

from mrag.retrieve import bm25, bm25_score
from mrag.retrieve.bm25 import Bm25
from mrag.retrieve.bm25_score import Lists, best_rows

COMPILED = bm25_score._kernels()
needs_numba = pytest.mark.skipif(COMPILED is None, reason="numba is not installed (pip install 'mrag[fast]')")


@pytest.fixture(params=["numba", "numpy"])
def engine(request, monkeypatch):
    if request.param == "numba" and COMPILED is None:
        pytest.skip("numba is not installed")
    monkeypatch.setattr(bm25_score, "_compiled", COMPILED if request.param == "numba" else None)
    return request.param


def lists_of(postings: list[tuple[list[int], list[float]]], factors: list[float]) -> Lists:
    """One segment whose term j holds postings[j] = (rows ascending, impacts)."""
    rows = np.array([r for rs, _ in postings for r in rs], dtype=np.int32)
    impact = np.array([i for _, im in postings for i in im], dtype=np.float32)
    ends = np.cumsum([len(rs) for rs, _ in postings]).astype(np.int64)
    return Lists(rows, impact, ends - [len(rs) for rs, _ in postings], ends, np.array(factors, dtype=np.float32))


def test_a_hand_worked_example(engine):
    # term 0: rows 1, 4 (impacts 1, 2) x 2; term 1: rows 0, 4, 5 (impacts 3, 1, 3) x 1
    # totals: row 0: 3, row 1: 2, row 4: 4 + 1 = 5, row 5: 3 -> best 4, then 0 and 5 tied (smaller first), 1
    lists = [lists_of([([1, 4], [1, 2]), ([0, 4, 5], [3, 1, 3])], [2, 1])]
    rows, scores = best_rows(lists, 6, 3)
    assert rows.tolist() == [4, 0, 5] and scores.tolist() == [5.0, 3.0, 3.0]
    assert best_rows(lists, 6, 10)[0].tolist() == [4, 0, 5, 1]
    assert [len(a) for a in best_rows(lists, 6, 0)] == [0, 0]
    assert [len(a) for a in best_rows([lists_of([], [])], 6, 3)] == [0, 0]  # no posting: nothing found


def test_segments_hold_disjoint_rows(engine):
    first = lists_of([([0, 2], [1, 1]), ([1], [5])], [1, 1])
    second = lists_of([([3], [4]), ([4], [1])], [1, 1])
    assert best_rows([first, second], 5, 3)[0].tolist() == [1, 3, 0]


@needs_numba
@pytest.mark.parametrize("c", [1, 5, 32, 300, 2000])
def test_both_engines_give_the_same_rows_and_score_bits(c, monkeypatch):
    """Many postings and many exact ties (a few impact values, repeated rows across terms), c below and above
    the compiled engine's buffer (cut and doubled), over two segments: the same rows and score bits."""
    rng = np.random.default_rng(c)
    n = 20_000
    segments = []
    for low, high in ((0, 12_000), (12_000, n)):
        postings = []
        for _ in range(6):
            rows = np.sort(rng.choice(np.arange(low, high), size=int(rng.integers(1, 4_000)), replace=False))
            postings.append((rows.tolist(), rng.choice([0.5, 1.0, 1.25], size=len(rows)).tolist()))
        segments.append(lists_of(postings, rng.choice([0.3, 1.7, 2.0], size=6).tolist()))
    compiled = best_rows(segments, n, c)
    assert np.all(bm25_score._local.totals == 0)  # the row array is left all zero for the next search
    monkeypatch.setattr(bm25_score, "_compiled", None)
    rows, scores = best_rows(segments, n, c)
    assert compiled[0].tolist() == rows.tolist() and compiled[1].tobytes() == scores.tobytes()
    assert len(rows) == c and (c < 32 or len(np.unique(scores)) < c)  # ties decided by row


def test_more_ties_than_the_buffer_holds(engine, monkeypatch):
    """5,000 rows of one score and a few better ones: the compiled engine's buffer (1,024) stays full of
    ties after a cut, so it grows; the best rows, then the tied ones from the smallest row."""
    rows = list(range(0, 10_000, 2))
    impacts = [3.0 if r in (4_000, 9_998) else 1.0 for r in rows]
    lists = [lists_of([(rows, impacts)], [1.5])]
    calls = []
    if engine == "numba":
        accumulate, collect = COMPILED
        monkeypatch.setattr(bm25_score, "_compiled", (accumulate, lambda *a: calls.append(1) or collect(*a)))
    found, scores = best_rows(lists, 10_000, 5)
    assert found.tolist() == [4_000, 9_998, 0, 2, 4] and scores.tolist() == [4.5, 4.5, 1.5, 1.5, 1.5]
    assert engine == "numpy" or len(calls) > 1  # stopped for a larger buffer


def test_index_searches_match_the_formula_through_either_engine(engine):
    """Random Zipf-like text in three segments (growths): each search equals a brute force of the same
    postings (every row summed, sorted by score then row)."""
    rng = np.random.default_rng(3)
    words = [f"w{i}" for i in range(30)]
    p = 1 / np.arange(1, 31)
    docs = [" ".join(rng.choice(words, rng.integers(1, 10), p=p / p.sum())) for _ in range(400)]
    index = Bm25.build(pa.array(docs[:200])).extended(pa.array(docs[200:300])).extended(pa.array(docs[300:]))
    assert len(index.segments) == 3
    for trial in range(60):
        query = " ".join(rng.choice(words, rng.integers(1, 7), p=p / p.sum()))
        c = int(rng.choice([1, 4, 25, 500]))
        terms, repeats = np.unique(index.vocabulary.lookup(bm25.split_words(query)), return_counts=True)
        totals = np.zeros(len(docs))
        for segment, impact in zip(index.segments, index.impacts):
            for term, times in zip(terms, repeats):
                a, b = segment.starts[term], segment.starts[term + 1]
                np.add.at(totals, segment.rows[a:b], impact[a:b] * np.float32(times * index.idf[term]))
        order = [i for i in np.lexsort((np.arange(len(docs)), -totals)) if totals[i] > 0][:c]
        (rows, scores), = index.search([query], c)
        assert rows.tolist() == order, (trial, query, c)
        assert scores.tobytes() == totals[order].tobytes()


@needs_numba
def test_threads_search_at_once_each_with_its_own_row_array():
    docs = [f"kiwi {'fig ' * (i % 7)}row{i % 50}" for i in range(3_000)]
    index = Bm25.build(pa.array(docs))
    queries = [f"kiwi fig row{i}" for i in range(50)]
    alone = [r.tolist() for r, _ in index.search(queries, 20)]
    found: list[list[list[int]]] = []

    def run() -> None:
        found.append([r.tolist() for r, _ in index.search(queries, 20)])

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert found == [alone] * 4


def test_without_numba_searches_take_numpy(monkeypatch):
    monkeypatch.setattr(bm25_score, "_compiled", bm25_score._UNSET)
    monkeypatch.setitem(sys.modules, "mrag.retrieve.bm25_compiled", None)  # its import fails, as without numba
    lists = [lists_of([([1, 4], [1, 2]), ([0, 4, 5], [3, 1, 3])], [2, 1])]
    assert best_rows(lists, 6, 2)[0].tolist() == [4, 0] and bm25_score._compiled is None


def test_a_numba_that_cannot_load_its_loops_leaves_numpy_scoring(monkeypatch):
    """numba raises RuntimeError where it finds no cache folder it can write (a read-only install): searches
    go on through numpy, with a warning."""
    def refuse(name: str) -> None:
        raise RuntimeError("cannot cache function 'accumulate': no locator available for file")

    monkeypatch.setattr(bm25_score, "_compiled", bm25_score._UNSET)
    monkeypatch.setattr(bm25_score.importlib, "import_module", refuse)
    lists = [lists_of([([1, 4], [1, 2]), ([0, 4, 5], [3, 1, 3])], [2, 1])]
    with pytest.warns(UserWarning, match="numpy scores instead: cannot cache"):
        assert best_rows(lists, 6, 2)[0].tolist() == [4, 0]
    assert bm25_score._compiled is None
