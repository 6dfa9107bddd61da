"""In-process HNSW graphs (index type "HNSW", `mrag.retrieve.graph`) against the exact scan (issue 17,
target 2).

1. **Recall on real rows** (`--real`): the 141k real MiniLM rows that `bench_ann_1m.py --embed
   --man-pages 100000 --cache DIR` cached (the paper's Wikipedia articles and manual-page sentences), in an
   mrag index with its full-text index; `Index.build_ann("HNSW")` builds every space's graph (the
   standard vector and 12 heads). The paper's queries (every other one) and multi-aspect queries of
   six held-out manual-page sentences are ranked by each strategy's exact search and through the graphs
   at several ef; recall of the final top 10 against the exact search's, and the mean time per query
   of the ranking and vote (query vectors precomputed). The full-text space is answered where a search
   answers it (`fulltext.engine`: in memory at this size, unless MRAG_FULLTEXT says otherwise). On the
   graphs, two stages are also timed alone (`stage_ms`): the parts' full-text searches and the vote.
2. **Speed at `--rows` synthetic rows** (`--synthetic`; `bench_scale`'s clustered rows, no real text
   of that size here): graphs for the standard vector only (the vector space of the default
   `segment-bm25`; a matrix loaded without heads gives `graph.update` only that space), then
   `Index.search_many` end to end, batch 1 and 32, exact and graph configurations interleaved round by
   round; p50/p99 per query and recall@10 against exact (synthetic: noise around 2,000 centres, a hard
   case for a graph).

   With `--heads` every space's graph is built (as `build_ann` builds them), and `--append N` then times
   a write of N more rows and its graph maintenance (`graph.maintain`: the matrix read again, the graphs
   extended and written). `--delete N` then deletes N random rows in one write, times it (the commit and
   the graphs' upkeep), and times the strategies at batch 1 again on the graphs with removed nodes.
3. **Deletes** (`--deletes 500,1000,2000`): the real rows of 1. with every space's graph, then runs of
   `--delete-run` consecutive rows (one article's or manual page's sentences: a document, a topic)
   deleted one run a write, up to each count. The graphs are kept while `graph.walkable` (up to
   `graph.REMOVED_ROWS` removed nodes), skipping the removed nodes with a walk widened by twice their
   number, and are rebuilt past it. At each count, recall@10 and the time of the ranking and vote
   against the exact search of the rows left, for the manual-page queries and for queries about the
   deleted rows (64 of them, each one's own vectors and text: the hardest case, whose nearest live
   rows lie past the removed nodes), and the time of each delete (the commit and the graphs' upkeep).
   Last, the rebuild that every delete cost before.

Run: python benchmarks/bench_graph.py --real --cache DIR [--efs 32,64,128,256] [--name graph-141k]
     python benchmarks/bench_graph.py --deletes 500,1000,2000 --cache DIR [--efs 64,128,256] [--name graph-deletes]
     python benchmarks/bench_graph.py --synthetic --rows 1000000 [--queries 32 --rounds 3] [--heads] [--append N]
The committed results: `graph-141k` from `--real --cache DIR` (DIR as above); `graph-1m` from `--synthetic
--rows 1000000 --queries 32 --rounds 3 --efs 64,128 --strategy standard,segment+standard,segment-bm25 --name
graph-1m`; `graph-1m-heads` from the same with `--efs 128 --strategy standard,segment+standard,segment-bm25,mrag
--heads --append 25000 --name graph-1m-heads`; `graph-deletes` from `--deletes 500,1000,2000 --cache DIR --efs
64,128,256 --strategy standard,segment+standard,segment-bm25,mrag --name graph-deletes`; `graph-1m-delete` from
`--synthetic --rows 1000000 --queries 32 --rounds 1 --efs 128 --strategy standard,segment+standard --delete 1000
--name graph-1m-delete`.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import machine, markdown_table, peak_rss_mb, percentiles_ms, rss_mb, time_calls, write_results
from bench_ann_1m import CACHE, DATA, build_real, man_queries, real_queries, recall, vote_ids
from bench_scale import ClusteredEmbedder, queries
from bench_scale import build as build_synthetic

from mrag.retrieve import fulltext, graph, walk
from mrag.retrieve import strategies as retrieve
from mrag.retrieve.exact import Exact
from mrag.retrieve.fulltext import FullTextRanker
from mrag.retrieve.types import QueryVectors
from mrag.rows import build_rows, chunk_schema

STRATEGIES = ["standard", "segment+standard", "segment-bm25", "mrag"]


def tie_at_cut(index: Any, strategy: str, ranker: Any, parts: list[Any], k: int = 10) -> bool:
    """Whether the exact k-th and (k+1)-th scores are within 1e-5: which rows make the top k is then decided
    by the last bits of their similarities (the paper's queries: each sentence is itself a row, found at
    similarity 1 +- 1e-6 by every part), and another ranker's top k may rightly differ."""
    result = retrieve.vote(strategy, parts[0], k + 1, retrieve.DEFAULT_C, index.space_weights(), ranker,
                           index.store.n_heads, parts if len(parts) > 1 else None)
    return len(result.scores) > k and abs(float(result.scores[k - 1]) - float(result.scores[k])) < 1e-5


