"""Approximate search through LanceDB's vector indexes: one index per space (the standard vector,
each head column, every external space) and a ranker that asks them instead of scanning memory.

Built by `Index.build_ann` (`mrag index --build-ann`, or by `mrag index` once an index reaches
`ANN_THRESHOLD` rows). Rows written after a build are still found: LanceDB scans the rows its
indexes do not cover yet, and deleted rows are never returned. Split-RAG's slices have no column of
their own, so the `split` strategies always search exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from mrag.connection import async_table, together
from mrag.retrieve.types import QueryVectors, Voter
from mrag.rows import fixed
from mrag.settings import ANN_THRESHOLD, DEFAULT_INDEX, DEFAULT_NPROBES, INDEX_TYPES  # noqa: F401  (re-exported)

DEFAULT_REFINE = 5  # IVF_PQ re-ranks refine x c candidates on the full vectors
# a filter that keeps at most this many rows has them ranked exactly (their vectors taken, no index asked): the
# partitions an IVF index probes may hold few of them, and probing on until c are found probed every partition
# (benchmarks/results/filter-ann.md: 1,111 rows kept of 100k, `mrag` 126 ms taken, 985 through the indexes)
EXACT_KEPT = 2048


def needs_ann(
    rows: int, built: dict[str, Any] | None, threshold: int = ANN_THRESHOLD, unindexed: int | None = None
) -> bool:
    """Whether `mrag index` should (re)build the ANN indexes: from `threshold` rows, and again once
    the rows the indexes do not cover (new or replaced since the build; LanceDB scans them flat)
    are more than a quarter of those they do, at any size (indexes built by hand, or under a lower
    threshold, are kept up). `unindexed` defaults to the growth since the build. `threshold` 0: never."""
    if threshold <= 0:
        return False
    if built is None:
        return rows >= threshold
    waiting = rows - int(built.get("rows", 0)) if unindexed is None else unindexed
    return waiting > 0.25 * max(1, rows - waiting)


def unindexed_rows(table: Any) -> int | None:
    """Rows of `table` that the standard vector's ANN index does not cover (None: no index)."""
    for index in table.list_indices():
        if list(index.columns) == ["vector"]:
            return int(table.index_stats(index.name).num_unindexed_rows)
    return None


