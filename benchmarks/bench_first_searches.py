"""Concurrent first searches: one matrix read shared, or one each.

A server's requests that arrive together while its matrix is not in memory (before the first search, or
after a delete or an upsert, which make it read every row again) each read the matrix, unless they wait
for one read (`Store.matrix`'s lock). On a `bench_core.build_synthetic` index (`--db`, e.g. one that
`bench_memory.py` built; else one of `--rows` is built here), a fresh process opens the index and
`--threads` threads search at once (the default's vector part, `segment+standard`, exactly, one
six-sentence query each); timed: the wall time until all have their hits, the matrix reads, and the
process's peak RSS over its RSS after opening. `--src DIR` runs the process with another checkout's
`src` (the code before, for comparison); the runs alternate between the two.

Run: python benchmarks/bench_first_searches.py [--db DIR | --rows 1000000] [--threads 8] [--rounds 2]
     [--src OLD_CHECKOUT/src] [--name first-searches]
Writes benchmarks/results/first-searches.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from _common import machine, markdown_table, peak_rss_mb, rss_mb, write_results


def one_run(db: Path, threads: int) -> dict[str, Any]:
    """In this (fresh) process: open the index, `threads` first searches at once."""
    from bench_core import RandomQueryEmbedder, long_queries

    from mrag import store
    from mrag.index import Index

    loads = []
    real = store.load_matrix

    def counted(*args: Any, **kwargs: Any) -> Any:
        loads.append(threading.get_ident())
        return real(*args, **kwargs)

    store.load_matrix = counted
    index = Index.open(db, embedder=RandomQueryEmbedder())
    texts = long_queries(threads)
    before = rss_mb()
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        found = list(pool.map(lambda t: index.search(t, k=10, strategy="segment+standard", exact=True), texts))
    assert all(len(hits) == 10 for hits in found)
    return {"wall_s": round(time.perf_counter() - start, 2), "matrix_reads": len(loads),
            "peak_rss_growth_mb": round(peak_rss_mb() - before), "rows": index.store.count()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=Path, default=None)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--src", type=Path, default=None, help="another checkout's src, run beside this one")
    parser.add_argument("--name", default="first-searches")
    parser.add_argument("--one", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(args.one, args.threads)))
        return
    here = Path(__file__).resolve().parent
    codes = {"this": here.parent / "src", **({"before": args.src.resolve()} if args.src else {})}
    started, load = time.perf_counter(), [os.getloadavg()]
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        db = args.db
        if db is None:
            from bench_core import build_synthetic

            db = Path(tmp) / "db"
            build_synthetic(db, args.rows)
        runs = []
        for r in range(args.rounds):
            for code in list(codes) if r % 2 == 0 else list(reversed(codes)):
                env = {**os.environ, "PYTHONPATH": f"{codes[code]}{os.pathsep}{here}"}
                out = subprocess.run([sys.executable, __file__, "--one", str(db), "--threads", str(args.threads)],
                                     check=True, capture_output=True, text=True, env=env).stdout
                runs.append({"code": code, **json.loads(out.strip().splitlines()[-1])})
                print(runs[-1], flush=True)
    load.append(os.getloadavg())
    summary = [{"code": code, "rows": runs[0]["rows"], "threads": args.threads,
                **{k: float(np.median([r[k] for r in runs if r["code"] == code]))
                   for k in ("wall_s", "matrix_reads", "peak_rss_growth_mb")}} for code in codes]
    result = {"machine": machine(), "threads": args.threads, "rounds": args.rounds, "runs": runs, "summary": summary,
              "load_average": [[round(x, 2) for x in one] for one in load],
              "wall_s": round(time.perf_counter() - started)}
    columns = ["code", "rows", "threads", "wall_s", "matrix_reads", "peak_rss_growth_mb"]
    md = [f"# Concurrent first searches ({args.name})\n",
          f"command: `python benchmarks/bench_first_searches.py {' '.join(sys.argv[1:])}`\n",
          f"machine: {result['machine']}; load average (1, 5, 15 min) at the start and end: "
          f"{result['load_average']}; {result['wall_s']} s\n",
          f"A fresh process per run opens the index and {args.threads} threads search it at once (`segment+standard`, "
          "exactly, one six-sentence query each); `this` is this checkout, `before` the code given by `--src`; "
          "the runs alternate.\n", "## Medians\n", markdown_table(summary, columns), "", "## Every run\n",
          markdown_table(runs, ["code", "wall_s", "matrix_reads", "peak_rss_growth_mb"])]
    write_results(args.name, result, "\n".join(md))


if __name__ == "__main__":
    main()