def timed_votes(index: Any, strategy: str, ranker: Any, qs: list[Any], ids: Any) -> tuple[list[list[str]], list[float]]:
    """Each query's top 10 by `ranker` and the seconds each took (ranking and vote)."""
    found, times = [], []
    for parts in qs:
        start = time.perf_counter()
        found.append(vote_ids(index, strategy, ranker, parts, ids))
        times.append(time.perf_counter() - start)
    return found, times


def stage_ms(index: Any, strategy: str, ranker: Any, qs: list[Any], memory: Any) -> dict[str, float | str]:
    """p50 ms per query of two stages alone: the full-text searches of its parts (in memory) and the vote
    on rankings already made (`ranker`'s answers kept and given again)."""
    kept: dict[Any, Any] = {}

    def again(chosen: Any, queries: Any, c: int) -> Any:
        key = (tuple(v.name for v in chosen), tuple(q.text for q in queries), c)
        if key not in kept:
            kept[key] = ranker(chosen, queries, c)
        return kept[key]

    scales = index.space_weights()
    vote = [functools.partial(retrieve.vote, strategy, parts[0], 10, retrieve.DEFAULT_C, scales, again,
                              index.store.n_heads, parts if len(parts) > 1 else None) for parts in qs]
    for call in vote:
        call()
    out: dict[str, float | str] = {"vote alone p50_ms": percentiles_ms([t for call in vote for t in
                                                                         time_calls(call, 1, warmup=0)])["p50_ms"]}
    texts = [[p.text for p in parts] for parts in qs]
    found = memory is not None and retrieve.uses_fulltext(strategy)
    out["full text alone p50_ms"] = percentiles_ms([t for some in texts for t in time_calls(
        functools.partial(memory().search, some, retrieve.DEFAULT_C), 1, warmup=0)])["p50_ms"] if found else ""
    return out


def real_part(cache: Path, efs: list[int], strategies: list[str], man_query_count: int) -> dict[str, Any]:
    files = sorted(cache.glob("real-*.npz")) + sorted(cache.glob("man-[0-9]*.npz"))
    if not files:
        raise SystemExit(f"no real vectors in {cache}: run bench_ann_1m.py --embed first")
    query_sets = {"wikipedia": real_queries(DATA, cache), "man pages": man_queries(cache, man_query_count)}
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        index = build_real(Path(tmp) / "db", files)
        index.maintain_fulltext(force=True)
        n = index.store.count()
        start = time.perf_counter()
        index.build_ann("HNSW", progress=lambda s: print("graph", s, round(time.perf_counter() - start), flush=True))
        build_s = round(time.perf_counter() - start, 1)
        matrix = index.store.matrix()
        graphs = graph.latest(graph.folder(index.store.uri), matrix)
        assert graphs is not None and len(graphs.nodes) == n
        exact = Exact(matrix.standard, matrix.heads)
        memory = fulltext.in_memory(matrix, None)  # the full-text space where the product answers it
        exact_ranker = FullTextRanker(exact, matrix.table, row_ids=matrix.row_ids, cache=True, memory=memory)
        rows: list[dict[str, Any]] = []
        for name, qs in query_sets.items():
            for s in strategies:
                vote_ids(index, s, exact_ranker, qs[0], matrix.ids)  # warm: bf16 copies, full-text cache
                truth, times = timed_votes(index, s, exact_ranker, qs, matrix.ids)
                tied = [tie_at_cut(index, s, exact_ranker, parts) for parts in qs]
                rows.append({"rows": n, "queries": name, "strategy": s, "path": "exact scan", "ef": "",
                             "recall@10": 1.0, "tied at the cut": sum(tied), "recall@10, untied": 1.0,
                             **percentiles_ms(times)})
                print(rows[-1], flush=True)
                for ef in efs:
                    ranker = FullTextRanker(walk.GraphRanker(matrix, graphs, exact, ef), matrix.table,
                                            row_ids=matrix.row_ids, cache=True, memory=memory)
                    found, times = timed_votes(index, s, ranker, qs, matrix.ids)
                    untied = [i for i, t in enumerate(tied) if not t]
                    rows.append({"rows": n, "queries": name, "strategy": s, "path": "HNSW graphs", "ef": ef,
                                 "recall@10": recall(found, truth), "tied at the cut": sum(tied),
                                 "recall@10, untied": recall([found[i] for i in untied], [truth[i] for i in untied]),
                                 **percentiles_ms(times), **stage_ms(index, s, ranker, qs, memory)})
                    print(rows[-1], flush=True)
        disk = sum(p.stat().st_size for p in graph.folder(index.store.uri).rglob("*") if p.is_file())
    return {"rows": n, "queries": {k: len(v) for k, v in query_sets.items()}, "build_s": build_s,
            "graph_bytes": disk, "table": rows}


