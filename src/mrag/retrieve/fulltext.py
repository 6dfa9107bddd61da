"""The full-text space: LanceDB's native BM25 index on the chunk text, ranked beside the vector spaces.

Every write of documents builds the index when the table has none, inside its own commit (`keep`),
so `mrag index`, `Index.add`/`upsert` and the server's writes all leave one behind. Rows written after the build are
still found: LanceDB searches the rows its full-text index does not cover with a flat scan, and
deleted rows are never returned. Those rows are folded into the index by LanceDB's optimize (every
compaction, `mrag optimize`), and the index is rebuilt once they outnumber a quarter of the indexed
ones. The index is part of the table version a commit records, so it survives a reopen and a
rolled-back write takes its index back with it.

`FullTextRanker` wraps a vector ranker (`mrag.retrieve.exact.Exact` or `mrag.retrieve.ann.AnnRanker`): the voter named
`bm25` is answered by a full-text search of the query text on the same table snapshot, every other
voter by the wrapped ranker, and the rows are numbered as the wrapped ranker numbers them. The
full-text space votes in `bm25` (alone), `hybrid` (with the standard vector, reciprocal rank fusion:
LanceDB's hybrid search with its default RRFReranker), beside the standard vector in each query part
(`segment-bm25`, the default) or beside the heads too (`mrag-bm25`, or `--spaces ...,bm25` with `mrag-std`
/ `spaces`), weighted like the standard vector.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mrag.connection import async_table, together
from mrag.matrix import Matrix
from mrag.retrieve import bm25, walk
from mrag.retrieve.bm25 import Bm25
from mrag.retrieve.types import QueryVectors, Ranker, Voter
from mrag.settings import FULLTEXT

COLUMN = "text"  # the chunks column the index covers
REBUILD_SHARE = 0.25  # rebuild once the rows the index does not cover are a quarter of those it does
REBUILD_MIN = 1000  # ... and at least this many (a flat scan of fewer costs nothing)
ENGINES = ("auto", "memory", "lancedb")  # who answers the full-text space on the exact path
ENGINE_VARIABLE = "MRAG_FULLTEXT"  # the process's choice where the caller makes none (default: auto)
# rows up to which `auto` answers in memory: a story of 8.9 query sentences took 2.3 ms against LanceDB's 10.2
# at 41k rows, 3.6 against 13.7 at 100k, 6.0 against 20.0 at 250k, 22.1 against 52.5 at 1M; the build, at the
# first full-text search of a process, 23 s at 1M (LanceDB's own 32 s), 418 MB of arrays beside the matrix's
# 3 GB (benchmarks/results/bm25-memory.md, 2 cores); larger sizes were not measured
MEMORY_ROWS = 1_000_000
ONCE_MEMORY_ROWS = 20_000  # ... and where a process searches once (the build: about 0.5 s at 20k rows)
QUERY_THREADS = 4  # threads for a table without an AsyncTable (`started`): its queries run side by side
Hits = tuple[list[int], list[str], np.ndarray]  # (Lance row ids, chunk ids, scores), best first
# per process id (a forked child gets its own threads), and whether for in-memory searches
_pools: dict[tuple[int, bool], ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _pool(memory: bool = False) -> ThreadPoolExecutor:
    """The threads that run full-text queries beside a search's vector ranking: QUERY_THREADS for a table's,
    or (`memory`) one a core for the in-memory index's, so concurrent searches (a server's) are not queued."""
    with _pools_lock:
        key = (os.getpid(), memory)
        pool = _pools.get(key)
        if pool is None:
            size = max(QUERY_THREADS, os.cpu_count() or 1) if memory else QUERY_THREADS
            pool = _pools[key] = ThreadPoolExecutor(size, thread_name_prefix="mrag-fulltext")
        return pool


def engine(choice: str | None, rows: int) -> str:
    """'memory' or 'lancedb': the caller's `choice`, else MRAG_FULLTEXT's, else 'auto'; 'auto' answers in
    memory up to MEMORY_ROWS rows."""
    value = choice or _variable() or "auto"
    if value not in ENGINES:
        raise ValueError(f"the full-text engine must be one of {', '.join(ENGINES)}, got {value!r}")
    if value == "auto":
        return "memory" if rows <= MEMORY_ROWS else "lancedb"
    return value


def searching_once(store: Any) -> None:
    """For a process that searches once (`mrag search`, `mrag ask`): LanceDB answers the full-text space, an
    in-memory index's build paying back only over many searches, unless MRAG_FULLTEXT says otherwise, or the
    index is small enough that the build costs little (ONCE_MEMORY_ROWS): there it ranks as the library and
    the server do (LanceDB's statistics still count rows deleted since its index was built)."""
    store.fulltext = _variable() or ("memory" if store.count() <= ONCE_MEMORY_ROWS else "lancedb")


def _variable() -> str:
    """MRAG_FULLTEXT's value ('' where unset)."""
    return os.environ.get(ENGINE_VARIABLE, "").strip()


def in_memory(matrix: Matrix, choice: str | None) -> Callable[[], Bm25] | None:
    """`FullTextRanker`'s `memory` for a loaded matrix where `engine` answers in memory: a call that returns
    the matrix's index, built at its first use."""
    return functools.partial(bm25.for_matrix, matrix) if engine(choice, len(matrix.ids)) == "memory" else None


class FullTextMissing(ValueError):
    """A search asked for the full-text space of a table that has no full-text index."""


def _index(table: Any) -> Any | None:
    """The table's full-text index on the text column, if any."""
    for index in table.list_indices():
        if str(index.index_type).upper() in ("FTS", "INVERTED") and list(index.columns) == [COLUMN]:
            return index
    return None


def has_index(table: Any) -> bool:
    return _index(table) is not None


def unindexed_rows(table: Any) -> int | None:
    """Rows the full-text index does not cover yet (None: no index)."""
    index = _index(table)
    return None if index is None else int(table.index_stats(index.name).num_unindexed_rows)


def needs_build(table: Any) -> bool:
    """Whether a write should (re)build the index: none yet on a table with rows, or too many rows
    left to the flat scan."""
    rows = table.count_rows()
    if rows == 0:
        return False
    waiting = unindexed_rows(table)
    if waiting is None:
        return True
    return waiting >= REBUILD_MIN and waiting > REBUILD_SHARE * max(1, rows - waiting)


def build(table: Any) -> None:
    """(Re)build the BM25 index on the text column with LanceDB's defaults for English (lower case,
    stemming, stop words removed, ASCII folding): what a LanceDB user gets from `create_fts_index`."""
    from lancedb.index import FTS

    table.create_index(COLUMN, config=FTS(), replace=True)


def search(table: Any, text: str, c: int) -> Hits:
    """The c best rows of `table` for `text` by BM25: (Lance row ids, chunk ids, scores), best first,
    ties to the smaller row id. A text with no searchable word (empty, only stop words) finds nothing;
    quotes, AND, OR, +, - and * are words or nothing, never query syntax."""
    check(table)
    return _query(table, text, c)


def check(table: Any) -> None:
    """Refuse a table without a full-text index, saying how to build one."""
    if not has_index(table):
        raise FullTextMissing("this index has no full-text index yet: `mrag optimize --db PATH` "
                              "(or `Index.optimize()`) builds it, and so does any write")


def _query(table: Any, text: str, c: int) -> Hits:
    """`search` on a table known to have the index."""
    return started(table, [text], c)()[0]


def started(table: Any, texts: list[str], c: int, ids: bool = True, where: str | None = None
            ) -> Callable[[], list[Hits]]:
    """Start the full-text searches of `texts` on `table`; -> a call that waits for their hits, in order.
    A local table's searches go to LanceDB together (`connection.together`); other tables' (none that
    mrag opens) run on a pool through the synchronous API. Without `ids` the hits carry no chunk ids
    (an empty list): reading them cost a fifth of a story's searches at 141k rows (`FullTextRanker`).
    `where`: only the rows this filter keeps (`mrag.retrieve.filtered`), applied before ranking."""
    inner = async_table(table)
    if inner is None:
        pool = _pool()
        pending = [pool.submit(_query_sync, table, text, c, ids, where) for text in texts]
        return lambda: [f.result() for f in pending]
    return together([_query_async(inner, text, c, ids, where) for text in texts])


def _match(text: str) -> Any:
    """The words as they are (any of them, BM25-ranked): a plain string would go through LanceDB's
    query parser, where quotes make a phrase query (an error without positions) and AND/OR/- operate."""
    from lancedb.query import MatchQuery

    return MatchQuery(text, COLUMN)  # type: ignore[call-arg]  # a pydantic dataclass: mypy misses its defaults


def _query_sync(table: Any, text: str, c: int, ids: bool = True, where: str | None = None) -> Hits:
    """One search through LanceDB's synchronous API (tables without an AsyncTable)."""
    if not text.strip() or c <= 0:
        return [], [], np.zeros(0)
    query = table.search(_match(text), query_type="fts").select(_columns(ids)).with_row_id(True).limit(c)
    return _hits((query if where is None else query.where(where, prefilter=True)).to_arrow())


async def _query_async(inner: Any, text: str, c: int, ids: bool = True, where: str | None = None) -> Hits:
    """One search on the AsyncTable: the query the synchronous API builds, in one call (its filter applied
    before ranking, as the asynchronous API does unless told otherwise)."""
    if not text.strip() or c <= 0:
        return [], [], np.zeros(0)
    query = inner.query().nearest_to_text(_match(text)).select(_columns(ids)).with_row_id().limit(c)
    return _hits(await (query if where is None else query.where(where)).to_arrow())


def _columns(ids: bool) -> list[str]:
    return ["id", "_score"] if ids else ["_score"]


def _hits(found: Any) -> Hits:
    """A search's Arrow result as hits, best first, ties to the smaller row id (no chunk ids: [])."""
    row_ids = np.asarray(found["_rowid"].to_pylist(), dtype=np.int64)
    scores = np.asarray(found["_score"].to_pylist(), dtype=np.float64)
    order = np.lexsort((row_ids, -scores))  # LanceDB returns ties in no fixed order
    ids = found["id"].to_pylist() if "id" in found.column_names else None
    return [int(row_ids[i]) for i in order], [] if ids is None else [ids[i] for i in order], scores[order]


@dataclass
class _RowIndex:
    """Lance row id -> matrix row, for the last matrix seen: its row ids where they ascend (a table that
    was only appended to and deleted from), else their sorted copy and its order (16 bytes a row; 24 ms
    at 1M rows), searched by bisection. No dict: 1M int keys took 97 MiB and 0.3 s."""

    row_ids: Any = None
    sorted_ids: Any = None
    order: Any = None  # sorted position -> matrix row; None where the row ids ascend
    lock: threading.Lock = field(default_factory=threading.Lock)

    def rows(self, row_ids: np.ndarray, found: list[int]) -> np.ndarray:
        """The matrix row of each found Lance row id, -1 where the matrix has none."""
        with self.lock:  # the row ids and their index change together
            if self.row_ids is not row_ids:
                ascending = bool(np.all(row_ids[1:] > row_ids[:-1]))
                self.order = None if ascending else np.argsort(row_ids, kind="stable")
                self.sorted_ids = row_ids if ascending else row_ids[self.order]
                self.row_ids = row_ids
            sorted_ids, order = self.sorted_ids, self.order
        keys = np.asarray(found, dtype=np.uint64)
        at = np.minimum(np.searchsorted(sorted_ids, keys), max(len(sorted_ids) - 1, 0))
        hit = (sorted_ids[at] == keys) if len(sorted_ids) else np.zeros(len(keys), bool)
        return np.where(hit, at if order is None else order[at], -1).astype(np.int64)


_ROWS = _RowIndex()


def matrix_rows(row_ids: np.ndarray, found: Any) -> np.ndarray:
    """The matrix row of each found Lance row id, -1 where the matrix (its `row_ids`) has none."""
    return _ROWS.rows(row_ids, found)


class FullTextRanker:
    """A `mrag.retrieve.types.Ranker`: the `bm25` voter by full-text search on `table`, the others by `inner`.

    Exact search numbers rows by their position in the matrix: the hits are placed by the matrix's
    Lance row ids (`row_ids`), and their chunk ids are not read. The ANN ranker (`ann`) numbers the
    rows it found in Lance row-id order, and the full-text hits join that numbering. `cache` keeps
    each text's full-text ranking (the evaluation asks the same text for several strategies). A filtered
    search (`mrag.retrieve.filtered`) gives LanceDB its filter (`where`), the in-memory index the rows it
    keeps (`allowed`, (N,) bool)."""

    def __init__(self, inner: Ranker, table: Any, row_ids: np.ndarray | None = None, ann: Any = None,
                 cache: bool = False, memory: Callable[[], Bm25] | None = None, where: str | None = None,
                 allowed: np.ndarray | None = None) -> None:
        if (row_ids is None) == (ann is None):
            raise ValueError("give either the matrix's row ids (exact search) or the ANN ranker")
        if memory is not None and ann is not None:
            raise ValueError("the in-memory full-text index numbers the matrix's rows: exact search only")
        self.inner, self.table, self.row_ids, self.ann, self.memory = inner, table, row_ids, ann, memory
        self.where, self.allowed = where, allowed
        self._cache: dict[tuple[str, int], Any] | None = {} if cache else None  # (text, c) -> its hits
        self._checked = False

    def _started(self, texts: list[str], c: int) -> tuple[Callable[[], list[Any]], bool]:
        """The texts' full-text hits, through the cache where kept; -> a call that waits for them all. They
        start now and run beside the vector ranking: LanceDB's queries (`started`), which give `Hits`, or the
        in-memory index's on a pool thread (numba's loops let go of the GIL), which give (matrix rows, scores)."""
        memory, ids, allowed = self.memory, self.row_ids is None, self.allowed  # ANN: rows by chunk id

        def start(some: list[str]) -> Callable[[], list[Any]]:
            if not some:  # nothing to search: the index is not even built
                return list
            if memory is None:
                return started(self.table, some, c, ids, self.where)
            # beside one-thread graph walks (`walk.one_thread`)
            return _pool(memory=True).submit(lambda: memory().search(some, c, allowed)).result

        if self._cache is None:
            return start(texts), bool(texts)
        cache = self._cache
        missing = list(dict.fromkeys(t for t in texts if (t, c) not in cache))
        wait = start(missing)

        def hits() -> list[Any]:
            cache.update(((t, c), found) for t, found in zip(missing, wait()))
            return [cache[(t, c)] for t in texts]

        return hits, bool(missing)

    def __call__(self, chosen: list[Voter], queries: list[QueryVectors], c: int) -> tuple[np.ndarray, np.ndarray]:
        full = [s for s, v in enumerate(chosen) if v.group == FULLTEXT]
        if not full:
            return self.inner(chosen, queries, c)
        if not self._checked:  # once per ranker: a search's (or an evaluation's) snapshot
            check(self.table)
            self._checked = True
        # the query parts' full-text searches run beside each other and beside the vector ranking
        wait, searching = self._started([q.text for q in queries], c)
        vector = [s for s, v in enumerate(chosen) if v.group != FULLTEXT]
        ranking = np.full((len(queries), len(chosen), c), -1, dtype=np.int64)
        sims = np.full((len(queries), len(chosen), c), -np.inf)
        if vector:
            with walk.fulltext_beside() if searching else nullcontext():  # graph walks leave a core to the full text
                inner_ranking, inner_sims = self.inner([chosen[s] for s in vector], queries, c)
            ranking[:, vector], sims[:, vector] = inner_ranking, inner_sims
        hits = wait()
        if self.memory is not None:  # in memory: matrix rows already
            rows, scores = [found for found, _ in hits], [score for _, score in hits]
        elif self.row_ids is not None:  # exact: the matrix row of each Lance row id
            placed = [_ROWS.rows(self.row_ids, row_ids) for row_ids, _, _ in hits]
            rows, scores = [at[at >= 0] for at in placed], [score[at >= 0] for at, (_, _, score) in zip(placed, hits)]
        else:
            rows = self._join_ann(ranking, vector, hits, bool(vector))
            scores = [score for _, _, score in hits]
        for p, (found, score) in enumerate(zip(rows, scores)):
            for s in full:
                ranking[p, s, : len(found)], sims[p, s, : len(found)] = found, score
        return ranking, sims

    def _join_ann(self, ranking: np.ndarray, vector: list[int], hits: list[Any], asked: bool) -> list[np.ndarray]:
        """Number the ANN ranker's rows and the full-text hits together, in Lance row-id order (as the
        ANN ranker does), renumbering the vector voters' rankings in place; -> each part's hit rows."""
        old_rows: list[int] = list(self.ann.row_ids) if asked else []
        old_ids: list[str] = list(self.ann.ids) if asked else []
        chunk_of = dict(zip(old_rows, old_ids))
        for row_ids, ids, _ in hits:
            chunk_of.update(zip(row_ids, ids))
        row_ids = sorted(chunk_of)
        local = {r: n for n, r in enumerate(row_ids)}
        if vector and old_rows:
            remap = np.array([local[r] for r in old_rows], dtype=np.int64)
            part = ranking[:, vector]
            ranking[:, vector] = np.where(part >= 0, remap[np.maximum(part, 0)], -1)
        self.ann.row_ids, self.ann.ids = row_ids, [chunk_of[r] for r in row_ids]
        return [np.array([local[r] for r in found], dtype=np.int64) for found, _, _ in hits]


def keep(table: Any) -> bool:
    """Inside a write, before its commit: (re)build the index when `needs_build` says so, so that
    it is part of that commit; -> whether it was built. Every write of documents runs it."""
    if not needs_build(table):
        return False
    build(table)
    return True


def maintain(store: Any, force: bool = False) -> bool:
    """Build the full-text index when the table has none or it lags (`needs_build`), or now (`force`),
    in a committed write of its own; -> whether it was built."""
    if not force and not store.reading(needs_build):
        return False
    with store.writing(maintain=False):  # under the lock, again: another writer may have built it
        if not force:
            return keep(store.chunks)
        build(store.chunks)
        return True
