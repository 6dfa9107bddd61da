"""A/B of the vote: another version of `mrag/vote.py` and `mrag/retrieve/strategies.py` against the installed
ones, on the synthetic index of `bench_core.py` (D = 384, H = 12 x d = 32, six-sentence queries, k = 5,
c = 32, the exact scan in bf16 where the CPU has bf16 kernels), both in one process, interleaved rounds.

Run: git show REV:src/mrag/vote.py > /tmp/vote_old.py
     git show REV:src/mrag/retrieve/strategies.py > /tmp/strategies_old.py
     python benchmarks/ab_vote.py /tmp/vote_old.py /tmp/strategies_old.py [--sizes 10000,100000] [--rounds 9]
Both versions must return the same rows and scores for every query (checked). Prints a table and writes
benchmarks/results/ab-vote.json and .md: p50 ms per query of the scoring (`retrieve.vote_many`).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from _common import machine, markdown_table, write_results
from bench_core import build_synthetic, long_queries
from bench_lowprec import prepared

from mrag.retrieve import exact
from mrag.retrieve import strategies as retrieve


def load(name: str, path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vote", help="path of the other vote.py")
    parser.add_argument("strategies", help="path of the other strategies.py")
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--strategies", dest="names", default="mrag,segment+standard,mrag-paper")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--name", default="ab-vote")
    args = parser.parse_args()
    old_vote = load("old_vote", args.vote)
    old = load("old_strategies", args.strategies)
    old.fuse_many, old.fuse = old_vote.fuse_many, old_vote.fuse  # the other version's vote, not the installed one
    versions = {"other": old.vote_many, "installed": retrieve.vote_many}
    rows: list[dict[str, Any]] = []
    for n in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            index, _ = build_synthetic(Path(tmp) / "db", n)
            matrix, scales = index.store.matrix(), index.space_weights()
            ranker = exact.Exact(matrix.standard, matrix.heads)
            for batch in (1, 32):
                for strategy in args.names.split(","):
                    queries = prepared(index, strategy, long_queries(batch))
                    found = {v: f(strategy, queries, 5, 32, scales, ranker, 12) for v, f in versions.items()}
                    assert all(np.array_equal(a.rows, b.rows) and np.array_equal(a.scores, b.scores)
                               for a, b in zip(*found.values())), (n, batch, strategy)
                    times: dict[str, list[float]] = {v: [] for v in versions}
                    for _ in range(args.rounds):
                        for v, f in versions.items():
                            start = time.perf_counter()
                            f(strategy, queries, 5, 32, scales, ranker, 12)
                            times[v].append(time.perf_counter() - start)
                    p50 = {v: 1000 * float(np.median(t)) / batch for v, t in times.items()}
                    rows.append({"chunks": n, "batch": batch, "strategy": strategy, "precision": ranker.precision,
                                 "other_ms": round(p50["other"], 3), "installed_ms": round(p50["installed"], 3),
                                 "installed / other": round(p50["installed"] / p50["other"], 3)})
                    print(rows[-1], flush=True)
    result = {"machine": machine(), "rounds": args.rounds, "rows": rows}
    text = "\n".join([
        "# A/B of the vote (`benchmarks/ab_vote.py`)\n", f"machine: {result['machine']}\n",
        "p50 ms per query of `retrieve.vote_many` (the scan and the vote), both versions in one process, "
        f"interleaved, {args.rounds} rounds; the same rows and scores checked.\n",
        markdown_table(rows, list(rows[0])),
    ])
    write_results(args.name, result, text)


if __name__ == "__main__":
    main()
