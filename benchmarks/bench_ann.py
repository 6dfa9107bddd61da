"""Per-head ANN indexes in LanceDB: recall and latency on one 32-dim head column against exact search.

The mrag store keeps the H heads packed in one `heads` column, so LanceDB cannot index a single head.
This benchmark uses its own scratch table (never an mrag store) with one head-sized column `h` of unit
vectors (d=32, MiniLM's head size) and measures, at 100k rows:
- exact top-k in numpy (the fused scan's per-head cost) and LanceDB's flat scan of the column;
- IVF_PQ, IVF_HNSW_SQ and IVF_FLAT indexes: build time, p50/p99 query latency, recall@10 and
  recall@32 (mrag votes with each head's top c=32) against the exact cosine top-k.
Two data sets: `clustered` (a mixture of 2,000 Gaussian clusters, closer to real embeddings) and
`uniform` (random directions: the worst case for any ANN index).

Run: python benchmarks/bench_ann.py [--quick] [--rows 100000]. Writes benchmarks/results/ann.json and .md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from _common import machine, markdown_table, percentiles_ms, time_calls, write_results

DIM = 32
QUERIES = 100


def make_vectors(kind: str, n: int, seed: int) -> np.ndarray:
    """(n, DIM) float32 unit vectors."""
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        x = rng.standard_normal((n, DIM), dtype=np.float32)
    else:
        centers = rng.standard_normal((2000, DIM), dtype=np.float32)
        x = centers[rng.integers(0, len(centers), n)] + 0.35 * rng.standard_normal((n, DIM), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact_top(data: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    sims = queries @ data.T  # (Q, N)
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    return np.take_along_axis(top, np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1), axis=1)


def recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k].tolist()) & set(t.tolist())) / k for f, t in zip(found, truth)]))


def lance_search(table: Any, q: np.ndarray, k: int, **knobs: Any) -> np.ndarray:
    query = table.search(q, vector_column_name="h").distance_type("cosine").limit(k).select(["id"])
    for name, value in knobs.items():
        query = getattr(query, name)(value) if value is not None else getattr(query, name)()
    return np.asarray(query.to_arrow()["id"].to_numpy())


def bench_kind(db: Any, kind: str, n: int, repeats: int) -> list[dict[str, Any]]:
    data = make_vectors(kind, n + QUERIES, seed=0)
    data, queries = data[:n], data[n:]
    truth10, truth32 = exact_top(data, queries, 10), exact_top(data, queries, 32)
    table = db.create_table(
        f"scratch_{kind}",
        data=pa.table({"id": np.arange(n), "h": pa.FixedSizeListArray.from_arrays(pa.array(data.reshape(-1)), DIM)}),
        mode="overwrite",
    )
    rows: list[dict[str, Any]] = []

    def measure(method: str, build_s: float | None, **knobs: Any) -> None:
        found10 = [lance_search(table, q, 10, **knobs) for q in queries]
        found32 = [lance_search(table, q, 32, **knobs) for q in queries]
        times = time_calls(lambda: lance_search(table, queries[0], 32, **knobs), repeats)
        rows.append({"data": kind, "rows": n, "method": method, "build_s": build_s, **percentiles_ms(times),
                     "recall@10": round(recall(found10, truth10), 3), "recall@32": round(recall(found32, truth32), 3)})
        print(markdown_table(rows[-1:], list(rows[-1])), flush=True)

    times = time_calls(lambda: exact_top(data, queries[:1], 32), repeats)
    rows.append({"data": kind, "rows": n, "method": "exact, numpy (one head)", "build_s": 0.0, **percentiles_ms(times),
                 "recall@10": 1.0, "recall@32": 1.0})
    measure("LanceDB flat scan (no index)", 0.0, bypass_vector_index=None)
    for index_type, options, variants in (
        ("IVF_PQ", {"num_partitions": max(16, int(np.sqrt(n))), "num_sub_vectors": DIM // 4},
         [{"nprobes": 20}, {"nprobes": 20, "refine_factor": 5}, {"nprobes": 60, "refine_factor": 5}]),
        ("IVF_HNSW_SQ", {"num_partitions": max(4, n // 50_000), "m": 16, "ef_construction": 150},
         [{"ef": 64}, {"ef": 200}]),
        ("IVF_FLAT", {"num_partitions": max(16, int(np.sqrt(n)))}, [{"nprobes": 20}, {"nprobes": 60}]),
    ):
        start = time.perf_counter()
        table.create_index(metric="cosine", vector_column_name="h", index_type=index_type, replace=True, **options)
        build = round(time.perf_counter() - start, 1)
        for knobs in variants:
            label = ", ".join(f"{k}={v}" for k, v in knobs.items())
            measure(f"{index_type} ({label})", build, **knobs)
    return rows


def main() -> None:
    import lancedb

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    n, repeats = (5000, 5) if args.quick else (args.rows, 30)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        db = lancedb.connect(Path(tmp) / "scratch")
        for kind in ("clustered", "uniform"):
            rows += bench_kind(db, kind, n, repeats)
    result = {"machine": machine(), "rows": rows}
    md = ["# Per-head ANN in LanceDB (one 32-dim head column, cosine, k=10 and 32)\n",
          f"machine: {result['machine']}\n",
          markdown_table(rows, ["data", "rows", "method", "build_s", "p50_ms", "p99_ms", "recall@10", "recall@32"])]
    write_results("ann-quick" if args.quick else "ann", result, "\n".join(md))


if __name__ == "__main__":
    main()
