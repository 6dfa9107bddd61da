"""Ingestion speed and memory: mrag (standard + heads, one forward) against sentence-transformers.

1. chunks/s of `TransformerEmbedder.embed` (mrag, with heads) and `SentenceTransformer.encode` on the
   same packaged all-MiniLM-L6-v2 folder, the same ~800-character texts, batch 32, fp32 and bf16;
   runs interleaved (the machine is shared), medians kept. Target: mrag >= 0.95x sentence-transformers.
   A profile of one mrag pass splits the time into tokenisation, forward and pooling.
2. Peak RSS while indexing a large corpus with `Index.add` (embedding + LanceDB writes in batches of
   `WRITE_BATCH` chunks), each size in a fresh subprocess: the real MiniLM (bf16) on a few thousand
   chunks, and an embedder returning random vectors of MiniLM's sizes on up to 100k chunks (so the
   pipeline's own memory shows, not the model's).

Run: python benchmarks/bench_ingest.py [--quick]. Writes benchmarks/results/ingest.json and .md.
On a GPU: python benchmarks/bench_ingest.py --device cuda --batch 32 256 (throughput only, written to
ingest-cuda.json and .md); it runs without LanceDB installed, which the embed stage does not need.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import embed_stage_without_lancedb, machine, markdown_table, median, rss_mb, sample_texts, write_results

embed_stage_without_lancedb()

from mrag.embed.models import resolve_model  # noqa: E402  (after the LanceDB-free import set-up)

BATCH = 32


def bench_throughput(
    n_texts: int, repeats: int, device: str = "cpu", model: str | None = None, batches: tuple[int, ...] = (BATCH,)
) -> list[dict[str, Any]]:
    import torch
    from sentence_transformers import SentenceTransformer

    from mrag.embed.transformer import TransformerEmbedder

    texts = sample_texts(n_texts, seed=1)
    path = resolve_model(model).path
    rows = []
    for dtype in ("float32", "bfloat16"):
        mrag = TransformerEmbedder(model, device=device, dtype=dtype)
        st = SentenceTransformer(path, device=device, model_kwargs={"dtype": getattr(torch, dtype)})
        for batch in batches:
            mrag.embed(texts[:batch], batch_size=batch)  # warm-up
            st.encode(texts[:batch], batch_size=batch)
            mrag_s, st_s = [], []
            for _ in range(repeats):  # interleaved, so load changes hit both alike
                start = time.perf_counter()
                ours = mrag.embed(texts, kind="document", batch_size=batch).standard
                mrag_s.append(time.perf_counter() - start)
                start = time.perf_counter()
                theirs = st.encode(texts, batch_size=batch, convert_to_numpy=True)
                st_s.append(time.perf_counter() - start)
            rows.append(_throughput_row(dtype, batch, n_texts, mrag_s, st_s, ours, theirs))
            print(markdown_table(rows[-1:], list(rows[-1])[:9]), flush=True)
        rows[-1]["profile_mrag"] = profile_mrag(mrag, texts)
        print(rows[-1]["profile_mrag"], flush=True)
    return rows


def _throughput_row(
    dtype: str, batch: int, n_texts: int, mrag_s: list[float], st_s: list[float], ours: Any, theirs: Any
) -> dict[str, Any]:
    mrag_rate, st_rate = n_texts / median(mrag_s), n_texts / median(st_s)
    return {
        "dtype": dtype,
        "batch": batch,
        "chunks": n_texts,
        "mrag_heads_chunks_per_s": round(mrag_rate, 1),
        "sentence_transformers_chunks_per_s": round(st_rate, 1),
        "mrag_over_st": round(mrag_rate / st_rate, 3),
        "target_0.95_met": mrag_rate / st_rate >= 0.95,
        "min_cosine_vs_st": round(float((ours * theirs).sum(1).min()), 5),
        "runs": len(mrag_s),
        "mrag_runs_s": [round(t, 3) for t in mrag_s],
        "st_runs_s": [round(t, 3) for t in st_s],
    }


def profile_mrag(embedder: Any, texts: list[str]) -> dict[str, float]:
    """Seconds spent in tokenisation, the model forward (with the hook) and pooling, for one pass."""
    import torch

    from mrag.embed.transformer import pool

    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    spent = {"tokenise_s": 0.0, "forward_s": 0.0, "pool_and_copy_s": 0.0}
    sync = torch.cuda.synchronize if embedder.device.startswith("cuda") else (lambda: None)
    for start in range(0, len(order), BATCH):
        batch_texts = [texts[i] for i in order[start : start + BATCH]]
        t0 = time.perf_counter()
        batch = embedder.tokenizer(
            batch_texts, padding=True, truncation=True, max_length=embedder.max_length, return_tensors="pt"
        ).to(embedder.device)
        t1 = time.perf_counter()
        embedder._captured.clear()
        with torch.inference_mode():
            hidden = embedder.model(**batch).last_hidden_state
        sync()
        t2 = time.perf_counter()
        heads = pool(embedder._captured[-1].float(), batch["attention_mask"], embedder.pooling)
        standard = torch.nn.functional.normalize(pool(hidden.float(), batch["attention_mask"], "mean"), dim=-1)
        heads.cpu().numpy(), standard.cpu().numpy()
        t3 = time.perf_counter()
        spent["tokenise_s"] += t1 - t0
        spent["forward_s"] += t2 - t1
        spent["pool_and_copy_s"] += t3 - t2
    return {k: round(v, 3) for k, v in spent.items()}


# --- peak RSS while indexing (one subprocess per run) ----------------------------------------


def indexing_child(kind: str, n: int) -> dict[str, Any]:
    """Index n synthetic ~800-char chunks with `Index.add` in one call; report time and memory."""
    import threading

    from mrag.index import Index

    base = rss_mb()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:  # RSS every 50 ms (ru_maxrss would include the parent's RSS at fork)
        while not stop.wait(0.05):
            peak[0] = max(peak[0], rss_mb())

    if kind == "minilm-bf16":
        from mrag.embed.transformer import TransformerEmbedder
        from mrag.settings import cpu_has_bf16_kernels

        # bf16 where the CPU has the kernels (6x slower than float32 without them)
        embedder: Any = TransformerEmbedder(device="cpu", dtype="bfloat16" if cpu_has_bf16_kernels() else "float32")
    else:
        from bench_core import RandomQueryEmbedder

        embedder = RandomQueryEmbedder()
    loaded = rss_mb()
    texts = sample_texts(n, seed=2)
    docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)]
    with_texts = rss_mb()
    threading.Thread(target=sample, daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp:
        index = Index.open(Path(tmp) / "db", embedder=embedder)
        start = time.perf_counter()
        report = index.add(docs)
        seconds = time.perf_counter() - start
        stop.set()
        size_mb = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file()) / 2**20
    return {
        "embedder": kind,
        "chunks": report.chunks,
        "seconds": round(seconds, 1),
        "chunks_per_s": round(report.chunks / seconds, 1),
        "rss_before_mb": round(base),
        "rss_model_loaded_mb": round(loaded),
        "rss_texts_in_memory_mb": round(with_texts),
        "peak_rss_sampled_mb": round(peak[0]),
        "index_on_disk_mb": round(size_mb, 1),
    }


def bench_memory(runs: list[tuple[str, int]]) -> list[dict[str, Any]]:
    rows = []
    for kind, n in runs:
        print(f"indexing {n} chunks with {kind} in a subprocess ...", flush=True)
        done = subprocess.run(
            [sys.executable, __file__, "--child", kind, str(n)],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            env=os.environ | {"TOKENIZERS_PARALLELISM": "false"},
        )
        if done.returncode:
            raise RuntimeError(done.stderr[-2000:])
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(markdown_table(rows[-1:], list(rows[-1])), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    parser.add_argument("--texts", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ...; not cpu: throughput only")
    parser.add_argument("--model", default=None, help="a model folder (default: the packaged MiniLM)")
    parser.add_argument("--batch", type=int, nargs="+", default=[BATCH], help="batch sizes to time")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(indexing_child(args.child[0], int(args.child[1]))))
        return
    if args.quick:
        args.texts, args.repeats = 64, 1
        memory_runs = [("random", 2000), ("minilm-bf16", 100)]
    else:
        memory_runs = [("random", 10_000), ("random", 100_000), ("minilm-bf16", 300), ("minilm-bf16", 1000)]
    name = "ingest-quick" if args.quick else "ingest"
    if args.device != "cpu":  # the memory runs index into LanceDB on the CPU
        name, args.skip_memory = f"ingest-{args.device.split(':')[0]}", True
    previous = Path(__file__).parent / "results" / f"{name}.json"
    result: dict[str, Any] = json.loads(previous.read_text()) if previous.is_file() else {}
    result["machine"] = machine()
    if not args.skip_throughput:
        load = os.getloadavg()
        result["throughput"] = bench_throughput(args.texts, args.repeats, args.device, args.model, tuple(args.batch))
        result["throughput_load_average"] = [load, os.getloadavg()]
    if not args.skip_memory:
        result["memory"] = bench_memory(memory_runs)
    md = [f"# mrag ingestion benchmark\n\nmachine: {result['machine']}\n"]
    if "throughput" in result:
        keys = [k for k in result["throughput"][0] if not k.endswith("_runs_s") and k != "profile_mrag"]
        profiles = [{"dtype": r["dtype"], **r["profile_mrag"]} for r in result["throughput"] if "profile_mrag" in r]
        where = result["machine"].get("gpu") or "CPU"
        md += [
            f"## mrag (with heads) vs sentence-transformers, all-MiniLM-L6-v2, {where}\n",
            markdown_table(result["throughput"], keys),
            "",
            "one mrag pass, split by stage:\n",
            markdown_table(profiles, list(profiles[0])),
            "",
            f"load average (1/5/15 min) at start and end: {result['throughput_load_average']}\n",
        ]
    if "memory" in result:
        md += [
            "## Memory while indexing (`Index.add`, one call, fresh process per row)\n",
            markdown_table(result["memory"], list(result["memory"][0])),
        ]
    write_results(name, result, "\n".join(md))


if __name__ == "__main__":
    main()
