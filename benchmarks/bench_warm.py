"""The server's warm-up search: what the first request costs with and without it.

Below `ANN_THRESHOLD` rows a server searches exactly, from the matrix it keeps in memory; whoever searches
first reads it (and makes its bf16 copy). `mrag serve` now searches once at start-up (`server.warm`), so
that no request does. On a synthetic `bench_scale` index of `--rows` rows with a full-text index (no ANN
indexes), the app is started under uvicorn in this process, with the warm-up and without, a fresh process
process each time (`--rounds` of each, alternated); timed: the start-up (the index opened, the warm-up) and
the first and second requests of the default strategy (start-up: from the app's creation until
it listens, so the interpreter, the imports and a model load are not in it), six-sentence queries (the query embedder is
`bench_scale`'s synthetic one, so the model costs nothing here).

Run: python benchmarks/bench_warm.py [--rows 1000000] [--rounds 2]
Writes benchmarks/results/warm.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn
from _common import free_port, machine, markdown_table, write_results
from bench_scale import ClusteredEmbedder, build, queries

from mrag.server import Settings, create_app


def one_start(db: Path, warm: bool, texts: list[str]) -> dict[str, Any]:
    """Start the app, time its start-up and its first two requests, stop it."""
    config = uvicorn.Config(create_app(Settings(db=str(db), embedder=ClusteredEmbedder(), warm=warm)),
                            host="127.0.0.1", port=free_port(), log_level="warning")
    server = uvicorn.Server(config)
    start = time.perf_counter()
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    row: dict[str, Any] = {"warm-up": warm, "start_s": round(time.perf_counter() - start, 2)}
    with httpx.Client(base_url=f"http://127.0.0.1:{config.port}", timeout=300) as client:
        for name, text in zip(("first_request_ms", "second_request_ms"), texts):
            began = time.perf_counter()
            r = client.post("/search", json={"query": text, "k": 10})
            r.raise_for_status()
            row[name] = round(1000 * (time.perf_counter() - began), 1)
    server.should_exit = True
    thread.join(60)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--name", default="warm")
    parser.add_argument("--one", nargs=3, metavar=("DB", "WARM", "FIRST_QUERY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # one run, in a fresh process: its row as JSON
        db, warm, first = args.one
        print(json.dumps(one_start(Path(db), warm == "1", queries(int(first) + 2)[int(first):])))
        return
    started, load = time.perf_counter(), [os.getloadavg()]
    rows = []
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        index, build_s = build(Path(tmp) / "db", args.rows, ClusteredEmbedder())
        index.maintain_fulltext(force=True)
        assert not index.store.manifest.ann, "an index with ANN indexes loads no matrix"
        del index
        for r in range(args.rounds):
            for warm in (False, True) if r % 2 == 0 else (True, False):
                out = subprocess.run([sys.executable, __file__, "--one", str(Path(tmp) / "db"), str(int(warm)),
                                      str(2 * len(rows))], check=True, capture_output=True, text=True).stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
                print(rows[-1], flush=True)
    load.append(os.getloadavg())
    summary = [{"warm-up": warm, **{k: round(float(np.median([r[k] for r in rows if r["warm-up"] == warm])), 2)
                                    for k in ("start_s", "first_request_ms", "second_request_ms")}}
               for warm in (False, True)]
    result = {"machine": machine(), "rows": args.rows, "build_s": round(build_s, 1), "rounds": args.rounds,
              "load_average": [[round(x, 2) for x in one] for one in load], "runs": rows, "summary": summary,
              "wall_s": round(time.perf_counter() - started)}
    columns = ["warm-up", "start_s", "first_request_ms", "second_request_ms"]
    md = [f"# The server's warm-up search ({args.name})\n",
          f"command: `python benchmarks/bench_warm.py --rows {args.rows} --rounds {args.rounds}`\n",
          f"machine: {result['machine']}; load average (1, 5, 15 min) at the start and end: "
          f"{result['load_average']}; {result['wall_s']} s\n",
          f"{args.rows} synthetic rows (built in {result['build_s']} s), a full-text index, no ANN indexes; "
          "the app under uvicorn in a fresh process for each run, with and without its warm-up "
          "search, alternated; the default strategy, six-sentence queries, k = 10.\n",
          "## Medians\n", markdown_table(summary, columns), "", "## Every run\n", markdown_table(rows, columns)]
    write_results(args.name, result, "\n".join(md))


if __name__ == "__main__":
    main()
