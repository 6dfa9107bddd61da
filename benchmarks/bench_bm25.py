"""The full-text space in memory (`mrag.retrieve.bm25`) against LanceDB's full-text index, by index size.

Rows are real text (`bench_fulltext.texts_of`: the paper's Wikipedia articles as sentences and windows,
larger tables adding rows of three sentences of one article). Per size, one LanceDB table (id, text) with
the index mrag builds; the in-memory index is built from the table's text as a search builds it
(`bm25.Bm25.build` over the text read by `mrag.matrix.read_ranges`; the read and the build timed apart).
Queries: the sentences of the paper's query stories, as the default cuts them.

    per query   a story's parts: LanceDB as the exact path asks it (one batch on its event loop, no chunk
                ids: `fulltext.started(..., ids=False)`) and the in-memory index (`Bm25.search`), p50 / p99,
                alternated story by story
    agreement   per part, of LanceDB's top 10: the share the in-memory index also returns in its top 10,
                and whether both put the same row first (LanceDB's index covers every row: built last)
    memory      the in-memory index's arrays (postings, frequencies, impacts, lengths), MB (the vocabulary's
                strings aside); and the most the process's RSS grew during the build (sampled every 5 ms)

Run: python benchmarks/bench_bm25.py [--rows 41381,250000,1000000] [--queries 60]
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
from _common import percentiles_ms, rss_growth_during
from bench_fulltext import over_sizes, texts_of, timed

from mrag.matrix import read_ranges
from mrag.retrieve import fulltext
from mrag.retrieve.bm25 import Bm25

COLUMNS = ["rows", "lancedb_build_s", "text_read_s", "memory_build_s", "memory_build_peak_mb", "memory_mb", "queries",
           "parts_per_query", "lancedb_p50_ms", "lancedb_p99_ms", "memory_p50_ms", "memory_p99_ms", "speedup_p50",
           "top10_agreement", "top1_equal"]


def measure(n: int, stories: list[list[str]], work: Path) -> dict[str, object]:
    table = lancedb.connect(work / f"bm25-{n}").create_table(
        "chunks", pa.table({"id": [f"r{i}" for i in range(n)], "text": texts_of(n)}))
    start = time.perf_counter()
    fulltext.build(table)
    lancedb_build_s = time.perf_counter() - start
    start = time.perf_counter()
    texts = pa.Table.from_batches(list(read_ranges(table, ["text"], n)))["text"]
    read_s = time.perf_counter() - start
    pa.default_memory_pool().release_unused()
    start = time.perf_counter()
    index, build_peak_mb = rss_growth_during(functools.partial(Bm25.build, texts))
    build_s = time.perf_counter() - start
    del texts
    held = sum(s.starts.nbytes + s.rows.nbytes + s.tf.nbytes for s in index.segments) + index.lengths.nbytes \
        + sum(i.nbytes for i in index.impacts) \
        + index.norm.nbytes + index.idf.nbytes + index.df.nbytes
    row_ids = table.search().select(["id"]).with_row_id(True).limit(n).to_arrow()["_rowid"].to_numpy()
    position = {int(r): i for i, r in enumerate(row_ids)}  # the scan order: the texts' order above
    overlap, first = [], []
    for story in stories:  # the same rows: LanceDB's by Lance row id, the in-memory index's by position
        theirs = fulltext.started(table, story, 32, ids=False)()
        for (rows, _, _), (mine, _) in zip(theirs, index.search(story, 32)):
            if rows:
                want = [position[r] for r in rows[:10]]
                overlap.append(len(set(want) & set(mine[:10].tolist())) / len(want))
                first.append(bool(len(mine)) and int(mine[0]) == want[0])
    times: dict[str, list[float]] = {"lancedb": [], "memory": []}
    for story in stories:  # alternated story by story
        times["lancedb"].append(timed(lambda s=story: fulltext.started(table, s, 32, ids=False)()))
        times["memory"].append(timed(lambda s=story: index.search(s, 32)))
    row: dict[str, object] = {
        "rows": n, "lancedb_build_s": round(lancedb_build_s, 1), "text_read_s": round(read_s, 2),
        "memory_build_s": round(build_s, 2), "memory_build_peak_mb": round(build_peak_mb),
        "memory_mb": round(held / 2**20),
        "queries": len(stories), "parts_per_query": round(sum(map(len, stories)) / len(stories), 1),
        "top10_agreement": round(float(np.mean(overlap)), 4), "top1_equal": round(float(np.mean(first)), 4)}
    for name, ts in times.items():
        ms = percentiles_ms(ts)
        row[f"{name}_p50_ms"], row[f"{name}_p99_ms"] = ms["p50_ms"], ms["p99_ms"]
    row["speedup_p50"] = round(float(row["lancedb_p50_ms"]) / float(row["memory_p50_ms"]), 1)  # type: ignore[arg-type]
    return row


def main() -> None:
    over_sizes(measure, __doc__.splitlines()[0], "bm25-memory",
               "The full-text space in memory against LanceDB's index (c = 32, per query story)", COLUMNS)


if __name__ == "__main__":
    main()
