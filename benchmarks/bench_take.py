"""Fetching a search's hits after deletes: by position (`take_offsets`) against by Lance row id
(`take_row_ids`, what `mrag.retrieve.search` does since the matrix keeps each row's row id).

A delete leaves the table's rows in deletion files until compaction. A take by position must then map
positions past the deleted rows; a take by row id reads the addresses directly. Per size: synthetic
rows (`bench_scale.build`), 10 random hits fetched with the search's columns, before and after deleting
`--share` of the rows; then `Index.search_many` end to end (`standard`, exact, batch 1), whose fetch is
by row id.

Run: python benchmarks/bench_take.py [--rows 200000,1000000] [--share 0.01] [--name take]
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import machine, markdown_table, percentiles_ms, time_calls, write_results
from bench_scale import ClusteredEmbedder, queries
from bench_scale import build as build_synthetic

from mrag.retrieve.search import HIT_COLUMNS

FETCHES = 50  # timed fetches per path
HITS = 10  # rows a fetch takes, as a search's top 10


def fetch_times(index: Any, rng: np.random.Generator) -> dict[str, list[float]]:
    """Seconds per fetch of HITS random rows, by position and by row id, on the committed matrix."""
    matrix = index.store.matrix(heads=False)
    picks = [rng.choice(len(matrix.ids), HITS, replace=False) for _ in range(FETCHES)]
    out: dict[str, list[float]] = {"by position": [], "by row id": []}
    for rows in picks:
        for path, kwargs in (("by position", {"offsets": [int(r) for r in rows]}),
                             ("by row id", {"row_ids": [int(matrix.row_ids[r]) for r in rows]})):
            start = time.perf_counter()
            found = index.store.take(matrix.table, HIT_COLUMNS, **kwargs)
            out[path].append(time.perf_counter() - start)
            assert sorted(found) == sorted(matrix.ids[r] for r in rows)
    return out


def search_times(index: Any, texts: list[str]) -> list[float]:
    index.search_many(texts[:1], 10, "standard", exact=True)  # loads the matrix
    return [t for text in texts for t in time_calls(
        functools.partial(index.search_many, [text], 10, "standard", exact=True), 1, warmup=0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="200000,1000000")
    parser.add_argument("--share", type=float, default=0.01, help="share of the rows deleted")
    parser.add_argument("--name", default="take")
    args = parser.parse_args()
    rng, texts, table = np.random.default_rng(0), queries(32), []
    for n in [int(x) for x in args.rows.split(",")]:
        with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
            index, _ = build_synthetic(Path(tmp) / "db", n, ClusteredEmbedder())
            for stage in ("before deletes", f"after deleting {args.share:.0%}"):
                if stage != "before deletes":
                    doomed = rng.choice(n, int(args.share * n), replace=False)
                    index.delete([f"c{i}" for i in doomed])
                for path, seconds in fetch_times(index, rng).items():
                    table.append({"rows": n, "stage": stage, "what": f"fetch {HITS} hits {path}",
                                  **percentiles_ms(seconds)})
                table.append({"rows": n, "stage": stage, "what": "search, standard, exact (hits by row id)",
                              **percentiles_ms(search_times(index, texts))})
                for row in table[-3:]:
                    print(row, flush=True)
    out = {"machine": machine(), "command": "python benchmarks/bench_take.py " + " ".join(
        f"--{k} {v}" for k, v in vars(args).items()), "table": table}
    md = [f"# Fetching hits after deletes ({args.name})", "", f"command: `{out['command']}`", "",
          f"machine: {out['machine']}", "",
          markdown_table(table, ["rows", "stage", "what", "p50_ms", "p99_ms", "n"]), ""]
    write_results(args.name, out, "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
