"""One query part of one space in the exact scan: fp32 (a matrix-vector product) against bf16 (two equal
columns, the kept rows re-scored by fp32's product of two columns), and why the re-score cannot repeat
the matrix-vector sums.

Run: python benchmarks/bench_one_part.py [--rows 20000,50000,64000,100000,200000,1000000] [--queries 20]
Random unit vectors, D = 384, c = 32 (`exact.Exact`, the `standard` voter alone). Interleaved: each query
is ranked by both precisions in turn; p50 ms per query. The bf16 pass is forced at every size (the
search takes it from `lowprec.SPACE_ONE_PART_ROWS` rows), and the products behind both timed alone at
1M rows. Prints a table and writes benchmarks/results/core-one-part.json and .md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _common import machine, markdown_table, time_calls, write_results

from mrag.retrieve import exact, lowprec
from mrag.retrieve import strategies as retrieve

D = 384


def bench_rows(n: int, queries: int, rng: np.random.Generator) -> dict[str, object]:
    standard = retrieve.unit(rng.standard_normal((n, D), dtype=np.float32)).astype(np.float32)
    heads = np.zeros((1, n, 0), np.float32)
    chosen = retrieve.voters("standard", 1, {"heads": np.ones(1), "standard": np.ones(1), "split": np.ones(1)})
    no_heads = np.zeros((1, 0), np.float32)
    parts = [retrieve.QueryVectors(retrieve.unit(rng.standard_normal(D)).astype(np.float32), no_heads)
             for _ in range(queries)]
    rankers = {p: exact.Exact(standard, heads, precision=p) for p in exact.PRECISIONS}
    threshold, lowprec.SPACE_ONE_PART_ROWS = lowprec.SPACE_ONE_PART_ROWS, 0  # the bf16 pass at every size
    for ranker in rankers.values():  # warm up (and make the bf16 copy)
        ranker(chosen, parts[:1], 32)
    times: dict[str, list[float]] = {p: [] for p in rankers}
    swapped, largest = 0, 0.0
    for part in parts:
        found = {}
        for p, ranker in rankers.items():
            start = time.perf_counter()
            found[p] = ranker(chosen, [part], 32)
            times[p].append(time.perf_counter() - start)
        swapped += int(not np.array_equal(found["fp32"][0], found["bf16"][0]))
        largest = max(largest, float(np.abs(found["fp32"][1] - found["bf16"][1]).max()))
    lowprec.SPACE_ONE_PART_ROWS = threshold
    fp32, bf16 = (1000 * float(np.median(times[p])) for p in ("fp32", "bf16"))
    return {"rows": n, "fp32_p50_ms": round(fp32, 2), "bf16_p50_ms": round(bf16, 2), "speedup": round(fp32 / bf16, 2),
            "search takes": "bf16" if n >= threshold else "fp32", "lists with other rows": swapped,
            "largest score difference": largest}


def products(rng: np.random.Generator, n: int = 1_000_000, repeats: int = 7) -> list[dict[str, object]]:
    """p50 ms of the products alone over n rows: fp32 matrix-vector, fp32 and bf16 with two columns."""
    x = torch.from_numpy(retrieve.unit(rng.standard_normal((n, D), dtype=np.float32)).astype(np.float32))
    x16 = x.to(torch.bfloat16)
    q = torch.from_numpy(retrieve.unit(rng.standard_normal(D)).astype(np.float32))
    two = torch.stack([q, q], 1)
    cases = {"fp32 matrix-vector (torch.mv)": lambda: torch.mv(x, q),
             "fp32, two columns (torch.mm)": lambda: torch.mm(x, two),
             "bf16, two columns (torch.mm)": lambda: torch.mm(x16, two.to(torch.bfloat16))}
    return [{"product": name, "rows": n, "p50_ms": round(1000 * float(np.median(time_calls(product, repeats))), 1)}
            for name, product in cases.items()]


def mv_subsets(trials: int, rng: np.random.Generator) -> int:
    """Of `trials` random sets of rows (1-3,000 of 1M, padded to SPACE_RESCORE_ROWS), how many get other
    sums from `torch.mv` of the gathered rows than from `torch.mv` of all rows."""
    x = torch.from_numpy(retrieve.unit(rng.standard_normal((1_000_000, D), dtype=np.float32)).astype(np.float32))
    q = torch.from_numpy(retrieve.unit(rng.standard_normal(D)).astype(np.float32))
    full = torch.mv(x, q)
    differ = 0
    for _ in range(trials):
        rows = torch.from_numpy(rng.integers(0, len(x), int(rng.integers(1, 3000))))
        padded = torch.cat([rows, rows[:1].expand(max(0, lowprec.SPACE_RESCORE_ROWS - len(rows)))])
        differ += int((torch.mv(x[padded], q)[: len(rows)] != full[rows]).any())
    return differ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="20000,50000,64000,100000,200000,1000000")
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--subsets", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for n in (int(r) for r in args.rows.split(",")):
        rows.append(bench_rows(n, args.queries, rng))
        print(rows[-1], flush=True)
    differ = mv_subsets(args.subsets, rng)
    kernels = products(rng)
    table = markdown_table(rows, list(rows[0]))
    markdown = "\n".join([
        "# One query part of one space: fp32 matrix-vector scan against the bf16 pass (issue 17, target 1)\n",
        f"machine: {machine()}\n",
        f"`benchmarks/bench_one_part.py`: random unit vectors, D = {D}, c = 32, the `standard` voter alone, "
        f"{args.queries} queries, each ranked by both precisions in turn; p50 ms per query of `exact.Exact`. "
        "The bf16 pass is forced at every size; 'search takes': what a search takes there "
        f"(the bf16 pass from `SPACE_ONE_PART_ROWS` = {lowprec.SPACE_ONE_PART_ROWS} rows). 'lists with other "
        "rows': queries whose 32 rows differ between the precisions; 'largest score difference': against "
        "the fp32 matrix-vector sums.\n",
        table, "", "The products alone (p50 of 7):\n", markdown_table(kernels, list(kernels[0])), "",
        f"`torch.mv` of gathered rows against `torch.mv` of all 1M rows: {differ} of {args.subsets} random sets "
        "of rows got other sums (so the bf16 pass re-scores one part by fp32's product of two columns, whose "
        "sums it can repeat, and not by `mv`).",
    ])
    print(markdown)
    write_results("core-one-part", {"machine": machine(), "rows": rows, "products": kernels,
                                    "mv_subsets_differ": differ, "mv_subsets": args.subsets}, markdown)


if __name__ == "__main__":
    main()
