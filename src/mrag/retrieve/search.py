"""Reading an index: embed the queries once, rank every space (exactly in memory or through the
ANN indexes), vote (`strategies`), and fetch the hits' rows. `Index.search` and
`Index.search_many` are the front door; this module is what they run."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from mrag.documents import check_utf8, clean_text
from mrag.embed.base import Embeddings, HeadEmbedder
from mrag.errors import Busy
from mrag.locking import is_local
from mrag.manifest import Manifest
from mrag.retrieve import ann, filter_sql, filtered, fulltext, graph, walk
from mrag.retrieve import strategies as retrieve
from mrag.retrieve.device_scan import exact_ranker, scan_device
from mrag.retrieve.rescore import RescoreRanker
from mrag.retrieve.types import Hit
from mrag.settings import DEFAULT_CANDIDATES, names
from mrag.spaces import Space
from mrag.store import READ_TRIES, Store, pruned


class Searchable(Protocol):
    """What a search reads from an index (`mrag.index.Index` is one)."""

    store: Store

    @property
    def embedder(self) -> HeadEmbedder: ...

    @property
    def spaces(self) -> list[Space]: ...

    def space_weights(self, manifest: Manifest | None = None) -> retrieve.Scales: ...

HIT_COLUMNS = ["text", "source", "title", "doc_id", "position", "metadata"]
MOVED_TRIES = 8  # a search that saw another commit mid-way tries again, up to this many times in all,
MOVED_WAIT_S = 0.02  # first after this wait, then twice as long each time (at most 0.5 s): 1.6 s in all


class Moved(Exception):  # noqa: N818 - a signal to search again, not an error
    """A commit became visible to this process in the middle of a search's reads."""


def search_many(
    index: Searchable,
    queries: Sequence[str],
    k: int = 5,
    strategy: str = retrieve.DEFAULT_STRATEGY,
    c: int | None = None,
    subqueries: Sequence[Sequence[str]] | None = None,
    spaces: Sequence[str] | None = None,
    exact: bool | None = None,
    nprobes: int | None = None,
    candidates: int | None = None,
    where: str | None = None,
) -> list[list[Hit]]:
    """The top k hits of each query (see `Index.search`)."""
    if isinstance(queries, str):
        raise TypeError("queries must be a list of strings, not one string (use Index.search)")
    if isinstance(spaces, str):  # "standard,bm25", as --spaces takes them
        spaces = names(spaces)
    for query in queries:
        check_utf8(query, "the query")  # bytes that are not UTF-8 in an argument: no tokenizer takes them
    queries = [clean_text(q) if isinstance(q, str) else q for q in queries]  # as the documents' text is indexed
    subqueries = None if subqueries is None else [[clean_text(q) if isinstance(q, str) else q for q in subs]
                                                   for subs in subqueries]
    if any(not q or not q.strip() for q in queries):
        raise ValueError("the query is empty")
    if c is not None and c <= 0:
        raise ValueError(f"the per-space depth c must be positive, got {c}")
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    if nprobes is not None and nprobes <= 0:
        raise ValueError(f"nprobes must be positive, got {nprobes}")
    if candidates is not None and candidates < 0:
        raise ValueError(f"candidates must be 0 (per-space indexes) or positive, got {candidates}")
    where = filter_sql.check_where(where)
    moved = failed = 0  # tries that saw another commit mid-way, and that failed to read
    while True:
        seen = index.store.committed_version
        try:
            return _search_many(index, queries, k, strategy, c, subqueries, spaces, exact, nprobes, candidates, where)
        except Moved:
            moved += 1
            if moved == MOVED_TRIES:
                raise Busy(f"the index changed during {MOVED_TRIES} tries of this search (writes at every "
                           "moment?): search again") from None
            time.sleep(min(MOVED_WAIT_S * 2 ** (moved - 1), 0.5))  # other threads are reading the newer commit
        except Exception as e:
            failed += 1
            index.store.refresh()
            # a newer commit, or a file of the version read gone (its reads may have begun before `seen` was taken,
            # as the full-text index's build from the matrix's version): else the same search fails again
            if (index.store.committed_version == seen and not pruned(e)) or failed == READ_TRIES:
                raise


