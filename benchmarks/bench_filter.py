"""Filtered exact search (`where`): what a filter costs against the same search without one.

On the synthetic index of `bench_core.py` (D=384, H=12 x d=32, four chunks a document, six-sentence
queries, k=5), per filter of a different share of the rows: the first search with the filter (which finds
its rows in LanceDB and, for a small share, copies their vectors: `mrag.retrieve.filtered`) and the p50 of
later ones (batch 1, exact search in memory, the default precision), for `standard`, `segment+standard` and
`mrag`. Rounds interleave the filters, so load from other jobs hits all alike. Every hit is checked to be
one the filter keeps.

Run: python benchmarks/bench_filter.py [--size 100000] [--rounds 5]
Writes benchmarks/results/filter.json and .md.
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

from mrag.retrieve import filtered

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
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
