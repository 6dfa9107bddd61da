"""The in-memory full-text search's two scoring engines (`mrag.retrieve.bm25_score`), by index size: the
compiled loop (numba, `mrag[fast]`) against numpy's dense `bincount`.

Rows are real text (`bench_fulltext.texts_of`); the index is built as a search builds it (`Bm25.build`),
without LanceDB. Queries: the paper's query stories, as the default cuts them; a story's parts are
searched at once (`Bm25.search(parts, 32)`), alternating engines story by story. Every story's rows and
score bytes are compared between the engines (`same`: the share that are equal).

    per story   p50 / p99 ms of each engine, and numpy's p50 over the compiled one's (speedup)
    per part    p50 ms of one part alone, each engine (the parts of the first stories, alternated)
    first call  the compiled engine's first search in a fresh process (numba loads or compiles its
                loops: `cache=True` keeps them on disk after the first run)

Run: python benchmarks/bench_bm25_engines.py [--rows 141381,1000000] [--queries 60]
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from _common import percentiles_ms
from bench_fulltext import over_sizes, texts_of, timed

from mrag.retrieve import bm25_score
from mrag.retrieve.bm25 import Bm25

COLUMNS = ["rows", "build_s", "queries", "parts_per_query", "numba_p50_ms", "numba_p99_ms", "numpy_p50_ms",
           "numpy_p99_ms", "speedup_p50", "part_numba_p50_ms", "part_numpy_p50_ms", "same", "first_call_s"]
COMPILED = bm25_score._kernels()


def engine(name: str) -> None:
    bm25_score._compiled = COMPILED if name == "numba" else None


def first_call_s() -> float:
    """A fresh process's first compiled search of a two-row index, seconds (the loops loaded or compiled)."""
    code = ("import time, pyarrow as pa; from mrag.retrieve.bm25 import Bm25; i = Bm25.build(pa.array(['a b', 'b c']));"
            " t = time.perf_counter(); i.search(['b'], 1); print(time.perf_counter() - t)")
    return round(float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                      check=True).stdout), 2)


def measure(n: int, stories: list[list[str]], work: Path) -> dict[str, object]:
    if COMPILED is None:
        raise SystemExit("numba is not installed: pip install 'mrag[fast]'")
    texts = pa.array(texts_of(n))
    start = time.perf_counter()
    index = Bm25.build(texts)
    build_s = time.perf_counter() - start
    del texts
    for name in ("numba", "numpy"):  # warm: the compiled loops, the row array
        engine(name)
        index.search(stories[0], 32)
    same = []
    for story in stories:
        engine("numba")
        mine = index.search(story, 32)
        engine("numpy")
        theirs = index.search(story, 32)
        same.append(all(a[0].tolist() == b[0].tolist() and a[1].tobytes() == b[1].tobytes()
                        for a, b in zip(mine, theirs)))
    times: dict[str, list[float]] = {"numba": [], "numpy": []}
    parts: dict[str, list[float]] = {"numba": [], "numpy": []}
    for story in stories:  # alternated story by story: load from other jobs hits both alike
        for name in times:
            engine(name)
            times[name].append(timed(lambda s=story: index.search(s, 32)))
    for part in [p for s in stories[:20] for p in s]:
        for name in parts:
            engine(name)
            parts[name].append(timed(lambda p=part: index.search([p], 32)))
    engine("numba")
    row: dict[str, object] = {"rows": n, "build_s": round(build_s, 1), "queries": len(stories),
                              "parts_per_query": round(sum(map(len, stories)) / len(stories), 1)}
    for name, ts in times.items():
        ms = percentiles_ms(ts)
        row[f"{name}_p50_ms"], row[f"{name}_p99_ms"] = ms["p50_ms"], ms["p99_ms"]
        row[f"part_{name}_p50_ms"] = round(float(np.median(parts[name])) * 1e3, 3)
    row["speedup_p50"] = round(float(row["numpy_p50_ms"]) / float(row["numba_p50_ms"]), 2)  # type: ignore[arg-type]
    row["same"] = round(float(np.mean(same)), 4)
    row["first_call_s"] = first_call_s()
    return row


def main() -> None:
    over_sizes(measure, __doc__.splitlines()[0], "bm25-engines",
               "The in-memory full-text search's scoring engines: compiled (numba) against numpy (c = 32, per "
               "query story)", COLUMNS)


if __name__ == "__main__":
    main()
