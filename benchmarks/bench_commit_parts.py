"""What committing a long `mrag index` run in parts costs (`--commit-every`, `mrag.sync.commit_parts`).

A first run and an unchanged second run of `Index.add_paths` over N ~800-character records in one JSONL
file, with the fast random embedder of MiniLM's shape (384 + 12 x 32), so that the commits' own cost shows
(a real model embeds 13-18 chunks a second on 2 CPU cores, `ingest.md`: a part of 10,000 chunks is about
10 minutes of embedding there). Rounds alternate the settings; p50 over rounds.

    python benchmarks/bench_commit_parts.py --chunks 50000 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import machine, markdown_table, median, sample_texts, write_results
from bench_core import RandomQueryEmbedder

from mrag.index import Index


def one_run(folder: Path, db: Path, every: int) -> dict[str, Any]:
    index = Index.open(db, embedder=RandomQueryEmbedder())
    start = time.perf_counter()
    report = index.add_paths([folder], commit_every=every)
    first = time.perf_counter() - start
    start = time.perf_counter()
    again = index.add_paths([folder], commit_every=every)
    second = time.perf_counter() - start
    assert again.chunks == 0 and len(again.unchanged) == len(report.added)
    return {"first_s": first, "unchanged_s": second, "commits": index.store.manifest.maintenance["writes"],
            "chunks": report.chunks, "mb": sum(f.stat().st_size for f in db.rglob("*") if f.is_file()) / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--every", default="0,2000,10000")
    args = parser.parse_args()
    settings = [int(x) for x in args.every.split(",")]
    runs: dict[int, list[dict[str, Any]]] = {every: [] for every in settings}
    load = [os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "docs"
        folder.mkdir()
        texts = sample_texts(args.chunks, seed=3)
        (folder / "records.jsonl").write_text("\n".join(json.dumps({"id": f"r{i}", "text": t})
                                                        for i, t in enumerate(texts)))
        for r in range(args.rounds):
            for every in settings if r % 2 == 0 else settings[::-1]:
                db = Path(tmp) / f"db-{every}-{r}"
                runs[every].append(one_run(folder, db, every))
                print(every, runs[every][-1], flush=True)
    load.append(os.getloadavg())
    base = median([x["first_s"] for x in runs[settings[0]]])
    rows = []
    for every in settings:
        first = median([x["first_s"] for x in runs[every]])
        rows.append({"commit_every": every, "chunks": runs[every][0]["chunks"], "commits": runs[every][0]["commits"],
                     "first_run_s": round(first, 2), "chunks_per_s": round(runs[every][0]["chunks"] / first),
                     "vs_one_commit": round(first / base, 3),
                     "unchanged_run_s": round(median([x["unchanged_s"] for x in runs[every]]), 2),
                     "index_mb": round(runs[every][-1]["mb"], 1), "rounds": len(runs[every])})
    columns = list(rows[0])
    text = (f"# A long indexing run committed in parts (`--commit-every`)\n\nmachine: {machine()}\n\n"
            f"{__doc__.strip().splitlines()[2]} {' '.join(__doc__.strip().splitlines()[3:6])}\n\n"
            f"Load average (1/5/15 min) at start and end: {[tuple(round(x, 2) for x in v) for v in load]}.\n\n"
            + markdown_table(rows, columns))
    print(text)
    write_results("commit-parts", {"machine": machine(), "load": load, "rows": rows,
                                   "runs": {str(k): v for k, v in runs.items()}}, text)


if __name__ == "__main__":
    main()