def _search_many(
    index: Searchable,
    queries: Sequence[str],
    k: int,
    strategy: str,
    c: int | None,
    subqueries: Sequence[Sequence[str]] | None,
    spaces: Sequence[str] | None,
    exact: bool | None,
    nprobes: int | None,
    candidates: int | None = None,
    where: str | None = None,
) -> list[list[Hit]]:
    """One try of `search_many` at the committed version it reads first; it fails when that version is
    pruned meanwhile (another process's maintenance), and `search_many` tries the latest one."""
    plan = retrieve.parse_strategy(strategy)
    if plan.expand == "fusion":
        parts = [[q for q in subs if q.strip()] for subs in subqueries or [[] for _ in queries]]
        if len(parts) != len(queries) or not all(parts):
            raise ValueError(f"strategy {strategy!r} needs sub-queries")
    elif subqueries is not None and any(any(q.strip() for q in subs) for subs in subqueries):
        raise ValueError(f"sub-queries are for the fusion strategies (fusion, mrag-fusion); {strategy!r} uses none")
    else:
        parts = [retrieve.query_parts(strategy, q) for q in queries]
    index.store.refresh(quick=True)  # first: it follows other processes' commits, which all below then reads
    # every read below is of this one manifest: the weights of one commit with the rows of another would give
    # a result of no committed state
    manifest = index.store.manifest
    scales = index.space_weights(manifest)
    labels = list(manifest.space_dims())
    if spaces is not None:
        retrieve.check_selection(spaces, index.store.n_heads, len(scales["split"]), labels)
    embeds = retrieve.uses_vectors(strategy, spaces)  # else the full-text space alone: no model to load
    per_part = c or max(k, retrieve.DEFAULT_C)  # each space's depth for a query part
    ranker, fetch, count = ranker_for(index.store, plan, exact, nprobes, candidates,
                                      heads=retrieve.uses_heads(strategy, spaces),
                                      device=(lambda: scan_device(getattr(index.embedder, "device", None))) if embeds
                                      else None, where=where, depth=per_part)
    if index.store.manifest is not manifest:  # another thread read a newer commit meanwhile: the ranker may be
        raise Moved  # of it (a manifest is replaced, never changed): `search_many` searches again
    if not queries or count == 0:
        return [[] for _ in queries]  # nothing to rank: no need to embed the queries
    texts = [t for q, p in zip(queries, parts) for t in (p or [q])]  # a segmented query votes by its parts
    if embeds:
        emb = index.embedder.embed(texts, kind="query")
        emb.check_queries(texts)
    else:  # vectors of no direction, which no voter of these reads
        store = index.store
        emb = Embeddings(np.zeros((len(texts), store.dim), np.float32),
                         np.zeros((len(texts), store.n_heads, store.head_dim), np.float32))
    live = [s for s in index.spaces if plan.base in retrieve.EXTRA_SPACE_STRATEGIES and s.name in (spaces or labels)]
    extra = {s.name: retrieve.unit(s.embed(texts, kind="query")) for s in live}
    vectors = [
        retrieve.QueryVectors(retrieve.unit(s), retrieve.unit(h), {n: v[i] for n, v in extra.items()}, texts[i])
        for i, (s, h) in enumerate(zip(emb.standard, emb.heads))
    ]
    batch, start = [], 0
    for p in parts:
        mine = vectors[start : start + max(1, len(p))]
        batch.append((mine[0], mine if p else None))
        start += len(mine)
    depth = min(per_part, count)  # never deeper than the index has rows
    results = retrieve.vote_many(  # every label: a strategy that votes with none of the selected names says so
        strategy, batch, min(k, count), depth, scales, ranker, index.store.n_heads, labels, spaces
    )
    rows = fetch(sorted({int(r) for result in results for r in result.rows}))
    return [
        [_hit(rows[int(r)], score, votes) for r, score, votes in zip(result.rows, result.scores, result.votes)]
        for result in results
    ]