def index_config(index_type: str, dim: int, n_rows: int) -> Any:
    """LanceDB's index settings for one column of `dim` floats (cosine, partitions ~ sqrt(rows))."""
    from lancedb.index import HnswSq, IvfFlat, IvfPq

    partitions = max(1, int(math.sqrt(n_rows)))
    if index_type == "IVF_FLAT":
        return IvfFlat(distance_type="cosine", num_partitions=partitions)
    if index_type == "IVF_PQ":  # 4 dims per code byte keeps small head vectors accurate
        sub = next(s for s in (dim // 4, dim // 2, dim, 1) if s >= 1 and dim % s == 0)
        return IvfPq(distance_type="cosine", num_partitions=partitions, num_sub_vectors=sub)
    if index_type == "IVF_HNSW_SQ":
        return HnswSq(distance_type="cosine", num_partitions=max(1, n_rows // 50_000))
    raise ValueError(f"unknown ANN index type {index_type!r}; choose one of {', '.join(INDEX_TYPES)}")


def build(
    table: Any,
    columns: dict[str, int],
    index_type: str = DEFAULT_INDEX,
    progress: Callable[[str], None] | None = None,
) -> None:
    """One vector index per column (name -> dim) of `table`, replacing any earlier one."""
    n_rows = table.count_rows()
    configs = {column: index_config(index_type, dim, n_rows) for column, dim in columns.items()}  # checks first
    for column, config in configs.items():
        try:
            table.create_index(column, config=config, replace=True)
        except RuntimeError:
            # cosine k-means trains on the rows whose vector is not zero: fewer than the partitions
            # (a small index of texts that some head maps to zero) fail. Train on those rows, or where
            # there are none leave the column to LanceDB's flat scan; any other failure stands.
            trainable = trainable_rows(table, column, columns[column])
            if trainable == n_rows:
                raise
            if trainable:
                table.create_index(column, config=index_config(index_type, columns[column], trainable), replace=True)
        if progress:
            progress(column)


def drop_indexes(table: Any, columns: set[str]) -> None:
    """Drop LanceDB's indexes on these columns (inside a write): the vector indexes, the full-text one stays."""
    for index in table.list_indices():
        if set(index.columns) <= columns:
            table.drop_index(index.name)


def trainable_rows(table: Any, column: str, dim: int) -> int:
    """Rows of `table` whose vector in `column` (dim floats) is not all zeros."""
    data = table.search().select([column]).limit(None).to_arrow()[column]
    return int(np.count_nonzero(np.any(fixed(data, len(data), dim) != 0, axis=1)))


class AnnRanker:
    """A `types.Ranker` over a table's ANN indexes: each space is asked once for all query
    parts (LanceDB takes several query vectors at once), every space's query sent together.

    Its rankings number rows locally; `ids[i]` is local row i's chunk id. `where`: only the rows this filter
    keeps (`mrag.retrieve.filtered`), applied before the indexes are searched."""

    def __init__(
        self, table: Any, columns: dict[str, str], nprobes: int = DEFAULT_NPROBES, refine: int | None = None,
        where: str | None = None,
    ) -> None:
        self.table, self.columns, self.nprobes, self.refine, self.where = table, columns, nprobes, refine, where
        self.ids: list[str] = []  # local row number -> chunk id
        self.row_ids: list[int] = []  # local row number -> Lance row id (to fetch the row)

    def __call__(self, chosen: list[Voter], queries: list[QueryVectors], c: int) -> tuple[np.ndarray, np.ndarray]:
        missing = [v.name for v in chosen if v.name not in self.columns]
        if missing:
            raise ValueError(f"space {missing[0]!r} has no ANN column; search it exactly")
        inner = async_table(self.table)
        if inner is not None:  # every space's query sent to LanceDB together
            found = together([self._search_async(inner, v, queries, c) for v in chosen])()
        else:
            with ThreadPoolExecutor(max_workers=min(8, len(chosen))) as pool:
                found = list(pool.map(lambda v: self._search(v, queries, c), chosen))
        # number the rows found in Lance row-id order, which is the table's order: votes that tie
        # then break as on the exact path, whose row numbers are table offsets. Which rows LanceDB returns
        # when more than c tie at the c-th place (copies of one text) is its own choice, and a batch and a
        # single query may get different ones
        chunk_of = {r: i for _, ids, _, lance_ids in found for i, r in zip(ids, lance_ids)}
        self.row_ids = sorted(chunk_of)
        self.ids = [chunk_of[r] for r in self.row_ids]
        local = {r: n for n, r in enumerate(self.row_ids)}
        ranking = np.full((len(queries), len(chosen), c), -1, dtype=np.int64)
        sims = np.full((len(queries), len(chosen), c), -np.inf)
        for s, (part, _, distance, lance_ids) in enumerate(found):
            rank = _ranks(part)  # position of each result within its query part
            keep = rank < c
            rows = np.array([local[r] for r in lance_ids], dtype=np.int64)
            ranking[part[keep], s, rank[keep]] = rows[keep]
            sims[part[keep], s, rank[keep]] = 1.0 - distance[keep]
        return ranking, sims

    def _search(
        self, voter: Voter, queries: list[QueryVectors], c: int
    ) -> tuple[np.ndarray, list[str], np.ndarray, list[int]]:
        """One space, every part, through LanceDB's synchronous API (tables without an AsyncTable):
        (part of each result, chunk ids, cosine distances, Lance row ids), best first per part."""
        vectors = self._vectors(voter, queries)
        query = (
            self.table.search(vectors if len(vectors) > 1 else vectors[0], vector_column_name=self.columns[voter.name])
            .distance_type("cosine")
            .limit(c)
            .nprobes(self.nprobes)
            .select(["id", "_distance"])  # named: LanceDB warns on every search otherwise
            .with_row_id(True)
        )
        if self.where is not None:  # probe past nprobes partitions while fewer than c of the filter's rows are found
            query = query.where(self.where, prefilter=True).maximum_nprobes(0)
        return _found((query.refine_factor(self.refine) if self.refine else query).to_arrow())

    async def _search_async(
        self, inner: Any, voter: Voter, queries: list[QueryVectors], c: int
    ) -> tuple[np.ndarray, list[str], np.ndarray, list[int]]:
        """`_search` on the table's AsyncTable: the query the synchronous API builds, in one call."""
        vectors = self._vectors(voter, queries)
        query = (
            inner.query()
            .nearest_to(vectors if len(vectors) > 1 else vectors[0])
            .column(self.columns[voter.name])
            .distance_type("cosine")
            .limit(c)
            .nprobes(self.nprobes)
            .maximum_nprobes(self.nprobes if self.where is None else 0)  # 0: probe on while short, as `_search`
            .select(["id", "_distance"])
            .with_row_id()
        )
        if self.where is not None:  # before the index is searched, as the asynchronous API filters by default
            query = query.where(self.where)
        return _found(await (query.refine_factor(self.refine) if self.refine else query).to_arrow())

    @staticmethod
    def _vectors(voter: Voter, queries: list[QueryVectors]) -> np.ndarray:
        return np.stack([query_vector(voter, q) for q in queries]).astype(np.float32)  # (P, d)


def _found(result: Any) -> tuple[np.ndarray, list[str], np.ndarray, list[int]]:
    """A space's Arrow result as (part of each result, chunk ids, cosine distances, Lance row ids),
    by part, then nearest first, then smaller row id."""
    part = result["query_index"].to_numpy() if "query_index" in result.column_names else np.zeros(len(result), int)
    distance = result["_distance"].to_numpy().astype(np.float64)
    ids, lance_ids = result["id"].to_pylist(), result["_rowid"].to_pylist()
    order = np.lexsort((np.array(lance_ids, dtype=np.uint64), distance, part))
    return part[order].astype(np.int64), [ids[i] for i in order], distance[order], [lance_ids[i] for i in order]


def query_vector(voter: Voter, query: QueryVectors) -> np.ndarray:
    """A query's unit vector in the voter's space."""
    if voter.group == "heads":
        return query.heads[voter.index]
    return query.standard if voter.name == "standard" else query.extra[voter.name]


def _ranks(part: np.ndarray) -> np.ndarray:
    """Rank of each entry within its run of equal `part` values (part sorted).  [0,0,1,1,1] -> [0,1,0,1,2]"""
    starts = np.searchsorted(part, part, side="left")
    return np.arange(len(part)) - starts
