"""What loading the exact-search matrix costs in memory, measured in a fresh process per index.

For each size: an index of N synthetic chunks (384-d standard vector, 12 heads x 32) is written once,
then a new process opens it, loads the matrix (`Store.matrix`) and runs one default search (which
makes the bf16 copy of the heads). Reported against the matrix's own bytes (standard + heads):

    (measured after one row of every vector column was read, so Lance's one-time reader setup,
    about 100 MB, is not counted as the matrix's)
    load_ratio   RSS growth from opening the index to the loaded matrix / matrix bytes
    peak_ratio   peak RSS growth during the load / matrix bytes (transient copies show here)
    search_ratio RSS growth after the first bf16 search / matrix bytes (matrix + its bf16 heads)

Run: python benchmarks/bench_memory.py [--rows 100000,300000] [--work /tmp/mrag-mem]
Target (issue 17): load and peak within 1.3x of the matrix's size.

`--ann SEARCHES --index-cache-mb 256,1024,0`: instead, the resident set of ANN searches (the matrix is
never loaded) with LanceDB's index cache bounded by MRAG_INDEX_CACHE_MB (0: LanceDB's default, 6 GiB),
and their latency (p50 after the first 8 searches; 2 shared cores).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import machine, markdown_table, rss_mb, write_results

COLUMNS = ["chunks", "heads", "matrix_mb", "rss_open_mb", "load_mb", "peak_mb", "search_mb", "load_ratio", "peak_ratio",
           "search_ratio", "load_s"]


def reset_peak() -> None:
    """Start the kernel's peak-RSS count (VmHWM) again from the current RSS (Linux)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss() -> float:
    """Peak RSS in MiB since `reset_peak` (ru_maxrss would carry the parent's peak over an exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure(db: Path, heads: bool = True) -> dict[str, Any]:
    """In this (fresh) process: open the index, load its matrix (without the heads: `heads` False),
    search once (the default's vector part, `segment+standard`, without the heads)."""
    from bench_core import RandomQueryEmbedder

    from mrag.index import Index

    index = Index.open(db, embedder=RandomQueryEmbedder())
    index.store.refresh()
    snapshot = index.store.snapshot()  # one row of every column first: Lance's one-time reader setup is not the matrix
    snapshot.search().select([c.column for c in index.store.vector_columns(committed=True)]).limit(1).to_arrow()
    gc.collect()
    before = rss_mb()
    reset_peak()
    start = time.perf_counter()
    matrix = index.store.matrix(heads=heads)
    load_s = time.perf_counter() - start
    gc.collect()
    loaded = rss_mb()
    peak = peak_rss()
    index.search("How did Roman legions fight? What shaped Mesopotamian cities?", k=5,  # on the matrix, even
                 strategy="mrag" if heads else "segment+standard", exact=True)  # where ANN indexes exist
    gc.collect()
    searched = rss_mb()
    size = (matrix.standard.nbytes + matrix.heads.nbytes) / 2**20
    return {"chunks": len(matrix.ids), "heads": heads, "matrix_mb": round(size), "rss_open_mb": round(before),
            "load_mb": round(loaded - before), "peak_mb": round(peak - before),
            "search_mb": round(searched - before), "load_ratio": round((loaded - before) / size, 3),
            "peak_ratio": round((peak - before) / size, 3),
            "search_ratio": round((searched - before) / size, 3), "load_s": round(load_s, 2)}


def measure_ann(db: Path, searches: int, strategy: str = "mrag") -> dict[str, Any]:
    """In this (fresh) process: open an index that has ANN indexes, run `searches` ANN searches of
    different queries, and report the resident set (the exact matrix is never loaded)."""
    from bench_core import RandomQueryEmbedder, long_queries

    from mrag.index import Index

    index = Index.open(db, embedder=RandomQueryEmbedder())
    gc.collect()
    before = rss_mb()
    reset_peak()
    queries = long_queries(searches)
    grown, took = [], []
    for i, query in enumerate(queries):
        start = time.perf_counter()
        index.search(query, k=10, strategy=strategy, exact=False)
        took.append(time.perf_counter() - start)
        if (i + 1) % max(searches // 4, 1) == 0:
            grown.append(round(rss_mb() - before))
    disk = sum(f.stat().st_size for f in db.rglob("*") if f.is_file()) / 2**20
    return {"chunks": index.store.count(), "strategy": strategy,
            "index_cache_mb": int(os.environ.get("MRAG_INDEX_CACHE_MB", 0)),
            "index_on_disk_mb": round(disk), "searches": searches,
            "rss_open_mb": round(before), "rss_growth_mb_by_quarter": grown,
            "peak_growth_mb": round(peak_rss() - before),
            "matrix_mb_if_loaded": round(index.store.count() * 3120 / 2**20),
            "p50_ms_after_8": round(1000 * statistics.median(took[8:] or took), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="100000,300000")
    parser.add_argument("--work", type=Path, default=Path("/tmp/mrag-mem"))
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child process's job
    parser.add_argument("--name", default="memory")
    parser.add_argument("--ann", type=int, default=0, metavar="SEARCHES",
                        help="instead: build the ANN indexes if missing, then the RSS of this many ANN searches")
    parser.add_argument("--index-cache-mb", default="0", help="with --ann: MRAG_INDEX_CACHE_MB values (0: default)")
    parser.add_argument("--strategy", default="mrag", help="with --ann: the strategy searched")
    parser.add_argument("--no-heads", action="store_true", help="load the matrix without the heads (the default "
                        "strategy's matrix) and search segment+standard")
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure_ann(args.measure, args.ann, args.strategy) if args.ann
                         else measure(args.measure, not args.no_heads)))
        return
    if args.ann:
        return ann_memory(args)
    rows = []
    for n in (int(x) for x in args.rows.split(",")):
        db = args.work / f"db-{n}"
        if not db.exists():
            from bench_core import build_synthetic

            index, _ = build_synthetic(db, n)
            del index
        child = subprocess.run([sys.executable, __file__, "--measure", str(db), *(["--no-heads"] * args.no_heads)],
                               capture_output=True, text=True, check=True, cwd=Path(__file__).parent)
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(markdown_table(rows[-1:], COLUMNS))
    table = markdown_table(rows, COLUMNS)
    write_results(args.name, {"machine": machine(), "rows": rows},
                  "# Memory of the exact-search matrix (fresh process per index)\n\n" + table)


def ann_memory(args: argparse.Namespace) -> None:
    rows = []
    for n in (int(x) for x in args.rows.split(",")):
        db = args.work / f"db-{n}"
        from bench_core import RandomQueryEmbedder, build_synthetic

        from mrag.index import Index

        if not db.exists():
            index, _ = build_synthetic(db, n)
        else:
            index = Index.open(db, embedder=RandomQueryEmbedder())
        if not index.store.manifest.ann:
            index.build_ann()
        del index
        for cache in (int(x) for x in args.index_cache_mb.split(",")):
            env = {k: v for k, v in os.environ.items() if k != "MRAG_INDEX_CACHE_MB"}
            env |= {"MRAG_INDEX_CACHE_MB": str(cache)} if cache else {}
            child = subprocess.run([sys.executable, __file__, "--measure", str(db), "--ann", str(args.ann),
                                    "--strategy", args.strategy],
                                   capture_output=True, text=True, check=True, cwd=Path(__file__).parent, env=env)
            rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
            print(rows[-1])
    columns = ["chunks", "strategy", "index_cache_mb", "index_on_disk_mb", "searches", "rss_open_mb",
               "rss_growth_mb_by_quarter", "peak_growth_mb", "matrix_mb_if_loaded", "p50_ms_after_8"]
    write_results(args.name, {"machine": machine(), "rows": rows},
                  "# Resident memory of ANN searches (fresh process, exact matrix never loaded)\n\n"
                  + markdown_table(rows, columns))


if __name__ == "__main__":
    main()