def ranker_for(
    store: Store, plan: retrieve.Plan, exact: bool | None, nprobes: int | None = None, candidates: int | None = None,
    heads: bool = True, device: Callable[[], str] | None = None, where: str | None = None, depth: int = 0,
) -> tuple[retrieve.Ranker, Callable[[list[int]], dict[int, dict[str, Any]]], int]:
    """How to find each space's nearest rows: the ANN indexes or the in-memory matrix, as the
    manifest last read records them; on the ANN path `candidates` per query part from the standard
    index re-scored in every space (`rescore`; None: the default, 0: one index per space, `ann`); without
    `heads` the in-memory matrix leaves the head vectors out; `device`: where the matrix is scanned
    (`device_scan.scan_device`), asked only for a matrix with rows (it may load the embedder); None: the CPU.
    `where`: only the rows this filter keeps are ranked (`filtered`; in memory, never through the graphs); on the
    ANN path exactly, no index asked, where they are at most `ann.EXACT_KEPT` or the per-part `depth` searched.
    -> (ranker, fetch: row numbers -> stored rows, how many rows it ranks)."""
    built: dict[str, Any] = store.manifest.ann or {}
    sql = None if where is None else filter_sql.sql(where)  # as LanceDB is given it
    graphs = built.get("index_type") == graph.INDEX_TYPE  # in-process graphs over the matrix, not LanceDB's
    covered = bool(built) and not graphs and not plan.base.startswith("split")  # split slices have no ANN column
    if exact is False and not covered and not graphs:
        raise ValueError("the split slices have no ANN index: use another strategy, or search exactly" if built else
                         "this index has no ANN index: build one with `mrag index --build-ann`, or search exactly")
    if covered and not exact:
        refine = ann.DEFAULT_REFINE if built["index_type"] == "IVF_PQ" else None
        columns = {c.space: c.column for c in store.vector_columns(committed=True)}
        probes = nprobes or built.get("nprobes", ann.DEFAULT_NPROBES)
        pool = DEFAULT_CANDIDATES if candidates is None else candidates
        table = store.snapshot()
        # the rows a filter keeps, as the exact path finds them (LanceDB's count_rows refused `_rowid = 3`)
        kept = None if where is None else filtered.matching_row_ids(table, where)
        ranker: ann.AnnRanker | RescoreRanker = (
            RescoreRanker(table, columns, probes, refine=refine, rows=kept)  # few: ranked exactly, no index asked
            if kept is not None and len(kept) <= max(ann.EXACT_KEPT, depth)
            else RescoreRanker(table, columns, probes, pool, refine, sql) if pool and plan.base != "standard"
            else ann.AnnRanker(table, columns, probes, refine, sql)
        )

        def by_row_id(rows: list[int]) -> dict[int, dict[str, Any]]:
            found = store.take(ranker.table, HIT_COLUMNS, row_ids=[ranker.row_ids[r] for r in rows])
            return {r: found[ranker.ids[r]] for r in rows}

        # the full-text space joins the ANN ranker's numbering of the rows (`fulltext.FullTextRanker`)
        rows = table.count_rows() if kept is None else len(kept)
        return fulltext.FullTextRanker(ranker, table, ann=ranker, where=sql), by_row_id, rows
    matrix = store.matrix(refresh=False, heads=heads)  # without the heads when no head votes
    scan_on = device() if device is not None and len(matrix.ids) else "cpu"
    ranked: retrieve.Ranker = exact_ranker(matrix.standard, matrix.heads, matrix.extra, scan_on)
    keep = None if where is None else filtered.allowed(matrix, where, fulltext.matrix_rows)
    if keep is not None:
        ranked = filtered.Filtered(ranked, keep, lambda rows: exact_ranker(
            matrix.standard[rows], matrix.heads[:, rows], {s: v[rows] for s, v in matrix.extra.items()}, scan_on))
    else:
        filtered.forget_gone()  # what filters kept of older matrices goes with them (their copies of rows)
        if graphs and not exact and is_local(store.uri):  # HNSW: the newest graphs that fit the matrix, if any
            store.graphs = graph.latest(graph.folder(store.uri), matrix, store.graphs)
            if store.graphs is not None:
                ranked = walk.GraphRanker(matrix, store.graphs, ranked,
                                          nprobes or built.get("nprobes", graph.DEFAULT_EF))

    def by_row(rows: list[int]) -> dict[int, dict[str, Any]]:
        if matrix.row_ids is None:
            found = store.take(matrix.table, HIT_COLUMNS, offsets=rows)
        else:  # by row id: once rows were deleted, a take by position cost 17.6 ms at 200k rows, by id 5.0
            found = store.take(matrix.table, HIT_COLUMNS, row_ids=[int(matrix.row_ids[r]) for r in rows])
        return {r: found[matrix.ids[r]] for r in rows}

    # the full-text space in memory (`bm25`) or through LanceDB's index, as `fulltext.engine` decides
    hits = fulltext.FullTextRanker(ranked, matrix.table, row_ids=matrix.row_ids,
                                   memory=fulltext.in_memory(matrix, store.fulltext), where=sql,
                                   allowed=None if keep is None else keep.mask)
    return hits, by_row, len(matrix.ids) if keep is None else len(keep.rows)


def _hit(row: dict[str, Any], score: float, votes: list[dict[str, Any]]) -> Hit:
    return Hit(
        id=row["id"],
        score=float(score),
        text=row["text"],
        source=row["source"],
        title=row["title"],
        doc_id=row["doc_id"],
        position=row["position"],
        metadata=json.loads(row["metadata"] or "{}"),
        votes=votes,
    )