def deletes_part(cache: Path, efs: list[int], strategies: list[str], counts: list[int], man_query_count: int,
                 run: int) -> dict[str, Any]:
    files = sorted(cache.glob("real-*.npz")) + sorted(cache.glob("man-[0-9]*.npz"))
    if not files:
        raise SystemExit(f"no real vectors in {cache}: run bench_ann_1m.py --embed first")
    man = man_queries(cache, man_query_count)
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        index = build_real(Path(tmp) / "db", files)
        index.maintain_fulltext(force=True)
        n = index.store.count()
        index.build_ann("HNSW")
        root = graph.folder(index.store.uri)
        first = index.store.matrix()  # every row, for the queries about deleted ones
        # runs of consecutive rows: sentences of one article or manual page, deleted as a document would be
        runs = np.random.default_rng(0).permutation(n // run)[: max(counts) // run] * run
        doomed = [int(i) for r in runs for i in range(r, r + run)]  # their text now: writes prune old versions
        text = dict(zip(*first.table.take_offsets(doomed).select(["id", "text"]).to_arrow().to_pydict().values()))
        rows: list[dict[str, Any]] = []
        deleted, delete_s, rebuilt_at = 0, [], []
        for count in [0, *counts]:
            before = sorted(p.name for p in root.iterdir())
            while deleted < count:
                start = time.perf_counter()
                index.delete([str(first.ids[i]) for i in range(runs[deleted // run], runs[deleted // run] + run)])
                delete_s.append(time.perf_counter() - start)
                deleted += run
            if sorted(p.name for p in root.iterdir()) != before:
                rebuilt_at.append(count)
            matrix = index.store.matrix()
            graphs = graph.latest(root, matrix)
            place = graphs.place(matrix) if graphs is not None else None
            assert graphs is not None and place is not None
            exact = Exact(matrix.standard, matrix.heads)
            exact_ranker = FullTextRanker(exact, matrix.table, row_ids=matrix.row_ids, cache=True)
            gone = np.concatenate([np.arange(r, r + run) for r in runs[: deleted // run]]) if deleted else []
            about = [[QueryVectors(first.standard[i], first.heads[:, i], text=text[first.ids[i]])]
                     for i in np.random.default_rng(1).permutation(gone)[:64]] if deleted else []
            for name, qs in (("manual pages", man), ("about deleted rows", about)):
                for s in strategies if qs else []:
                    vote_ids(index, s, exact_ranker, qs[0], matrix.ids)  # warm: bf16 copies, full-text cache
                    truth, times = timed_votes(index, s, exact_ranker, qs, matrix.ids)
                    common = {"deleted": deleted, "removed nodes": place.removed, "queries": name, "strategy": s}
                    rows.append({**common, "path": "exact scan", "ef": "", "recall@10": 1.0, **percentiles_ms(times)})
                    for ef in efs:
                        ranker = FullTextRanker(walk.GraphRanker(matrix, graphs, exact, ef), matrix.table,
                                                row_ids=matrix.row_ids, cache=True)
                        found, times = timed_votes(index, s, ranker, qs, matrix.ids)
                        rows.append({**common, "path": "HNSW graphs", "ef": ef, "recall@10": recall(found, truth),
                                     **percentiles_ms(times)})
                        print(rows[-1], flush=True)
        start = time.perf_counter()
        graph.maintain(index.store, force=True)  # what every delete cost before the graphs skipped removed nodes
        rebuild_s = round(time.perf_counter() - start, 1)
    return {"rows": n, "queries": len(man), "run": run, "deletes": len(delete_s), "rebuilt_at": rebuilt_at,
            "delete": percentiles_ms(delete_s), "rebuild_s": rebuild_s, "table": rows}


def append_rows(index: Any, first: int, m: int) -> None:
    """m more synthetic rows, as `bench_scale.build` writes them, in one commit."""
    embedder = ClusteredEmbedder()
    standard, heads = embedder.sample(np.random.default_rng(first), m)
    ids = [f"c{i}" for i in range(first, first + m)]
    with index.store.writing(maintain=False):
        index.store.add(build_rows(
            ids=ids, doc_ids=ids, sources=["synthetic"] * m, titles=[""] * m, positions=[0] * m,
            texts=[f"chunk {i}" for i in range(first, first + m)], metadata=[{}] * m, doc_hashes=["x"] * m,
            standard=standard, heads=heads, schema=chunk_schema(embedder.dim, embedder.n_heads, embedder.head_dim),
        ))


def synthetic_part(
    n: int, n_queries: int, efs: list[int], rounds: int, strategies: list[str], heads: bool = False, append: int = 0,
    delete: int = 0,
) -> dict[str, Any]:
    texts = queries(n_queries)
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        start = time.perf_counter()
        index, _ = build_synthetic(Path(tmp) / "db", n, ClusteredEmbedder())
        index.maintain_fulltext(force=True)  # the rows' text: "chunk N"
        print(f"built {n} rows in {time.perf_counter() - start:.0f} s", flush=True)
        store = index.store
        before = rss_mb()
        matrix = store.matrix(heads=heads)
        matrix_mb = round(rss_mb() - before)
        start, built_at = time.perf_counter(), {}
        graph.update(graph.folder(store.uri), matrix, force=True,
                     progress=lambda s: built_at.setdefault(s, round(time.perf_counter() - start, 1)))
        build_s = round(time.perf_counter() - start, 1)
        with store.writing(maintain=False):  # the manifest's record, as build_ann writes it
            record = {"index_type": "HNSW", "rows": n, "nprobes": graph.DEFAULT_EF}
            store.stage(ann=record if heads else {**record, "spaces": ["standard"]})
        store.graphs = None
        index.search_many(texts[:1], 10, "mrag" if heads else "standard")  # reads the graphs it walks
        graphs_mb = round(rss_mb() - before - matrix_mb)
        print(f"graphs in {build_s} s ({built_at}); matrix {matrix_mb} MB, graphs {graphs_mb} MB resident", flush=True)
        configs: list[tuple[str, bool, int | None]] = [(s, True, None) for s in strategies]
        configs += [(s, False, ef) for ef in efs for s in strategies]
        exact = {s: [[h.id for h in hits] for hits in index.search_many(texts, 10, s, exact=True)] for s in strategies}
        times: dict[tuple[Any, ...], dict[int, list[float]]] = {cfg: {1: [], 32: []} for cfg in configs}
        for _ in range(rounds):
            for cfg in configs:
                strategy, is_exact, ef = cfg
                for batch in (1, 32):
                    for i in range(0, len(texts), batch):
                        group = texts[i : i + batch]
                        call = functools.partial(index.search_many, group, 10, strategy, exact=is_exact, nprobes=ef)
                        times[cfg][batch] += [t / len(group) for t in time_calls(call, 1, warmup=0)]
        rows = []
        for cfg in configs:
            strategy, is_exact, ef = cfg
            results = index.search_many(texts, 10, strategy, exact=is_exact, nprobes=ef)
            found = [[h.id for h in hits] for hits in results]
            for batch in (1, 32):
                rows.append({"rows": n, "strategy": strategy, "path": "exact scan" if is_exact else "HNSW graph",
                             "ef": ef or "", "batch": batch, **percentiles_ms(times[cfg][batch]),
                             "recall@10 (synthetic)": recall(found, exact[strategy])})
        for r in rows:
            same = [x for x in rows if x["batch"] == r["batch"] and x["ef"] == r["ef"]]
            r["vs standard"] = round(r["p50_ms"] / next(x["p50_ms"] for x in same if x["strategy"] == "standard"), 2)
            scan = next(x for x in rows if x["batch"] == r["batch"] and x["strategy"] == r["strategy"] and not x["ef"])
            r["speedup vs exact"] = round(scan["p50_ms"] / r["p50_ms"], 2)
            print(r, flush=True)
        appended = {}
        if append:  # a write's maintenance: the matrix read again, the graphs extended and written
            append_rows(index, n, append)
            start = time.perf_counter()
            written = graph.maintain(store)
            appended = {"rows": append, "maintain_s": round(time.perf_counter() - start, 1),
                        "extended": written is not None and len(written.nodes) == n + append}
            print("appended", appended, flush=True)
        deleted = {}
        if delete:  # a delete's upkeep: the graphs kept, their removed nodes skipped
            root = graph.folder(store.uri)
            before = sorted(p.name for p in root.iterdir())
            doomed = [f"c{i}" for i in np.random.default_rng(1).choice(n, delete, replace=False)]
            start = time.perf_counter()
            index.delete(doomed)
            deleted = {"rows": delete, "delete_s": round(time.perf_counter() - start, 1),
                       "graphs kept": sorted(p.name for p in root.iterdir()) == before, "after": []}
            for strategy in strategies:
                truth = [[h.id for h in hits] for hits in index.search_many(texts, 10, strategy, exact=True)]
                for ef in [None, *efs]:  # None: the exact scan
                    found = [[h.id for h in hits] for hits in
                             index.search_many(texts, 10, strategy, exact=ef is None, nprobes=ef)]
                    times = [t for text in texts for t in time_calls(  # after a first search placed the graph
                        functools.partial(index.search_many, [text], 10, strategy, exact=ef is None, nprobes=ef),
                        1, warmup=0)]
                    deleted["after"].append({"strategy": strategy, "path": "exact scan" if ef is None else "HNSW graph",
                                             "ef": ef or "", "recall@10 (synthetic)": recall(found, truth),
                                             **percentiles_ms(times)})
            print("deleted", deleted, flush=True)
        disk = sum(p.stat().st_size for p in graph.folder(store.uri).rglob("*") if p.is_file())
    return {"rows": n, "queries": n_queries, "rounds": rounds, "build_s": build_s, "built_at_s": built_at,
            "matrix_mb": matrix_mb, "graph_mb": graphs_mb, "graph_files_mb": round(disk / 2**20), "appended": appended,
            "deleted": deleted,
            "table": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", action="store_true")
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--man-queries", type=int, default=125)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--efs", default="32,64,128,256")
    parser.add_argument("--strategy", default=",".join(STRATEGIES))
    parser.add_argument("--heads", action="store_true", help="synthetic: graphs for the heads too (as build_ann)")
    parser.add_argument("--append", type=int, default=0, help="synthetic: then time a write of this many rows")
    parser.add_argument("--delete", type=int, default=0, help="synthetic: then time a delete of this many rows")
    parser.add_argument("--deletes", default="", help="real rows to delete, in runs, e.g. 500,1000,2000")
    parser.add_argument("--delete-run", type=int, default=50, help="--deletes: consecutive rows per delete")
    parser.add_argument("--fulltext-threads", action="store_true",
                        help="full-text searches on threads through LanceDB's synchronous API (as before 2817777)")
    parser.add_argument("--name", default="graph")
    args = parser.parse_args()
    if args.fulltext_threads:  # `fulltext.started` then takes the path of a table without an AsyncTable
        fulltext.async_table = lambda table: None  # type: ignore[assignment]
    efs = [int(e) for e in args.efs.split(",")]
    strategies = args.strategy.split(",")
    started, load = time.perf_counter(), __import__("os").getloadavg()
    out: dict[str, Any] = {"machine": machine(), "command": "python benchmarks/bench_graph.py " + " ".join(
        a for a in __import__("sys").argv[1:]), "load_start": [round(x, 2) for x in load]}
    md = [f"# In-process HNSW graphs against the exact scan ({args.name})", "",
          f"command: `{out['command']}`", ""]
    if args.real:
        out["real"] = real_part(args.cache, efs, strategies, args.man_queries)
        r = out["real"]
        md += [f"## Recall on {r['rows']} real MiniLM rows (queries: {r['queries']})", "",
               f"Every space's graph (standard + heads) built by `Index.build_ann('HNSW')` in {r['build_s']} s; "
               f"graph files {r['graph_bytes'] / 2**20:.0f} MiB. Times: ranking and vote per query, query "
               "vectors precomputed, batch 1 (each query's full-text searches run once). A walk's ef is at least "
               "2c = 64 (`walk.RESCORED`), so ef 32 walks as 64. 'Tied at the cut': queries whose exact 10th "
               "and 11th scores are within 1e-5, where the top 10 is decided by the last bits of the "
               "similarities (`tie_at_cut`). On the graphs, two stages alone (`stage_ms`): the query parts' "
               "full-text searches (the in-memory index), and the vote on the rankings already made; the rest of "
               "p50 is the vector ranking and the search's checks.", "",
               markdown_table(r["table"], ["queries", "strategy", "path", "ef", "recall@10", "tied at the cut",
                                           "recall@10, untied", "p50_ms", "p99_ms", "n", "full text alone p50_ms",
                                           "vote alone p50_ms"]),
               ""]
    if args.deletes:
        out["deletes"] = d = deletes_part(args.cache, efs, strategies, [int(x) for x in args.deletes.split(",")],
                                          args.man_queries, args.delete_run)
        md += [f"## Deletes on {d['rows']} real MiniLM rows", "",
               f"Every space's graph built by `Index.build_ann('HNSW')`, then runs of {d['run']} consecutive rows "
               f"deleted by `Index.delete`, one run a write ({d['deletes']} writes): p50 "
               f"{d['delete']['p50_ms'] / 1000:.2f} s, p99 {d['delete']['p99_ms'] / 1000:.2f} s a write, graph "
               f"upkeep included; graphs rebuilt by the writes up to these counts: {d['rebuilt_at'] or 'none'}. "
               f"Rebuilding them all at the end took {d['rebuild_s']} s (what every delete cost before). "
               f"Recall@10 against the exact search of the rows left, for {d['queries']} manual-page queries and "
               "64 queries about deleted rows (each one's vectors and text); times: ranking and vote per query, "
               "batch 1.", "",
               markdown_table(d["table"], ["deleted", "removed nodes", "queries", "strategy", "path", "ef",
                                           "recall@10", "p50_ms", "p99_ms", "n"]), ""]
    if args.synthetic:
        out["synthetic"] = s = synthetic_part(args.rows, args.queries, efs, args.rounds, strategies, args.heads,
                                              args.append, args.delete)
        md += [f"## Speed at {s['rows']} synthetic rows ({s['queries']} queries x {s['rounds']} rounds, interleaved)",
               "",
               f"Graphs built in {s['build_s']} s (cumulative s after each space: {s['built_at_s']}); "
               f"resident: matrix{'' if args.heads else ' (no heads)'} {s['matrix_mb']} MB, graphs {s['graph_mb']} "
               f"MB; graph files {s['graph_files_mb']} MiB (the folders kept at the end: two after a write). "
               "A write of more rows, then its graph maintenance "
               f"(`graph.maintain`): {s['appended'] or 'not timed'}. `Index.search_many` end to end (queries "
               "embedded by the synthetic embedder).", "",
               markdown_table(s["table"], ["strategy", "path", "ef", "batch", "p50_ms", "p99_ms", "n",
                                           "recall@10 (synthetic)", "vs standard", "speedup vs exact"]), ""]
        if s["deleted"]:
            d = s["deleted"]
            md += [f"Then {d['rows']} random rows deleted in one `Index.delete`: {d['delete_s']} s, the commit and "
                   f"the graphs' upkeep included; graphs kept (not rebuilt): {d['graphs kept']}. After it, batch 1 "
                   "(recall against the exact search of the rows left):", "",
                   markdown_table(d["after"], ["strategy", "path", "ef", "p50_ms", "p99_ms", "n",
                                               "recall@10 (synthetic)"]),
                   ""]
    load = __import__("os").getloadavg()
    out["load_end"] = [round(x, 2) for x in load]
    out["seconds"] = round(time.perf_counter() - started)
    out["peak_rss_mb"] = round(peak_rss_mb())
    md.insert(4, f"machine: {out['machine']}; load average at the start {out['load_start']}, at the end "
                 f"{out['load_end']}; {out['seconds']} s; peak RSS {out['peak_rss_mb']} MB")
    md.insert(5, "")
    write_results(args.name, out, "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
