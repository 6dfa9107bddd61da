"""ANN search in two steps: candidates from the standard vector's index, then every space scored
exactly over them.

`AnnRanker` asks one index per space (13 for MiniLM: the standard vector and 12 heads), each
probing `nprobes` partitions for every query part: at 1M rows the default's six-part query is 13
searches of 6 vectors each, and was no faster than the exact scan. `RescoreRanker` asks only the standard
vector's index, once for all parts (LanceDB takes several query vectors in one search), keeps each
part's `candidates` nearest rows, takes those rows' stored vectors in every space (one take of a
few hundred to a few thousand rows) and ranks every space exactly over the pooled candidates. The
vote is the same, over the same spaces; a head's list misses the rows that no part's standard vector
placed among its nearest `candidates`.

Measured (`benchmarks/results/ann-1m.md`), it is opt-in (`search(..., candidates=N)`), not the default:
on real MiniLM rows the heads vote for rows the standard vector does not see as near (5% of the exact
default's top 10 lie beyond standard rank 229 of 16k rows), so recall stays at 0.63-0.90 where one
index per space reaches 0.73-0.99; and at 1M the take of the pooled rows' vectors costs more than the
13 index searches it replaces.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mrag.retrieve.ann import query_vector
from mrag.retrieve.types import QueryVectors, Voter
from mrag.rows import space_column
from mrag.scales import split_unit
from mrag.settings import DEFAULT_CANDIDATES, DEFAULT_NPROBES


class RescoreRanker:
    """A `types.Ranker`: the standard vector's ANN index proposes, every space's stored vectors decide.

    Its rankings number rows locally, in Lance row-id order (the table's order, so ties break as on the
    exact path); `ids[i]` is local row i's chunk id and `row_ids[i]` its Lance row id. All the parts of a
    call share one pool of candidates (each part's `candidates` nearest standard vectors); `where` keeps the
    candidates to the rows a filter keeps. `rows`: the candidates themselves (Lance row ids, the few rows a
    filter keeps), ranked exactly in every space with no index asked."""

    def __init__(
        self,
        table: Any,
        columns: dict[str, str],
        nprobes: int = DEFAULT_NPROBES,
        candidates: int = DEFAULT_CANDIDATES,
        refine: int | None = None,
        where: str | None = None,
        rows: np.ndarray | None = None,
    ) -> None:
        if candidates <= 0 and rows is None:
            raise ValueError(f"candidates must be positive, got {candidates}")
        self.table, self.columns, self.nprobes, self.refine, self.where = table, columns, nprobes, refine, where
        self.candidates = candidates
        self.rows = None if rows is None else sorted(int(r) for r in rows)
        self.ids: list[str] = []
        self.row_ids: list[int] = []

    def __call__(self, chosen: list[Voter], queries: list[QueryVectors], c: int) -> tuple[np.ndarray, np.ndarray]:
        missing = [v.name for v in [Voter("standard", "standard", 1.0), *chosen] if v.name not in self.columns]
        if missing:
            raise ValueError(f"space {missing[0]!r} has no ANN column; search it exactly")
        self.row_ids = self._propose(queries, max(c, self.candidates)) if self.rows is None else self.rows
        columns = list(dict.fromkeys(self.columns[v.name] for v in chosen))
        rows = self._take(self.row_ids, columns)
        self.ids = rows.pop("id")
        stored = {v.name: rows[self.columns[v.name]] for v in chosen}
        return rank_candidates(chosen, queries, stored, c)

    def _propose(self, queries: list[QueryVectors], limit: int) -> list[int]:
        """The Lance row ids of every part's `limit` nearest standard vectors, ascending."""
        vectors = np.stack([q.standard for q in queries]).astype(np.float32)
        query = (
            self.table.search(vectors if len(vectors) > 1 else vectors[0], vector_column_name=self.columns["standard"])
            .distance_type("cosine")
            .limit(limit)
            .nprobes(self.nprobes)
            .select(["_distance"])  # named: LanceDB warns on every search otherwise
            .with_row_id(True)
        )
        if self.where is not None:  # only the rows the filter keeps are candidates (`mrag.retrieve.filtered`)
            query = query.where(self.where, prefilter=True).maximum_nprobes(0)  # `ann.AnnRanker`: probe on to `limit`
        result = (query.refine_factor(self.refine) if self.refine else query).to_arrow()
        return sorted({int(r) for r in result["_rowid"].to_pylist()})

    def _take(self, row_ids: list[int], columns: list[str]) -> dict[str, Any]:
        """id (list) and each column's vectors (n, d) of the rows, in the order of `row_ids`."""
        if not row_ids:
            return {"id": [], **{c: np.zeros((0, 1), np.float32) for c in columns}}
        found = self.table.take_row_ids(row_ids).select(["id", *columns]).with_row_id().to_arrow()
        order = np.argsort(found["_rowid"].to_numpy())  # take returns rows in no promised order
        out: dict[str, Any] = {"id": [found["id"][int(i)].as_py() for i in order]}
        for column in columns:
            values = found[column].combine_chunks()
            width = values.type.list_size
            vectors = values.values.to_numpy(zero_copy_only=False).reshape(-1, width)[order].astype(np.float32)
            # an external space's vectors are stored as its function made them: made unit, as the matrix has them
            out[column] = split_unit(vectors)[1] if column.startswith(space_column("")) else vectors
        return out


def rank_candidates(
    chosen: list[Voter], queries: list[QueryVectors], stored: dict[str, np.ndarray], c: int
) -> tuple[np.ndarray, np.ndarray]:
    """Every space's top c among the candidate rows, exactly: cosine of the unit query vector with each
    stored unit vector, best first, ties to the lower row.  stored: voter name -> (n, d) vectors of the
    n candidates -> rankings and similarities (P, S, c), -1 / -inf past the n-th row."""
    n = len(next(iter(stored.values()))) if stored else 0
    ranking = np.full((len(queries), len(chosen), c), -1, dtype=np.int64)
    sims = np.full((len(queries), len(chosen), c), -np.inf)
    if n == 0:
        return ranking, sims
    take = min(c, n)
    for s, voter in enumerate(chosen):
        q = np.stack([query_vector(voter, query) for query in queries]).astype(np.float32)  # (P, d)
        scores = q @ stored[voter.name].T  # (P, n)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :take]  # stable: ties to the lower row
        ranking[:, s, :take] = order
        sims[:, s, :take] = np.take_along_axis(scores, order, axis=1)
    return ranking, sims
