"""HTTP search throughput and latency of `mrag serve` under concurrent clients.

Builds a real all-MiniLM-L6-v2 index of a few hundred documents (the bundled sample corpus, each
document also in sentence-rotated variants), starts `mrag serve` in its own process on loopback,
and lets C client threads (default 10, one keep-alive connection each) send GET /search requests
back to back. For each strategy: requests/s over the whole run, p50/p99 latency seen by the clients,
errors. The clients share the machine with the server, so on a 2-core machine they take CPU from it.

Run: python benchmarks/bench_server.py [--docs 300] [--clients 10] [--requests 30] [--strategies standard,mrag]
Writes benchmarks/results/server.json and server.md.
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
from _common import SAMPLE_CORPUS, free_port, machine, markdown_table, percentiles_ms, write_results

from mrag.chunk import split_sentences
from mrag.index import Index

QUESTIONS = Path(__file__).resolve().parents[1] / "src" / "mrag" / "data" / "demo_questions.json"


def corpus(n_docs: int) -> list[dict[str, Any]]:
    """n_docs documents: the sample corpus, then the same documents with their sentences rotated."""
    base = [json.loads(line) for line in SAMPLE_CORPUS.read_text().splitlines() if line.strip()]
    docs = []
    for i in range(n_docs):
        doc, variant = base[i % len(base)], i // len(base)
        sentences = split_sentences(doc["text"])
        shift = variant % max(len(sentences), 1)
        text = " ".join(sentences[shift:] + sentences[:shift])
        docs.append({"id": f"{doc['id']}-v{variant}", "title": doc["title"], "text": text})
    return docs


def queries() -> list[str]:
    questions = [q["question"] for q in json.loads(QUESTIONS.read_text())]
    titles = [json.loads(line)["title"] for line in SAMPLE_CORPUS.read_text().splitlines() if line.strip()]
    return questions + [f"What is known about {t.lower()}?" for t in titles]



def start_server(db: Path, port: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-c", "from mrag.cli import main; main()", "serve", "--db", str(db),
               "--host", "127.0.0.1", "--port", str(port)]
    env = os.environ | {"MRAG_TOKEN": "bench-token", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    server = subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited: {log.read_text()[-500:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    server.terminate()
    raise RuntimeError("the server did not answer in 180 s")


def load(base: str, strategy: str, clients: int, per_client: int, texts: list[str], k: int) -> dict[str, Any]:
    """clients threads, each sending per_client searches back to back; latencies and throughput."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start_line = threading.Barrier(clients + 1)

    def client(n: int) -> None:
        mine, failed = [], []
        with httpx.Client(base_url=base, timeout=120) as c:
            c.get("/health")  # open the connection before the clock starts
            start_line.wait()
            for i in range(per_client):
                query = texts[(n * per_client + i) % len(texts)]
                t0 = time.perf_counter()
                try:
                    r = c.get("/search", params={"query": query, "k": k, "strategy": strategy})
                    if r.status_code != 200 or len(r.json()["hits"]) != k:
                        failed.append(f"{r.status_code}: {r.text[:100]}")
                except httpx.HTTPError as e:
                    failed.append(repr(e))
                mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)
            errors.extend(failed)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    start_line.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    stats = percentiles_ms(latencies)
    return {
        "strategy": strategy,
        "clients": clients,
        "requests": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "wall_s": round(wall, 3),
        "requests_per_s": round(len(latencies) / wall, 2),
        "p50_ms": stats["p50_ms"],
        "p99_ms": stats["p99_ms"],
        "mean_ms": stats["mean_ms"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--requests", type=int, default=30, help="Requests per client and strategy.")
    parser.add_argument("--strategies", default="standard,mrag,mrag-paper")
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--name", default="server", help="results file name (benchmarks/results/NAME.json)")
    args = parser.parse_args()
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]

    with tempfile.TemporaryDirectory(prefix="mrag-bench-server-") as tmp:
        db = Path(tmp) / "db"
        docs = corpus(args.docs)
        t0 = time.perf_counter()
        report = Index.open(db).add(docs)
        index_s = time.perf_counter() - t0
        print(f"indexed {len(docs)} documents ({report.chunks} chunks) in {index_s:.1f} s", flush=True)
        port = free_port()
        server = start_server(db, port, Path(tmp) / "server.log")
        base = f"http://127.0.0.1:{port}"
        texts = queries()
        try:
            rows = []
            for strategy in strategies:
                load(base, strategy, 2, 3, texts, args.k)  # warm-up
                rows.append(load(base, strategy, args.clients, args.requests, texts, args.k))
                print(f"{strategy}: {rows[-1]['requests_per_s']} req/s", flush=True)
        finally:
            server.terminate()
            server.wait(30)

    columns = ["strategy", "clients", "requests", "errors", "requests_per_s", "p50_ms", "p99_ms", "mean_ms"]
    table = markdown_table(rows, columns)
    load_avg = os.getloadavg()
    header = (
        f"# mrag serve: GET /search, {len(docs)} documents ({report.chunks} chunks), all-MiniLM-L6-v2, "
        f"k={args.k}, {args.clients} concurrent clients\n\n"
        f"Server and clients on the same machine ({os.cpu_count()} CPUs; load average at the end "
        f"{load_avg[0]:.1f}).\n"
    )
    print("\n" + header + "\n" + table)
    data = {
        "docs": len(docs),
        "chunks": report.chunks,
        "index_seconds": round(index_s, 2),
        "k": args.k,
        "clients": args.clients,
        "requests_per_client": args.requests,
        "results": rows,
        "machine": machine() | {"load_average_end": [round(x, 2) for x in load_avg]},
    }
    write_results(args.name, data, header + "\n" + table)


if __name__ == "__main__":
    main()
