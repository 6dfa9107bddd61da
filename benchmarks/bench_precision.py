"""The exact scan's precision on this CPU: fp32 against the bf16 pass with its fp32 re-score (`lowprec`),
on the same random unit vectors (D = 384, H = 12 x d = 32; `segment+standard` and `mrag` with six-part
queries, `standard` with one; k = 5, c = 32; batch 1), rounds interleaved. Both must return the same rows
(checked). What `exact.default_precision()` picks on this CPU is printed beside torch's CPU capability:
bf16 pays only where torch has bf16 kernels for the CPU (oneDNN's: AVX-512 and up).

Run: python benchmarks/bench_precision.py [--rows 141381] [--rounds 5] [--name precision-cpu]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _common import machine, markdown_table, percentiles_ms, write_results

from mrag.retrieve import exact
from mrag.retrieve import strategies as retrieve

H, D_HEAD, D, PARTS = 12, 32, 384, 6
STRATEGIES = {"standard": 1, "segment+standard": PARTS, "mrag": PARTS}


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=141_381)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--name", default="precision-cpu")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    standard = unit(rng.standard_normal((args.rows, D), dtype=np.float32))
    heads = unit(rng.standard_normal((H, args.rows, D_HEAD), dtype=np.float32))
    scales = {"heads": np.linspace(0.5, 2, H), "standard": np.ones(1), "split": np.ones(H)}
    rankers = {p: exact.Exact(standard, heads, precision=p) for p in exact.PRECISIONS}
    rows = []
    for strategy, parts in STRATEGIES.items():
        vectors = [retrieve.QueryVectors(unit(rng.standard_normal(D, dtype=np.float32)),
                                         unit(rng.standard_normal((H, D_HEAD), dtype=np.float32)))
                   for _ in range(parts + 1)]
        query = (vectors[0], vectors[1:] if parts > 1 else None)  # (the whole query, its parts)
        found = {p: retrieve.vote_many(strategy, [query], 5, 32, scales, r, H) for p, r in rankers.items()}  # warm
        assert np.array_equal(found["bf16"][0].rows, found["fp32"][0].rows), strategy
        times: dict[str, list[float]] = {p: [] for p in rankers}
        for _ in range(args.rounds):
            for p, ranker in rankers.items():
                start = time.perf_counter()
                retrieve.vote_many(strategy, [query], 5, 32, scales, ranker, H)
                times[p].append(time.perf_counter() - start)
        ms = {p: percentiles_ms(t)["p50_ms"] for p, t in times.items()}
        rows.append({"rows": args.rows, "strategy": strategy, "parts": parts, "fp32_p50_ms": ms["fp32"],
                     "bf16_p50_ms": ms["bf16"], "bf16_over_fp32": round(ms["bf16"] / ms["fp32"], 2)})
        print(rows[-1], flush=True)
    chosen = {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "bf16_kernels": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
              "default_precision": exact.default_precision()}
    columns = ["rows", "strategy", "parts", "fp32_p50_ms", "bf16_p50_ms", "bf16_over_fp32"]
    markdown = (f"# The exact scan's precision on this CPU ({args.name})\n\nmachine: {machine()}; {chosen}\n\n"
                f"p50 ms per query of the ranking and vote, batch 1, {args.rounds} interleaved rounds; the same "
                f"rows in both.\n\n" + markdown_table(rows, columns))
    print(markdown)
    write_results(args.name, {"machine": machine(), **chosen, "rows": rows}, markdown)


if __name__ == "__main__":
    main()
