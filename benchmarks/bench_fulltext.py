"""What the full-text (BM25) space costs as the index grows: the default strategy asks LanceDB's
full-text index once per query part (`mrag.retrieve.fulltext`), beside the vector ranking.

Rows are real text: the paper's 1,250 Wikipedia articles cut into sentences and 2- and 3-sentence
windows (41,381 rows, `bench_ann_1m.real_texts`); larger tables add rows of three random sentences of
one article (seeded), so term statistics stay those of real prose. Each size is one LanceDB table
(id, text) with the native full-text index mrag builds (`fulltext.build`). Queries: the sentences of
the paper's 250 query stories, as the default cuts them (`mrag.chunk.segment_query`).

    per part      one full-text query, c = 32: through LanceDB's synchronous API (`_query_sync`), and
                  alone as a batch on LanceDB's event loop (`fulltext.started`), p50
    per query     all parts of a story: one after the other through the synchronous API (serial), on
                  a pool of QUERY_THREADS threads (pool: what searches did before), and as one batch on
                  LanceDB's event loop (batch, `fulltext.started`: what the ANN path's `FullTextRanker`
                  does), and as one batch without the chunk ids (batch_rows: the exact path's, which
                  places hits by Lance row id), p50 / p99; alternated story by story, after checking
                  that every way finds the same hits

Run: python benchmarks/bench_fulltext.py [--rows 41381,250000,1000000] [--queries 60]
"""

from __future__ import annotations

import argparse
import bz2
import json
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
from _common import machine, markdown_table, percentiles_ms, write_results
from bench_ann_1m import DATA, real_texts

from mrag.chunk import segment_query, split_sentences
from mrag.retrieve import fulltext

COLUMNS = ["rows", "build_s", "parts", "part_sync_p50_ms", "part_batch_p50_ms", "queries", "parts_per_query",
           "serial_p50_ms", "serial_p99_ms", "pool_p50_ms", "pool_p99_ms", "batch_p50_ms", "batch_p99_ms",
           "batch_rows_p50_ms", "batch_rows_p99_ms"]


def texts_of(n: int, seed: int = 0) -> list[str]:
    """n rows of real text: the real rows first, then three random sentences of one article each."""
    rows = real_texts(DATA)[:n]
    articles = [split_sentences(a["text"]) for a in json.load(bz2.open(DATA / "wikipedia_articles_v1.json.bz2"))]
    articles = [a for a in articles if len(a) >= 3]
    rng = random.Random(seed)
    while len(rows) < n:
        article = rng.choice(articles)
        rows.append(" ".join(rng.sample(article, 3)))
    return rows


def measure(n: int, stories: list[list[str]], work: Path) -> dict[str, object]:
    texts = texts_of(n)
    table = lancedb.connect(work / f"fts-{n}").create_table(
        "chunks", pa.table({"id": [f"r{i}" for i in range(n)], "text": texts}))
    start = time.perf_counter()
    fulltext.build(table)
    build_s = time.perf_counter() - start
    parts = [p for s in stories for p in s]
    fulltext._query(table, parts[0], 32)  # warm: the index is read once
    per_part: dict[str, list[float]] = {"sync": [], "batch": []}
    for part in parts:  # one search: through LanceDB's synchronous API, and alone as a batch
        per_part["sync"].append(timed(lambda p=part: fulltext._query_sync(table, p, 32)))
        per_part["batch"].append(timed(lambda p=part: fulltext.started(table, [p], 32)()))
    pool = fulltext._pool()
    per_query: dict[str, list[float]] = {"serial": [], "pool": [], "batch": [], "batch_rows": []}
    for story in stories:  # alternated story by story: load from other jobs hits all alike
        batch, serial = fulltext.started(table, story, 32)(), [fulltext._query_sync(table, p, 32) for p in story]
        assert all(a[:2] == b[:2] and np.array_equal(a[2], b[2]) for a, b in zip(batch, serial)), story
        rows_only = fulltext.started(table, story, 32, ids=False)()
        assert all(a[0] == b[0] and np.array_equal(a[2], b[2]) for a, b in zip(rows_only, serial)), story
        per_query["serial"].append(timed(lambda s=story: [fulltext._query_sync(table, p, 32) for p in s]))
        per_query["pool"].append(timed(
            lambda s=story: [f.result() for f in [pool.submit(fulltext._query_sync, table, p, 32) for p in s]]))
        per_query["batch"].append(timed(lambda s=story: fulltext.started(table, s, 32)()))
        per_query["batch_rows"].append(timed(lambda s=story: fulltext.started(table, s, 32, ids=False)()))
    row: dict[str, object] = {"rows": n, "build_s": round(build_s, 1), "parts": len(parts), "queries": len(stories),
                              "parts_per_query": round(len(parts) / len(stories), 1)}
    for name, times in [*(("part_" + k, v) for k, v in per_part.items()), *per_query.items()]:
        ms = percentiles_ms(times)
        row[f"{name}_p50_ms"], row[f"{name}_p99_ms"] = ms["p50_ms"], ms["p99_ms"]
    return row


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def over_sizes(measure: Callable[[int, list[list[str]], Path], dict[str, object]], description: str,
               name: str, heading: str, columns: list[str]) -> None:
    """The command line of a benchmark that `measure`s one table per size (--rows) with the paper's query
    stories (--queries), and writes its table under `name` (--name)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rows", default="41381,250000,1000000")
    parser.add_argument("--queries", type=int, default=60, help="query stories (every other one of the 250)")
    parser.add_argument("--name", default=name)
    args = parser.parse_args()
    stories = [segment_query(q["text"]) for q in json.load(bz2.open(DATA / "wikipedia_queries_v1.json.bz2"))]
    stories = stories[::2][: args.queries]
    rows, load = [], [os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.rows.split(",")):
            rows.append(measure(n, stories, Path(tmp)))
            print(rows[-1], flush=True)
    load.append(os.getloadavg())
    header = (f"# {heading}\n\nmachine: {machine()}; real Wikipedia prose (`bench_fulltext.texts_of`); load average "
              f"(1, 5, 15 min) at the start and end: {[tuple(round(x, 2) for x in a) for a in load]}\n\n")
    result = {"machine": machine(), "load_average": load, "rows": rows}
    write_results(args.name, result, header + markdown_table(rows, columns))


def main() -> None:
    over_sizes(measure, __doc__.splitlines()[0], "fulltext-scale",
               f"The full-text space's cost by index size (LanceDB native FTS, c = 32; pool of "
               f"{fulltext.QUERY_THREADS} threads)", COLUMNS)


if __name__ == "__main__":
    main()
