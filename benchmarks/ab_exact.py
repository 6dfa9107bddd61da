"""A/B of the exact ranker: another version of `mrag/retrieve/exact.py` against the installed one, on the same
random unit vectors (D = 384, H = 12 x d = 32, six-part queries, k = 5, c = 32), interleaved rounds.

Run: git show REV:src/mrag/retrieve/exact.py > /tmp/exact_old.py   (src/mrag/exact.py before the retrieve/ package)
     python benchmarks/ab_exact.py /tmp/exact_old.py [--rows 1000000] [--rounds 3]
Both versions must return the same rows for every query (checked). Prints a table and writes
benchmarks/results/ab-exact.json and .md: p50 ms per query of the scoring (`retrieve.vote_many`).
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import numpy as np
from _common import machine, markdown_table, write_results

from mrag.retrieve import exact
from mrag.retrieve import strategies as retrieve

H, D_HEAD, D, PARTS = 12, 32, 384, 6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", help="path of the other exact.py")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--strategies", default="standard,mrag-paper,mrag-std,mrag")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location("exact_old", args.old)
    assert spec is not None and spec.loader is not None
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)

    rng = np.random.default_rng(0)

    def unit(shape: tuple[int, ...]) -> np.ndarray:
        return retrieve.unit(rng.standard_normal(shape, np.float32)).astype(np.float32)

    standard, heads = unit((args.rows, D)), unit((H, args.rows, D_HEAD))
    scales = {"heads": np.linspace(0.5, 2, H), "standard": np.ones(1), "split": np.ones(H)}
    rankers = {"other": old.Exact(standard, heads), "this": exact.Exact(standard, heads)}
    rows = []
    for strategy in args.strategies.split(","):
        for b in map(int, args.batches.split(",")):
            batch = [
                (
                    retrieve.QueryVectors(unit((D,)), unit((H, D_HEAD))),
                    [retrieve.QueryVectors(unit((D,)), unit((H, D_HEAD))) for _ in range(PARTS)],
                )
                for _ in range(b)
            ]
            found = {k: retrieve.vote_many(strategy, batch, 5, 32, scales, r, H) for k, r in rankers.items()}
            same = all(np.array_equal(x.rows, y.rows) for x, y in zip(found["other"], found["this"]))
            times: dict[str, list[float]] = {k: [] for k in rankers}
            for _ in range(args.rounds):
                for k, r in rankers.items():
                    start = time.perf_counter()
                    retrieve.vote_many(strategy, batch, 5, 32, scales, r, H)
                    times[k].append((time.perf_counter() - start) / b * 1e3)
            other, this = (float(np.median(times[k])) for k in ("other", "this"))
            rows.append(
                {
                    "chunks": args.rows,
                    "strategy": strategy,
                    "batch": b,
                    "other_p50_ms": round(other, 3),
                    "this_p50_ms": round(this, 3),
                    "this_over_other": round(this / other, 2),
                    "same_rows": same,
                }
            )
            print(rows[-1], flush=True)
    table = markdown_table(rows, list(rows[0]))
    print(table)
    md = f"# exact ranker A/B ({args.old} vs installed)\n\nmachine: {machine()}\n\n{table}\n"
    write_results("ab-exact", {"machine": machine(), "other": args.old, "rows": rows}, md)


if __name__ == "__main__":
    main()
