"""Issue 17, target 4: the exact scan on a GPU (`mrag.retrieve.device_scan`) against the CPU's.

On the synthetic index of `bench_core.py` (D=384, H=12 x d=32, six-sentence queries, k=5, c=32), per size
and batch (1 and 32 queries): the scoring (`retrieve.vote_many` on the in-memory matrix) of `standard`,
`segment+standard`, `mrag-paper` and `mrag`, p50 per query over rounds, on the CPU (its default precision)
and on the device; the matrix's copy to the device (once per loaded matrix) is timed apart. Before timing,
the share of result rows equal to the CPU fp32 scan's is recorded (a GPU sums in another order: rows that
score within the last bits may swap).

Run: python benchmarks/bench_device.py [--device cuda] [--sizes 100000,1000000] [--rounds 7]
(`--device cpu:0` runs the device code on the CPU, to try the script.) Writes
benchmarks/results/device-scan.json and .md.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import machine, markdown_table, write_results
from bench_core import build_synthetic, long_queries
from bench_lowprec import prepared

from mrag.retrieve import exact
from mrag.retrieve import strategies as retrieve
from mrag.retrieve.device_scan import DeviceExact, on_device

STRATEGIES = ("standard", "segment+standard", "mrag-paper", "mrag")


def synced(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_size(n: int, rounds: int, device: str) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        index, _ = build_synthetic(Path(tmp) / "db", n)
        matrix, scales = index.store.matrix(), index.space_weights()
        start = time.perf_counter()
        on_device(matrix.standard, device), on_device(matrix.heads, device)
        synced(device)
        copy_s = time.perf_counter() - start
        rankers = {"cpu": exact.Exact(matrix.standard, matrix.heads), device: DeviceExact(
            matrix.standard, matrix.heads, device=device)}
        reference = exact.Exact(matrix.standard, matrix.heads, precision="fp32")
        rows = []
        for b in (1, 32):
            batches = {s: prepared(index, s, long_queries(b)) for s in STRATEGIES}
            for s in STRATEGIES:
                want = retrieve.vote_many(s, batches[s], 5, 32, scales, reference, 12)
                found = retrieve.vote_many(s, batches[s], 5, 32, scales, rankers[device], 12)
                same = np.mean([np.array_equal(x.rows, y.rows) for x, y in zip(want, found)])
                times: dict[str, list[float]] = {name: [] for name in rankers}
                for r in range(rounds + 1):  # round 0 warms up; the two alternate, so load hits both alike
                    for name, ranker in rankers.items():
                        began = time.perf_counter()
                        retrieve.vote_many(s, batches[s], 5, 32, scales, ranker, 12)
                        synced(name)
                        if r:
                            times[name].append(time.perf_counter() - began)
                cpu_ms, device_ms = (1000 * float(np.median(times[name])) / b for name in rankers)
                rows.append({"chunks": n, "strategy": s, "batch": b, "cpu_p50_ms": round(cpu_ms, 3),
                             "device_p50_ms": round(device_ms, 3), "speedup": round(cpu_ms / device_ms, 2),
                             "same_rows_as_cpu_fp32": round(float(same), 3), "copy_to_device_s": round(copy_s, 2),
                             "cpu_precision": rankers["cpu"].precision, "rounds": rounds})
                print(rows[-1], flush=True)
        del rankers, matrix
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--name", default="device-scan")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run on a machine with a GPU, or --device cpu:0 to try the script")
    rows = [r for n in (int(s) for s in args.sizes.split(",") if s) for r in bench_size(n, args.rounds, args.device)]
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    result = {"machine": machine(), "device": name, "rows": rows}
    text = "\n".join([
        "# The exact scan on a device against the CPU (issue 17, target 4)\n",
        f"machine: {result['machine']}; device: {name}\n",
        "Scoring only (`retrieve.vote_many` on the in-memory matrix), p50 per query; synthetic rows "
        "(`bench_core.build_synthetic`), six-sentence queries, k=5, c=32. Made by `benchmarks/bench_device.py`.\n",
        markdown_table(rows, list(rows[0])),
    ])
    write_results(args.name, result, text)


if __name__ == "__main__":
    main()
