"""Several processes on one index: a soak with crashes, how soon a server sees another process's
commit, and what thousands of single-document writes cost after automatic maintenance.

1. soak: W writer processes (adds, upserts, deletes) and S searcher processes for T seconds, while
   K writers are killed with -9 at random moments and restarted; then every acknowledged write must be
   present once, no deleted document back, documents whole, and the head-scale sums equal to a
   recomputation from the rows. The processes use the tests' hashing embedder (`tests/procs.py`):
   this measures the write protocol, so commits come as fast as LanceDB takes them.
2. visibility: `mrag serve` (all-MiniLM-L6-v2) on an index while `mrag index` in another process
   adds files; after each `mrag index` returns, the time until the server's /info counts the rows.
3. small writes: N single-document writes (MiniLM, sample-corpus texts) against the same rows written in
   one batch: search p50 and the folder size right after the burst (and its largest along the burst,
   from the 1,000th write, per row) against the size after a full compaction.

Run: python benchmarks/bench_writers.py [--seconds 600] [--writers 4] [--searchers 8] [--kills 50] [--small 5000]
     [--parts soak,visibility,small]
Writes benchmarks/results/writers.json and writers.md; the parts not run keep their last numbers there.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _common import free_port, machine, markdown_table, median, sample_texts, time_calls, write_results

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))
PROCS = str(TESTS / "procs.py")
RESULTS = Path(__file__).resolve().parent / "results"
TITLES = {"soak": "Soak: writers, searchers and kill -9", "visibility": "A server seeing another process's commit",
          "small_writes": "Single-document writes against one batch"}


def soak(work: Path, seconds: float, writers: int, searchers: int, kills: int) -> dict[str, Any]:
    from procs import check_index

    db = work / "soak"
    rng = random.Random(0)
    logs: list[Path] = []

    def writer(slot: int, life: int) -> subprocess.Popen:
        logs.append(work / f"w{slot}-{life}.log")
        return subprocess.Popen([sys.executable, PROCS, "writer", str(db), str(logs[-1]), f"w{slot}-{life}",
                                 "1000000", str(slot * 1000 + life)], stderr=subprocess.DEVNULL)

    subprocess.run([sys.executable, PROCS, "writer", str(db), str(work / "w-init.log"), "init", "3", "0"], check=True)
    logs.append(work / "w-init.log")
    live = {slot: writer(slot, 0) for slot in range(writers)}
    lives = dict.fromkeys(live, 0)
    readers = [subprocess.Popen([sys.executable, PROCS, "searcher", str(db), str(work / f"s{i}.log"),
                                 str(seconds), str(i)]) for i in range(searchers)]
    start = time.monotonic()
    moments = sorted(rng.uniform(5, seconds - 5) for _ in range(kills))
    for moment in moments:
        time.sleep(max(0.0, moment - (time.monotonic() - start)))
        slot = rng.randrange(writers)
        live[slot].send_signal(signal.SIGKILL)
        live[slot].wait()
        lives[slot] += 1
        live[slot] = writer(slot, lives[slot])
    time.sleep(max(0.0, seconds - (time.monotonic() - start)))
    for proc in live.values():  # the end of the soak is one more kill each
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    for proc in readers:
        proc.wait(timeout=600)
    counts = check_index(str(db), logs)  # raises on a lost, duplicated or resurrected write
    done = [json.loads(line) for i in range(searchers) for line in (work / f"s{i}.log").read_text().splitlines()]
    acked = sum(1 for log in logs if log.exists() for line in log.read_text().splitlines() if '"ok"' in line)
    return {
        "seconds": seconds, "writers": writers, "searchers": searchers, "kills": kills + writers,
        "acknowledged_writes": acked, "documents": counts["documents"], "chunks": counts["chunks"],
        "in_flight_at_a_kill": counts["in_flight"], "lost": counts["lost"], "resurrected": counts["resurrected"],
        "duplicates": counts["duplicate_ids"],
        "sums_drift": counts["sums_drift"],
        "searches": sum(d.get("searches", 0) for d in done), "search_errors": sum(d.get("errors", 0) for d in done),
    }



def visibility(work: Path, rounds: int) -> dict[str, Any]:
    mrag = str(Path(sys.executable).with_name("mrag"))
    db, texts = work / "visible", sample_texts((rounds + 1) * 20, seed=3)
    folder = work / "files0"
    folder.mkdir()
    (folder / "0.txt").write_text(texts[0])
    subprocess.run([mrag, "index", str(folder), "--db", str(db)], check=True, capture_output=True)
    port = free_port()
    server = subprocess.Popen([mrag, "serve", "--db", str(db), "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    lags = []
    try:
        for _ in range(120):
            try:
                httpx.get(url + "/health").raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(1)
        for r in range(1, rounds + 1):
            folder = work / f"files{r}"
            folder.mkdir()
            for i, text in enumerate(texts[r * 20 : r * 20 + 20]):
                (folder / f"{i}.txt").write_text(text)
            subprocess.run([mrag, "index", str(folder), "--db", str(db)], check=True, capture_output=True)
            done = time.perf_counter()
            want = 1 + 20 * r
            while httpx.get(url + "/info").json()["chunks"] < want:
                time.sleep(0.01)
            lags.append(time.perf_counter() - done)
    finally:
        server.terminate()
        server.wait()
    return {"rounds": rounds, "max_s": max(lags), "median_s": median(lags)}


def small_writes(work: Path, n: int) -> dict[str, Any]:
    from mrag.embed.transformer import TransformerEmbedder
    from mrag.index import Index

    embedder = TransformerEmbedder(device="cpu")
    texts = sample_texts(n, target_chars=600, seed=5)
    docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)]
    one = Index.open(work / "batch", embedder=embedder)
    one.add(docs)
    many = Index.open(work / "single", embedder=embedder)
    write_s = 0.0
    sizes = []  # (rows, folder bytes per row) along the burst, from the 1,000th write
    for i, doc in enumerate(docs, 1):
        started = time.perf_counter()
        many.add([doc])
        write_s += time.perf_counter() - started
        if i >= min(1000, n) and i % 50 == 0:  # not timed: the folder's size
            sizes.append((i, (many.store.disk_bytes() or 0) / i))
    queries = sample_texts(30, target_chars=200, seed=9)

    def p50(index: Any) -> float:
        calls = iter(queries * 3)
        return median(time_calls(lambda: index.search(next(calls), k=5), repeats=60, warmup=5)) * 1000

    fragments = many.store.chunks.stats()["fragment_stats"]["num_fragments"]
    row = {"writes": n, "writes_per_s": n / write_s, "fragments_after": fragments,
           "search_p50_ms_single": p50(many), "search_p50_ms_batch": p50(one),
           "bytes_single": many.store.disk_bytes(), "bytes_batch": one.store.disk_bytes()}
    row["bytes_full_compaction"] = many.optimize(keep_versions=0)["bytes_after"]
    row["search_ratio"] = row["search_p50_ms_single"] / row["search_p50_ms_batch"]
    row["size_ratio"] = row["bytes_single"] / row["bytes_full_compaction"]
    row["size_ratio_max"] = max(size for _, size in sizes) * n / row["bytes_full_compaction"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--searchers", type=int, default=8)
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--small", type=int, default=5000)
    parser.add_argument("--parts", default="soak,visibility,small")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mrag-writers-"))
    parts = args.parts.split(",")
    runs = {
        "soak": lambda: soak(work, args.seconds, args.writers, args.searchers, args.kills),
        "visibility": lambda: visibility(work, args.rounds),
        "small_writes": lambda: small_writes(work, args.small),
    }
    saved = RESULTS / "writers.json"
    # the parts not run this time keep their last measured numbers
    result: dict[str, Any] = json.loads(saved.read_text()) if saved.exists() else {}
    result["machine"] = machine()
    try:
        for key, run in runs.items():
            if key.split("_")[0] in parts:
                result[key] = run()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    md = [f"## {TITLES[key]}\n\n{markdown_table([result[key]], list(result[key]))}" for key in runs if key in result]
    print("\n\n".join(md))
    write_results("writers", result, "# Several writers on one index\n\n" + "\n\n".join(md) + "\n")

if __name__ == "__main__":
    main()
