"""A search's LanceDB queries sent together (issue 17, target 2): `connection.together` against the
synchronous API on threads, end to end on the ANN path.

A search asks LanceDB once per query part for the full-text space and once per vector space on the ANN
path. Through LanceDB's synchronous API each query is handed between threads five times; searches now
send all of them to LanceDB's event loop as one batch (`fulltext.started`, `ann.AnnRanker`). "threads"
is the way before: each query through the synchronous API, on a pool of threads (the module's
`async_table` made to say None, the path of a table without an AsyncTable).

On an index with ANN indexes on every vector column and a full-text index (`--db`, read only apart from
a full-text index built when missing; else a synthetic `bench_scale` index of `--rows`, IVF_FLAT, its
text "synthetic chunk N"), `Index.search_many` end to end for each strategy at `--nprobes`, batch 1 and
32: every (strategy, way) timed once per group of queries, the ways alternated, so load from other jobs
falls on both alike; p50/p99 per query. Both ways' hits are checked equal first.

Run: python benchmarks/bench_together.py [--db INDEX] [--rows 1000000] [--queries 32] [--rounds 2]
Writes benchmarks/results/together.json and .md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _common import machine, markdown_table, percentiles_ms, write_results
from bench_scale import ClusteredEmbedder, queries
from bench_scale import build as build_synthetic

from mrag.index import Index
from mrag.retrieve import ann, fulltext

STRATEGIES = ["standard", "segment+standard", "segment-bm25", "mrag"]
WAYS = ("together", "threads")


@contextmanager
def way(name: str) -> Iterator[None]:
    """Searches inside take `name`'s way to LanceDB."""
    if name == "together":
        yield
        return
    saved = ann.async_table, fulltext.async_table
    ann.async_table = fulltext.async_table = lambda table: None  # type: ignore[assignment]
    try:
        yield
    finally:
        ann.async_table, fulltext.async_table = saved


def measure(index: Index, strategies: list[str], texts: list[str], nprobes: int, rounds: int) -> list[dict[str, Any]]:
    def search(group: list[str], strategy: str) -> list[list[tuple[str, float]]]:
        found = index.search_many(group, 10, strategy, exact=False, nprobes=nprobes)
        return [[(h.id, round(h.score, 6)) for h in hits] for hits in found]

    for strategy in strategies:  # the same hits both ways (and warm: index partitions, full-text index)
        answers = []
        for name in WAYS:
            with way(name):
                answers.append(search(texts, strategy))
        assert answers[0] == answers[1], strategy
    times: dict[tuple[str, str, int], list[float]] = {}
    for _ in range(rounds):
        for batch in (1, 32):
            for group in (texts[i : i + batch] for i in range(0, len(texts), batch)):
                for strategy in strategies:
                    for name in WAYS:
                        with way(name):
                            start = time.perf_counter()
                            search(group, strategy)
                        times.setdefault((strategy, name, batch), []).append((time.perf_counter() - start) / len(group))
    rows = []
    for (strategy, name, batch), seconds in times.items():
        rows.append({"strategy": strategy, "way": name, "batch": batch, **percentiles_ms(seconds), "n": len(seconds)})
    p50 = {(r["strategy"], r["way"], r["batch"]): r["p50_ms"] for r in rows}
    for r in rows:
        r["threads / this"] = round(p50[r["strategy"], "threads", r["batch"]] / r["p50_ms"], 2)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=None, help="an index with ANN indexes (else a synthetic one)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--nprobes", type=int, default=20)
    parser.add_argument("--strategy", default=",".join(STRATEGIES))
    parser.add_argument("--name", default="together")
    args = parser.parse_args()
    strategies, load = args.strategy.split(","), [os.getloadavg()]
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        if args.db is None:
            index, _ = build_synthetic(Path(tmp) / "db", args.rows, ClusteredEmbedder())
            index.build_ann("IVF_FLAT")
        else:
            index = Index.open(args.db, embedder=ClusteredEmbedder())
            if not index.store.manifest.ann:
                raise SystemExit(f"{args.db} has no ANN indexes")
        index.maintain_fulltext()  # built when missing
        rows = measure(index, strategies, queries(args.queries), args.nprobes, args.rounds)
        n, info = index.store.count(), index.store.manifest.ann
    load.append(os.getloadavg())
    for r in rows:
        print(r)
    header = (f"# A search's LanceDB queries sent together, against the synchronous API on threads ({args.name})\n\n"
              f"machine: {machine()}; load average (1, 5, 15 min) at the start and end: "
              f"{[tuple(round(x, 2) for x in a) for a in load]}\n\n"
              f"{n} rows, {info.get('index_type')} indexes on every vector column, nprobes {args.nprobes}, a "
              f"full-text index; {args.queries} six-sentence queries x {args.rounds} rounds, `Index.search_many` "
              "end to end (query embedding a fake), p50/p99 ms per query; the two ways alternated query group "
              "by query group, same hits checked first.\n\n")
    result = {"machine": machine(), "load_average": load, "rows": n, "nprobes": args.nprobes, "table": rows}
    write_results(args.name, result, header + markdown_table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
