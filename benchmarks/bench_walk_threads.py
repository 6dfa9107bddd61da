"""Where a search's threads go on the HNSW graphs (issue 17, target 2): faiss walks a call's query parts on
OpenMP threads, which pay off for long calls and cost more than they save for a few short walks, most of
all on a CPU busy with other work (an `mrag index` beside a server, other requests); the query parts'
in-memory full-text searches can run before the walks or beside them on a pool thread.

On the 141k real MiniLM rows of `bench_graph.py --real` (an index with every space's graph, built at --db
on the first run), the ranking and vote of each query (query vectors precomputed, full-text searches run
each time, as a search runs them) is timed with four setups, interleaved round by round: the walks on
faiss's default (every core) or on one thread, the full-text searches before them (a pool that runs them
at once) or beside them, and the product's rule (`walk.one_thread`: the full text beside, and the walks
on one thread where it runs beside them and a call has fewer than `walk.PARALLEL_WALKS` query parts,
else on every core). Two conditions: a quiet machine, and one busy with a process that spins on a core.
Batch 1 (`standard`, `segment+standard`, the default `segment-bm25`) and batch 32 (the default: 32
queries' parts in one call).

Run: python benchmarks/bench_walk_threads.py --cache DIR --db /tmp/walk-db [--rounds 3] [--name walk-threads]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import faiss
from _common import machine, markdown_table, percentiles_ms, write_results
from bench_ann_1m import CACHE, DATA, build_real, man_queries, real_queries
from bench_scale import ClusteredEmbedder

from mrag.index import Index
from mrag.retrieve import fulltext, graph, walk
from mrag.retrieve import strategies as retrieve
from mrag.retrieve.exact import Exact
from mrag.retrieve.fulltext import FullTextRanker

PRODUCT = walk.one_thread
# setup -> (whether a call walks on one thread, full-text searches beside the walks)
SETUPS = {"every core, full text first": (lambda parts: False, False),
          "one thread, full text first": (lambda parts: True, False),
          "every core, full text beside": (lambda parts: False, True),
          "product rule, full text beside": (PRODUCT, True)}
CASES = [("standard", 1), ("segment+standard", 1), ("segment-bm25", 1), ("segment-bm25", 32)]


def open_index(db: Path, cache: Path) -> Index:
    if (db / "graphs").is_dir():
        return Index.open(db, embedder=ClusteredEmbedder())
    files = sorted(cache.glob("real-*.npz")) + sorted(cache.glob("man-[0-9]*.npz"))
    if not files:
        raise SystemExit(f"no real vectors in {cache}: run bench_ann_1m.py --embed first")
    index = build_real(db, files)
    index.maintain_fulltext(force=True)
    index.build_ann("HNSW")
    return index


def per_query_seconds(index: Index, ranker: Any, strategy: str, batch: int, qs: list[Any]) -> list[float]:
    """Seconds per query of the ranking and vote, `batch` queries a call."""
    scales, out = index.space_weights(), []
    for start in range(0, len(qs) - batch + 1, batch):
        group = [(parts[0], parts if len(parts) > 1 else None) for parts in qs[start:start + batch]]
        began = time.perf_counter()
        retrieve.vote_many(strategy, group, 10, retrieve.DEFAULT_C, scales, ranker, index.store.n_heads)
        out += [(time.perf_counter() - began) / batch] * batch
    return out


class Inline:
    """A pool that runs what it is given at once: the full-text searches then run before the walks start."""

    def submit(self, call: Any) -> Future:
        done: Future = Future()
        done.set_result(call())
        return done


def measure(index: Index, ranker: Any, query_sets: dict[str, list[Any]], rounds: int) -> dict[tuple, list[float]]:
    times: dict[tuple, list[float]] = {}
    pool = fulltext._pool
    for _ in range(rounds):
        for name, qs in query_sets.items():
            for strategy, batch in CASES:
                for setup, (rule, beside) in SETUPS.items():
                    walk.one_thread = rule  # type: ignore[assignment]
                    fulltext._pool = pool if beside else lambda memory=False: Inline()  # type: ignore[assignment]
                    per_query_seconds(index, ranker, strategy, batch, qs[:batch])  # warm
                    times.setdefault((name, strategy, batch, setup), []).extend(
                        per_query_seconds(index, ranker, strategy, batch, qs))
    walk.one_thread, fulltext._pool = PRODUCT, pool  # type: ignore[assignment]
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--db", type=Path, required=True, help="the index with graphs (built here when missing)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--name", default="walk-threads")
    args = parser.parse_args()
    started, load = time.perf_counter(), os.getloadavg()
    index = open_index(args.db, args.cache)
    matrix = index.store.matrix()
    graphs = graph.latest(graph.folder(index.store.uri), matrix)
    assert graphs is not None, "the index has no graphs that fit it"
    ranker = FullTextRanker(walk.GraphRanker(matrix, graphs, Exact(matrix.standard, matrix.heads)), matrix.table,
                            row_ids=matrix.row_ids, memory=fulltext.in_memory(matrix, None))
    query_sets = {"wikipedia": real_queries(DATA, args.cache), "man pages": man_queries(args.cache, 128)}
    rows: list[dict[str, Any]] = []
    for condition in ("quiet", "busy"):
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if condition == "busy" else None
        try:
            times = measure(index, ranker, query_sets, args.rounds)
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
        for (name, strategy, batch, setup), seconds in times.items():
            rows.append({"machine": condition, "queries": name, "strategy": strategy, "batch": batch,
                         "walks, full text": setup, **percentiles_ms(seconds)})
            print(rows[-1], flush=True)
    out = {"machine": machine(), "command": "python benchmarks/bench_walk_threads.py " + " ".join(sys.argv[1:]),
           "load_start": [round(x, 2) for x in load], "load_end": [round(x, 2) for x in os.getloadavg()],
           "seconds": round(time.perf_counter() - started), "rows": len(matrix.ids),
           "faiss_threads": faiss.omp_get_max_threads(), "parallel_walks": walk.PARALLEL_WALKS, "table": rows}
    md = [f"# Walk threads ({args.name})", "", f"command: `{out['command']}`", "",
          f"machine: {out['machine']}; load average at the start {out['load_start']}, at the end {out['load_end']}; "
          f"{out['seconds']} s", "",
          f"{out['rows']} real MiniLM rows, HNSW graphs (ef {graph.DEFAULT_EF}); ms per query of the ranking and "
          f"vote (query vectors precomputed, full-text searches included), interleaved round by round. Walks on "
          f"faiss's default threads ({out['faiss_threads']}, every core) or one; the query parts' in-memory "
          f"full-text searches before the walks or beside them on a pool thread; the product rule: the full text "
          f"beside, and the walks on one thread where it runs beside them and a call has fewer than "
          f"{walk.PARALLEL_WALKS} query parts, else on every core (so `segment+standard`, with no full text, "
          "walks on every core). Busy: another process spins on one core meanwhile. Batch 32: each query's time "
          "is its batch's over 32.", "",
          markdown_table(rows, ["machine", "queries", "strategy", "batch", "walks, full text", "p50_ms", "p99_ms",
                                "mean_ms", "n"]), ""]
    write_results(args.name, out, "\n".join(md))


if __name__ == "__main__":
    main()
