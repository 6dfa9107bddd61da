"""What the full-text (BM25) space costs as the index grows: the default strategy asks LanceDB's
full-text index once per query part (`mrag.retrieve.fulltext`), beside the vector ranking.

Rows are real text: the paper's 1,250 Wikipedia articles cut into sentences and 2- and 3-sentence
windows (41,381 rows, `bench_ann_1m.real_texts`); larger tables add rows of three random sentences of
one article (seeded), so term statistics stay those of real prose. Each size is one LanceDB table
(id, text) with the native full-text index mrag builds (`fulltext.build`). Queries: the sentences of
the paper's 250 query stories, as the default cuts them (`mrag.chunk.segment_query`).

    per part      one full-text query (`fulltext._query`, c = 32), p50 / p99
    per query     all parts of a story one after the other (serial), and on the pool the search uses
                  (`FullTextRanker`), p50 / p99; alternated story by story

Run: python benchmarks/bench_fulltext.py [--rows 41381,250000,1000000] [--queries 60]
"""

from __future__ import annotations

import argparse
import bz2
import json
import random
import tempfile
import time
from pathlib import Path

import lancedb
import pyarrow as pa
from _common import machine, markdown_table, percentiles_ms, write_results
from bench_ann_1m import DATA, real_texts

from mrag.chunk import segment_query, split_sentences
from mrag.retrieve import fulltext

COLUMNS = ["rows", "build_s", "parts", "part_p50_ms", "part_p99_ms", "queries", "parts_per_query",
           "serial_p50_ms", "serial_p99_ms", "pool_p50_ms", "pool_p99_ms"]


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
    per_part = []
    for part in parts:
        start = time.perf_counter()
        fulltext._query(table, part, 32)
        per_part.append(time.perf_counter() - start)
    pool, serial, pooled = fulltext._pool(), [], []
    for story in stories:
        start = time.perf_counter()
        [fulltext._query(table, p, 32) for p in story]
        serial.append(time.perf_counter() - start)
        start = time.perf_counter()
        [f.result() for f in [pool.submit(fulltext._query, table, p, 32) for p in story]]
        pooled.append(time.perf_counter() - start)
    part_ms, serial_ms, pool_ms = percentiles_ms(per_part), percentiles_ms(serial), percentiles_ms(pooled)
    return {"rows": n, "build_s": round(build_s, 1), "parts": len(parts), "part_p50_ms": part_ms["p50_ms"],
            "part_p99_ms": part_ms["p99_ms"], "queries": len(stories),
            "parts_per_query": round(len(parts) / len(stories), 1), "serial_p50_ms": serial_ms["p50_ms"],
            "serial_p99_ms": serial_ms["p99_ms"], "pool_p50_ms": pool_ms["p50_ms"], "pool_p99_ms": pool_ms["p99_ms"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="41381,250000,1000000")
    parser.add_argument("--queries", type=int, default=60, help="query stories (every other one of the 250)")
    parser.add_argument("--name", default="fulltext-scale")
    args = parser.parse_args()
    stories = [segment_query(q["text"]) for q in json.load(bz2.open(DATA / "wikipedia_queries_v1.json.bz2"))]
    stories = stories[::2][: args.queries]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.rows.split(",")):
            rows.append(measure(n, stories, Path(tmp)))
            print(rows[-1], flush=True)
    header = ("# The full-text space's cost by index size (LanceDB native FTS, c = 32)\n\n"
              f"machine: {machine()}; {fulltext.QUERY_THREADS} query threads; real Wikipedia prose\n\n")
    write_results(args.name, {"machine": machine(), "rows": rows}, header + markdown_table(rows, COLUMNS))


if __name__ == "__main__":
    main()
