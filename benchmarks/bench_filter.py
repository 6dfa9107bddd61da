"""Filtered exact search (`where`): what a filter costs against the same search without one.

On the synthetic index of `bench_core.py` (D=384, H=12 x d=32, four chunks a document, six-sentence
queries, k=5), per filter of a different share of the rows: the first search with the filter (which finds
its rows in LanceDB and, for a small share, copies their vectors: `mrag.retrieve.filtered`) and the p50 of
later ones (batch 1, exact search in memory, the default precision), for `standard`, `segment+standard` and
`mrag`. Rounds interleave the filters, so load from other jobs hits all alike. Every hit is checked to be
one the filter keeps.

With `--ann`: the same filters through LanceDB's IVF_FLAT indexes (`--nprobes` of sqrt(size) partitions),
each searched both ways a filtered ANN search can go: the rows kept taken and ranked exactly (`take`, what
a filter keeping at most `ann.EXACT_KEPT` rows gets) and the indexes asked with LanceDB's prefilter, probing
on while fewer than c rows are found (`index`); time, hits found of k, and recall against exact search.

Run: python benchmarks/bench_filter.py [--size 100000] [--rounds 5] [--ann [--nprobes 20]]
Writes benchmarks/results/filter.json and .md (`--ann`: filter-ann.json and .md).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import machine, markdown_table, write_results
from bench_core import build_synthetic, long_queries

from mrag.retrieve import ann, filtered

STRATEGIES = ("standard", "segment+standard", "mrag")


def filters(n: int) -> dict[str, Any]:
    """filter (None: none) -> the test of a hit it keeps: from one document to three quarters of the rows."""
    middle = f"d{(n // 4 - 1) // 2}"  # the synthetic index's documents are d0 .. d<n/4 - 1>, four chunks each
    return {
        None: lambda h: True,
        f"doc_id = '{middle}'": lambda h: h.doc_id == middle,
        "doc_id LIKE 'd12%' AND position = 0": lambda h: h.doc_id.startswith("d12") and h.position == 0,
        "doc_id LIKE 'd1%' AND position = 1": lambda h: h.doc_id.startswith("d1") and h.position == 1,
        "position = 0": lambda h: h.position == 0,
        "position < 2": lambda h: h.position < 2,
        "position < 3": lambda h: h.position < 3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ann", action="store_true", help="filtered search through IVF_FLAT indexes")
    parser.add_argument("--nprobes", type=int, default=20)
    args = parser.parse_args()
    if args.ann:
        return bench_ann(args.size, args.rounds, args.nprobes)
    queries = long_queries(args.rounds + 1)
    with tempfile.TemporaryDirectory() as folder:
        index, _ = build_synthetic(Path(folder) / "db", args.size)
        index.store.matrix()
        cases = filters(args.size)
        shares = {where: (args.size if where is None else index.store.reading(lambda t, w=where: t.count_rows(w)))
                  / args.size for where in cases}
        times: dict[tuple[str | None, str], list[float]] = {}
        first: dict[tuple[str | None, str], float] = {}
        for r, query in enumerate(queries):
            for strategy in STRATEGIES:
                for where, keeps in cases.items():
                    if r == 0:  # the first search with each filter finds its rows again (and copies them)
                        filtered._cache.clear()
                    start = time.perf_counter()
                    hits = index.search(query, k=5, strategy=strategy, exact=True, where=where)
                    took = time.perf_counter() - start
                    assert hits and all(keeps(h) for h in hits), (where, strategy)
                    if r == 0:
                        first[(where, strategy)] = took
                    else:
                        times.setdefault((where, strategy), []).append(took)
    rows = []
    for (where, strategy), t in times.items():
        p50 = float(np.median(t))
        base = float(np.median(times[(None, strategy)]))
        rows.append({"filter": where or "(none)", "share of rows": round(shares[where], 5), "strategy": strategy,
                     "regime": "none" if where is None else "copy" if shares[where] <= filtered.SUBSET_SHARE
                     else "deeper",
                     "first search ms": round(1000 * first[(where, strategy)], 1), "p50 ms": round(1000 * p50, 2),
                     "vs no filter": round(p50 / base, 2), "rounds": len(t)})
    result = {"machine": machine(), "size": args.size, "rounds": args.rounds, "rows": rows,
              "subset_share": filtered.SUBSET_SHARE}
    columns = ["filter", "share of rows", "strategy", "regime", "first search ms", "p50 ms", "vs no filter", "rounds"]
    text = (f"# Filtered exact search (`where`), {args.size:,} synthetic chunks\n\nmachine: {result['machine']}\n\n"
            f"Made by `benchmarks/bench_filter.py`: batch 1, exact search in memory, default precision, p50 over "
            f"{args.rounds} rounds after a first search with each filter and strategy (cold: it finds the "
            f"filter's rows and, where they are at most {filtered.SUBSET_SHARE:.0%} of all, copies their "
            f"vectors). Every hit was checked to be one the filter keeps.\n\n" + markdown_table(rows, columns))
    write_results("filter", result, text)
    print(text)


def bench_ann(size: int, rounds: int, nprobes: int) -> None:
    """Filtered ANN search, both ways (`take`: the rows kept ranked exactly; `index`: LanceDB's prefiltered
    indexes), against exact filtered search in memory."""
    queries = long_queries(rounds)
    ways = {"take": size, "index": 0}  # ann.EXACT_KEPT for each
    with tempfile.TemporaryDirectory() as folder:
        index, _ = build_synthetic(Path(folder) / "db", size)
        index.build_ann("IVF_FLAT", nprobes=nprobes)
        cases = [w for w in filters(size) if w is not None]
        kept = {w: index.store.reading(lambda t, w=w: t.count_rows(w)) for w in cases}
        truth = {(w, s, q): [h.id for h in index.search(q, k=5, strategy=s, exact=True, where=w)]
                 for w in cases for s in STRATEGIES for q in queries}
        found: dict[tuple[str, str, str], list[tuple[float, int, float]]] = {}
        for q in queries:  # rounds interleave filters, strategies and ways
            for where in cases:
                for strategy in STRATEGIES:
                    for way, bound in ways.items():
                        ann.EXACT_KEPT = bound
                        start = time.perf_counter()
                        hits = index.search(q, k=5, strategy=strategy, where=where)
                        took = time.perf_counter() - start
                        want = truth[(where, strategy, q)]
                        recall = len({h.id for h in hits} & set(want)) / max(1, len(want))
                        found.setdefault((where, strategy, way), []).append((took, len(hits), recall))
    rows = [{"filter": w, "rows kept": kept[w], "strategy": s, "way": way,
             "p50 ms": round(1000 * float(np.median([t for t, _, _ in f])), 1),
             "hits of 5": round(float(np.mean([h for _, h, _ in f])), 2),
             "recall@5": round(float(np.mean([r for _, _, r in f])), 3)}
            for (w, s, way), f in found.items()]
    result = {"machine": machine(), "size": size, "rounds": rounds, "nprobes": nprobes,
              "partitions": int(np.sqrt(size)), "exact_kept": ann.EXACT_KEPT, "rows": rows}
    text = (f"# Filtered ANN search (`where`), {size:,} synthetic chunks, IVF_FLAT\n\nmachine: {result['machine']}\n\n"
            f"Made by `benchmarks/bench_filter.py --ann`: {result['partitions']} partitions per space, nprobes "
            f"{nprobes}, batch 1, k = 5, {rounds} queries (six sentences; random vectors, so the partitions do not "
            f"follow the data as real embeddings' do). `take`: the rows kept taken from LanceDB and ranked exactly "
            f"(no index asked); `index`: each space's index with LanceDB's prefilter, probing past nprobes while "
            f"fewer than c rows are found. Recall against the exact filtered search in memory.\n\n"
            + markdown_table(rows, ["filter", "rows kept", "strategy", "way", "p50 ms", "hits of 5", "recall@5"]))
    write_results("filter-ann", result, text)
    print(text)


if __name__ == "__main__":
    main()
