"""The first exact search after another process appended rows: the matrix grown by the new rows
(`mrag.matrix.grown`, the bf16 copies extended) against the whole table read again (what every write
cost before, and what deletes, upserts and compaction still cost).

On the synthetic index of `bench_core.py` (D=384, H=12 x d=32), per size: a reader that has searched
(matrix and bf16 copies made), then a writer (a second `Index` on the folder, as another process would
be) appends `--append` rows in one commit, and the reader's next search is timed end to end, one
six-sentence query, k=5. Three phases: the default (`segment-bm25`, a matrix without heads; its
full-text hits are mapped to matrix rows by chunk id), its vector part (`segment+standard`) and `mrag`
(with the heads). Each round appends once per mode, the modes alternating; p50 over rounds. The grown
matrix and its search are checked equal to a whole read's before anything is timed.

Run: python benchmarks/bench_refresh.py [--sizes 100000,1000000] [--append 1000,10000] [--rounds 3]
Writes benchmarks/results/refresh.json and .md. With `--memory 1000000`: the reader's RSS after its
first search and after each of three appends of 10,000 rows (refresh-memory.json and .md).
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import machine, markdown_table, peak_rss_mb, rss_mb, write_results
from bench_core import build_synthetic, long_queries, synthetic_rows

import mrag.store
from mrag.index import Index
from mrag.matrix import grown
from mrag.retrieve import fulltext

# strategy -> whether its matrix holds the heads: the default (its full-text hits mapped to matrix rows
# too), its vector part, and the heads' strategy
PHASES = {"segment-bm25": False, "segment+standard": False, "mrag": True}


def whole_read(*args: Any) -> None:
    """`grown` that never grows: every refresh reads the whole table."""
    return None


def first_search(reader: Index, strategy: str, query: list[str], mode: str) -> tuple[float, bool]:
    """Seconds of the reader's first search after a write, and whether its matrix grew."""
    mrag.store.grown = grown if mode == "grown" else whole_read  # type: ignore[assignment]
    before = reader.store._matrix.rows if reader.store._matrix is not None else None  # not the matrix: the
    start = time.perf_counter()  # store drops it as a server's would, and the search must not find it held
    reader.search_many(query, k=5, strategy=strategy, exact=True)
    seconds = time.perf_counter() - start
    after = reader.store._matrix
    return seconds, before is not None and after is not None and after.rows is before


def check(reader: Index, path: Path, strategy: str, query: list[str]) -> None:
    """The grown matrix and its search equal a whole read's."""
    other = Index.open(path, embedder=reader.embedder)
    mine, theirs = reader.store.matrix(heads=PHASES[strategy]), other.store.matrix(heads=PHASES[strategy])
    assert mine.version == theirs.version and np.array_equal(mine.standard, theirs.standard)
    assert np.array_equal(mine.heads, theirs.heads) and np.array_equal(mine.row_ids, theirs.row_ids)
    found = [[(h.id, h.score) for h in hits] for hits in (
        reader.search_many(query, k=5, strategy=strategy, exact=True)[0],
        other.search_many(query, k=5, strategy=strategy, exact=True)[0])]
    assert found[0] == found[1], strategy


def bench_size(n: int, appends: list[int], rounds: int) -> list[dict[str, Any]]:
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "db"
        writer, _ = build_synthetic(path, n)
        fulltext.maintain(writer.store, force=True)  # the default's full-text index (appended rows: flat scan)
        rng, first = np.random.default_rng(1), n
        query = long_queries(1)
        for strategy in PHASES:
            reader = Index.open(path, embedder=writer.embedder)
            reader.search_many(query, k=5, strategy=strategy, exact=True)  # matrix and bf16 copies made
            for m in appends:
                times: dict[str, list[float]] = {"grown": [], "whole": []}
                grew = {"grown": 0, "whole": 0}
                for r in range(rounds):
                    for mode in ("grown", "whole") if r % 2 == 0 else ("whole", "grown"):
                        with writer.store.writing(maintain=False):  # no compaction: it reads whole
                            writer.store.add(synthetic_rows(writer, first, m, rng))
                        first += m
                        gc.collect()
                        seconds, did = first_search(reader, strategy, query, mode)
                        times[mode].append(seconds)
                        grew[mode] += did
                        if r == 0 and mode == "grown":
                            check(reader, path, strategy, query)
                row = {"rows": n, "strategy": strategy, "appended": m,
                       "grown_p50_s": round(float(np.median(times["grown"])), 3),
                       "whole_p50_s": round(float(np.median(times["whole"])), 3),
                       "grown_min_max_s": [round(min(times["grown"]), 3), round(max(times["grown"]), 3)],
                       "whole_min_max_s": [round(min(times["whole"]), 3), round(max(times["whole"]), 3)],
                       "grew": f"{grew['grown']}/{rounds}, whole {grew['whole']}/{rounds}",
                       "rss_mb": round(rss_mb())}
                row["speedup"] = round(row["whole_p50_s"] / max(row["grown_p50_s"], 1e-9), 1)
                print(markdown_table([row], list(row)), flush=True)
                out.append(row)
            del reader
            gc.collect()
    mrag.store.grown = grown  # type: ignore[assignment]
    return out


