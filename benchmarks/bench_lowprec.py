"""Issue 17, target 1: the heads' exact search at the cost of equal work, fp32 against the bf16 pass.

On the synthetic index of `bench_core.py` (D=384, H=12 x d=32, six-sentence queries, k=5, c=32), per
size and batch (1 and 32 queries), one round times every (strategy, precision) once, and the
rounds repeat: strategies are interleaved, so load from other jobs on the shared cores hits all alike.
Both paths: the whole `Index.search_many` (query embedding is a random-vector fake) and the scoring
alone (`retrieve.vote_many` on the in-memory matrix). Wall time and the process's CPU time (both torch
threads) per query, p50 over rounds. Ratios: `mrag` over `segment+standard`, `mrag-paper` over
`standard`, same path, batch and round set, against the fp32 search without heads (the target: 1.5x)
and against the search without heads of the same precision (bf16 scans the standard vector too where a
query has two parts or more). Before timing, each precision's results are checked equal (rows and
scores) for every strategy and batch.

Run: python benchmarks/bench_lowprec.py [--sizes 10000,100000,1000000] [--rounds 7] [--precisions fp32,bf16]
Writes benchmarks/results/core-lowprec.json and .md.
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
from bench_core import build_synthetic, long_queries

from mrag.retrieve import exact
from mrag.retrieve import strategies as retrieve

H = 12  # heads of the synthetic index
PAIRS = {"mrag": "segment+standard", "mrag-paper": "standard"}  # strategy -> the same work without heads
HEADLESS = ("standard", "segment+standard")  # no heads (`standard`'s one part: a bf16 pass from 64,000 rows)


def cases(precisions: tuple[str, ...]) -> list[tuple[str, str]]:
    """(strategy, precision) timed in each round."""
    return [(s, p) for s in (*HEADLESS, *PAIRS) for p in precisions]


def prepared(index: Any, strategy: str, texts: list[str]) -> list[tuple[retrieve.QueryVectors, Any]]:
    """Each text's query vectors and parts, as `Index.search_many` makes them."""
    out = []
    for text in texts:
        parts = retrieve.query_parts(strategy, text)
        emb = index.embedder.embed(parts or [text], kind="query")
        qs = [retrieve.QueryVectors(retrieve.unit(s), retrieve.unit(h)) for s, h in zip(emb.standard, emb.heads)]
        out.append((qs[0], qs if parts else None))
    return out