def memory(n: int, appends: int, m: int) -> list[dict[str, Any]]:
    """RSS of a reader after its first search (the lean matrix and its bf16 copy), then after each of
    `appends` appends of m rows and a search: the matrix grows in place and its bf16 copy is replaced,
    so RSS grows by the new rows alone."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "db"
        writer, _ = build_synthetic(path, n)
        query = long_queries(1)
        gc.collect()
        base = rss_mb()
        reader = Index.open(path, embedder=writer.embedder)
        reader.search_many(query, k=5, strategy="segment+standard", exact=True)
        rows.append({"rows": n, "step": "first search", "rss_growth_mb": round(rss_mb() - base)})
        rng = np.random.default_rng(2)
        for i in range(appends):
            with writer.store.writing(maintain=False):
                writer.store.add(synthetic_rows(writer, n + i * m, m, rng))
            before = reader.store._matrix.rows if reader.store._matrix is not None else None
            reader.search_many(query, k=5, strategy="segment+standard", exact=True)
            gc.collect()
            grew = before is not None and reader.store._matrix is not None and reader.store._matrix.rows is before
            rows.append({"rows": n + (i + 1) * m, "step": f"append {i + 1} of {m:,} rows, search",
                         "rss_growth_mb": round(rss_mb() - base), "grown": grew})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--append", default="1000,10000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--name", default="refresh")
    parser.add_argument("--memory", type=int, default=0, help="instead: RSS around growth at this many rows")
    args = parser.parse_args()
    if args.memory:
        found = memory(args.memory, 3, 10_000)
        print(markdown_table(found, list(found[-1])))
        write_results(f"{args.name}-memory", {"machine": machine(), "rows": found},
                      "# RSS of a reader whose lean matrix grows by appended rows\n\n"
                      "`segment+standard` searches (the matrix without heads and its bf16 copy), one process; "
                      "another `Index` appends. Made by `benchmarks/bench_refresh.py --memory N`.\n\n"
                      + markdown_table(found, list(found[-1])))
        return
    start_load = os.getloadavg()
    appends = [int(a) for a in args.append.split(",")]
    rows = [row for n in (int(s) for s in args.sizes.split(",")) for row in bench_size(n, appends, args.rounds)]
    result = {"machine": machine(), "rows": rows, "peak_rss_mb": round(peak_rss_mb()),
              "load_average_start_end": [start_load, os.getloadavg()]}
    text = "\n".join([
        "# The first search after an append: matrix grown against read whole\n",
        f"machine: {result['machine']}; load average at start and end: {result['load_average_start_end']}\n",
        "A reader searched (matrix and bf16 copies made); a second `Index` on the folder appended rows in one "
        "commit; the reader's next exact search, one six-sentence query, k=5, end to end (manifest check, "
        "matrix, bf16 copies, scan, hits). `grown`: the new rows read into the matrix's room and the bf16 "
        "copies extended; `whole`: every row read again and the copies made anew (before this change, every "
        "write). Modes alternate round by round; p50 over rounds. Made by `benchmarks/bench_refresh.py`.\n",
        markdown_table(rows, list(rows[0])), "",
        f"peak RSS of the benchmark process: {result['peak_rss_mb']} MiB",
    ])
    write_results(args.name, result, text)


if __name__ == "__main__":
    main()