def timed(fn: Any) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_size(n: int, rounds: int, precisions: tuple[str, ...]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        index, _ = build_synthetic(Path(tmp) / "db", n)
        gc.collect()
        before = rss_mb()
        matrix = index.store.matrix()
        scales = index.space_weights()
        rankers = {p: exact.Exact(matrix.standard, matrix.heads, precision=p) for p in precisions}
        start = time.perf_counter()
        two = [prepared(index, "mrag-paper", ["x"])[0][0]] * 2  # two parts: the standard vector's bf16 pass too
        if "bf16" in rankers:
            rankers["bf16"](retrieve.voters("mrag-std", 12, scales), two, 5)
        copy_s = time.perf_counter() - start  # the bf16 copies, made once per loaded matrix
        memory = {"chunks": n, "matrix_mb": round((matrix.standard.nbytes + matrix.heads.nbytes) / 2**20),
                  "bf16_copy_s": round(copy_s, 2) if "bf16" in rankers else "",
                  "rss_growth_mb": round(rss_mb() - before)}
        times: dict[tuple[str, str, str, int], list[tuple[float, float]]] = {}
        for b in (1, 32):
            texts = long_queries(b)
            batches = {s: prepared(index, s, texts) for s, _ in cases(precisions)}
            for s in (*HEADLESS, *PAIRS):  # the precisions agree before anything is timed: the same rows,
                # and scores bit for bit but for one part of a space (fp32: a matrix-vector product)
                found = [retrieve.vote_many(s, batches[s], 5, 32, scales, rankers[p], 12) for p in precisions]
                tolerance = 1e-6 if (s, b) == ("standard", 1) else 0.0
                assert all(np.array_equal(x.rows, y.rows) and np.allclose(x.scores, y.scores, rtol=0, atol=tolerance)
                           for other in found[1:] for x, y in zip(found[0], other)), (s, b)
            for r in range(rounds + 1):  # round 0 warms up
                for s, p in cases(precisions):  # lambdas called at once: the loop's names are current
                    os.environ[exact.PRECISION_VARIABLE] = p  # what the rankers Index.search_many builds read
                    whole = timed(lambda s=s, t=texts: index.search_many(t, k=5, strategy=s, exact=True))
                    scoring = timed(
                        lambda s=s, p=p, q=batches: retrieve.vote_many(s, q[s], 5, 32, scales, rankers[p], H))
                    if r:
                        times.setdefault((s, p, "Index.search_many", b), []).append(whole)
                        times.setdefault((s, p, "scoring (vote_many)", b), []).append(scoring)
        os.environ.pop(exact.PRECISION_VARIABLE, None)
        rows = [{"chunks": n, "strategy": s, "precision": p, "path": path, "batch": b,
                 "wall_p50_ms": round(1000 * float(np.median([w for w, _ in t])) / b, 3),
                 "cpu_p50_ms": round(1000 * float(np.median([c for _, c in t])) / b, 3), "rounds": len(t)}
                for (s, p, path, b), t in times.items()]
    gc.collect()
    return rows, memory


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """p50 of mrag over segment+standard and of mrag-paper over standard, per size, path, batch and
    precision: against the fp32 search without heads (the issue's baseline) and against the one of the
    same precision."""
    at = {(r["chunks"], r["strategy"], r["precision"], r["path"], r["batch"]): r for r in rows}
    out = []
    for (n, s, p, path, b), r in at.items():
        if s in PAIRS:
            fp32, same = at[(n, PAIRS[s], "fp32", path, b)], at[(n, PAIRS[s], p, path, b)]
            out.append({"chunks": n, "path": path, "batch": b, "ratio": f"{s} / {PAIRS[s]}", "precision": p,
                        "wall vs fp32": round(r["wall_p50_ms"] / fp32["wall_p50_ms"], 2),
                        "cpu vs fp32": round(r["cpu_p50_ms"] / fp32["cpu_p50_ms"], 2),
                        "wall vs same precision": round(r["wall_p50_ms"] / same["wall_p50_ms"], 2),
                        "met (wall vs fp32 <= 1.5)": r["wall_p50_ms"] / fp32["wall_p50_ms"] <= 1.5})
    return out


def render(result: dict[str, Any]) -> str:
    rows = result["rows"]
    return "\n".join([
        f"# Exact search in {' and '.join(result['precisions'])} (bf16: re-scored in fp32; issue 17, target 1)\n",
        f"machine: {result['machine']}\n",
        "Two CPU cores, maybe shared with other jobs while this ran (load average at start and end: "
        f"{result['load_average_start_end']}): every round times each (strategy, precision) once, so load "
        "hits all alike; p50 over rounds, per query. `cpu` is the process's CPU time (both torch threads). "
        "Synthetic unit vectors (`bench_core.build_synthetic`), D=384, H=12 x d=32, six-sentence queries, "
        "k=5, c=32. Made by `benchmarks/bench_lowprec.py`; `core.md` is the older single-precision run.\n",
        "## Ratios (target: within 1.5x)\n", markdown_table(ratios(rows), list(ratios(rows)[0])), "",
        "## Latency\n", markdown_table(rows, list(rows[0])), "",
        "## The bf16 copies (the heads and the standard vector)\n",
        markdown_table(result["memory"], list(result["memory"][0])), "",
        f"peak RSS of the benchmark process: {result['peak_rss_mb']} MiB",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--name", default="core-lowprec")
    parser.add_argument("--precisions", default="fp32,bf16",
                        help="fp32 first; fp32 alone where bf16 has no kernels (`settings.cpu_has_bf16_kernels`)")
    args = parser.parse_args()
    precisions = tuple(args.precisions.split(","))
    if precisions[0] != "fp32" or not set(precisions) <= set(exact.PRECISIONS):
        raise SystemExit(f"--precisions: fp32 first, then any of {exact.PRECISIONS}")
    start_load = os.getloadavg()
    rows, memory = [], []
    for n in (int(s) for s in args.sizes.split(",") if s):
        print(f"{n} chunks ...", flush=True)
        size_rows, size_memory = bench_size(n, args.rounds if n < 1_000_000 else max(3, args.rounds // 2), precisions)
        rows += size_rows
        memory.append(size_memory)
        print(markdown_table(ratios(size_rows), list(ratios(size_rows)[0])), flush=True)
    result = {"machine": machine(), "precisions": precisions, "rows": rows, "memory": memory,
              "peak_rss_mb": round(peak_rss_mb()), "load_average_start_end": [start_load, os.getloadavg()]}
    write_results(args.name, result, render(result))


if __name__ == "__main__":
    main()
