"""Core speed of mrag: what the heads cost at indexing time, and search latency at 10k to 1M chunks.

1. Indexing throughput (chunks/s) with the packaged all-MiniLM-L6-v2 on the same ~800-character texts:
   `standard only` is a plain transformers forward with mean pooling and no hook (what any
   sentence-embedding pipeline does); `standard+heads` is `TransformerEmbedder.embed` (pre-hook on the
   last layer's attention output projection + head pooling). fp32 and bf16. Then end-to-end
   `Index.add` (embedding + LanceDB write) for the heads path.
2. Exact search latency on synthetic unit vectors written straight into a Store (no text
   embedding), six-sentence queries, batches of 1 and 32: the whole `Index.search_many` with an
   embedder that returns random query vectors, and the scoring alone (`retrieve.vote_many` with the
   in-memory `exact.Exact` ranker); p50/p99, ratios to `standard`, RSS, GB/s.

Run: python benchmarks/bench_core.py [--quick] [--sizes 10000,100000,1000000] [--skip-indexing|--skip-search]
Writes benchmarks/results/core.json and core.md (quick runs: core-quick.*).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    RESULTS,
    machine,
    markdown_table,
    median,
    peak_rss_mb,
    percentiles_ms,
    rss_mb,
    sample_texts,
    time_calls,
    write_results,
)

from mrag.embed.base import Embeddings, HeadEmbedder
from mrag.embed.models import DEFAULT_MODEL, resolve_model
from mrag.index import Index
from mrag.retrieve import exact
from mrag.retrieve import strategies as retrieve
from mrag.rows import build_rows, chunk_schema

BATCH = 32
WANTED_STRATEGIES = ("standard", "segment+standard", "mrag-paper", "mrag-std", "mrag")
LONG_QUERY = (
    "A sailor crosses the ocean at night. She steers by the stars and a compass. "
    "At dawn her boat reaches a harbour with old stone walls. Merchants there trade spices and silk. "
    "A storm comes in from the west. The harbour master closes the gates."
)


# --- 1. indexing throughput ------------------------------------------------------------------


class PlainStandardEmbedder:
    """all-MiniLM-L6-v2 as a sentence-transformers model would run it: forward, mean pool, normalise.
    No hook, no heads. Same length sorting and batch size as `HeadEmbedder.embed`, for a fair comparison."""

    def __init__(self, dtype: str, max_length: int) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = resolve_model(DEFAULT_MODEL).path
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
        self.max_length = max_length

    def embed(self, texts: list[str], batch_size: int = BATCH) -> np.ndarray:
        import torch

        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.empty((len(texts), self.model.config.hidden_size), np.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = self.tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            )
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state.float()  # (B, T, D)
            mask = batch["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, D)
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return out


def bench_indexing(n_texts: int, repeats: int) -> dict[str, Any]:
    from mrag.embed.transformer import TransformerEmbedder

    texts = sample_texts(n_texts)
    embed_rows, add_rows = [], []
    for dtype in ("float32", "bfloat16"):
        heads = TransformerEmbedder(device="cpu", dtype=dtype)
        plain = PlainStandardEmbedder(dtype, heads.max_length)
        plain.embed(texts[:BATCH])  # warm up both
        heads.embed(texts[:BATCH])
        plain_s, heads_s = [], []
        for _ in range(repeats):  # interleaved, so load from other jobs hits both alike
            start = time.perf_counter()
            standard = plain.embed(texts)
            plain_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            emb = heads.embed(texts, kind="document", batch_size=BATCH)
            heads_s.append(time.perf_counter() - start)
        diff = float(np.abs(emb.standard - standard).max())
        plain_rate, heads_rate = n_texts / median(plain_s), n_texts / median(heads_s)
        embed_rows.append(
            {
                "dtype": dtype,
                "chunks": n_texts,
                "standard_only_chunks_per_s": round(plain_rate, 1),
                "standard_heads_chunks_per_s": round(heads_rate, 1),
                "heads_over_standard": round(heads_rate / plain_rate, 3),
                "max_abs_diff_standard": diff,
                "runs": repeats,
            }
        )
        add_s = []
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as tmp:
                index = Index.open(Path(tmp) / "db", embedder=heads)
                start = time.perf_counter()
                report = index.add([{"id": f"d{i}", "text": t} for i, t in enumerate(texts)])
                add_s.append(time.perf_counter() - start)
                assert report.chunks == n_texts, report.to_dict()
        add_rows.append(
            {
                "dtype": dtype,
                "chunks": n_texts,
                "index_add_chunks_per_s": round(n_texts / median(add_s), 1),
                "index_add_over_embed": round(median(heads_s) / median(add_s), 3),
                "runs": repeats,
            }
        )
        print(markdown_table(embed_rows[-1:], list(embed_rows[-1])))
        print(markdown_table(add_rows[-1:], list(add_rows[-1])))
        del heads, plain
        gc.collect()
    return {"embed": embed_rows, "index_add": add_rows}


# --- 2. search latency -----------------------------------------------------------------------


class RandomQueryEmbedder(HeadEmbedder):
    """MiniLM's sizes (D=384, H=12, d=32); each text gets fixed random vectors (seeded by its CRC)."""

    name = DEFAULT_MODEL
    dim, n_heads, head_dim = 384, 12, 32

    def embed_batch(self, texts: list[str]) -> Embeddings:
        rngs = [np.random.default_rng(zlib.crc32(t.encode())) for t in texts]
        return Embeddings(
            np.stack([r.standard_normal(self.dim, np.float32) for r in rngs]),
            np.stack([r.standard_normal((self.n_heads, self.head_dim), np.float32) for r in rngs]),
        )


def build_synthetic(path: Path, n: int, batch: int = 50_000, seed: int = 0) -> tuple[Index, float]:
    """An index of n chunks with random vectors (heads of different mean norms), in batches, one commit."""
    index = Index.open(path, embedder=RandomQueryEmbedder())
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    with index.store.writing():
        for first in range(0, n, batch):
            index.store.add(synthetic_rows(index, first, min(batch, n - first), rng))
    return index, time.perf_counter() - start


def synthetic_rows(index: Index, first: int, m: int, rng: np.random.Generator) -> Any:
    """Rows first..first + m of a synthetic index (chunk ids c<i>, four chunks a document), for
    `Store.add` inside `Store.writing`."""
    fake = index.embedder
    head_size = np.linspace(0.5, 2.0, fake.n_heads, dtype=np.float32)[None, :, None]  # (1, H, 1)
    return build_rows(
        ids=[f"c{i}" for i in range(first, first + m)],
        doc_ids=[f"d{i // 4}" for i in range(first, first + m)],
        sources=["synthetic"] * m,
        titles=[""] * m,
        positions=[i % 4 for i in range(first, first + m)],
        texts=[f"synthetic chunk {i}" for i in range(first, first + m)],
        metadata=[{}] * m,
        doc_hashes=["x"] * m,
        standard=rng.standard_normal((m, fake.dim), np.float32),
        heads=rng.standard_normal((m, fake.n_heads, fake.head_dim), np.float32) * head_size,
        schema=chunk_schema(fake.dim, fake.n_heads, fake.head_dim),
    )


def scanned_bytes(strategy: str, n: int) -> int:
    """Bytes of the in-memory matrices a search reads: heads (H, N, d) and/or standard (N, D). The
    fused scan reads them once for all query parts and all queries of a batch."""
    base = retrieve.parse_strategy(strategy).base
    width = {"standard": 384, "split": 384, "split-weighted": 384, "mrag-std": 384 + 12 * 32}.get(base, 12 * 32)
    return n * width * 4


def long_queries(count: int) -> list[str]:
    """`count` distinct six-sentence queries (the CRC-seeded fake gives each its own vectors)."""
    sentences = LONG_QUERY.split(". ")
    return [". ".join(f"{s} ({i})" for s in sentences) for i in range(count)]


def bench_search(n: int, repeats: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        rss_start = rss_mb()
        index, build_s = build_synthetic(Path(tmp) / "db", n)
        gc.collect()
        start = time.perf_counter()
        matrix = index.store.matrix()
        load_s = time.perf_counter() - start
        memory = {
            "chunks": n,
            "build_s": round(build_s, 1),
            "matrix_load_s": round(load_s, 2),
            "matrix_mb": round((matrix.standard.nbytes + matrix.heads.nbytes) / 2**20),
            "rss_mb": round(rss_mb()),
            "rss_growth_mb": round(rss_mb() - rss_start),
        }
        rows = time_search(index, matrix, n, repeats)
        del index, matrix
        gc.collect()
    return rows, memory


def strategies() -> list[str]:
    return [s for s in WANTED_STRATEGIES if s in retrieve.strategy_names()]


def _row(n: int, strategy: str, path: str, batch: int, times: list[float], gigabytes: float) -> dict[str, Any]:
    stats = percentiles_ms(times)
    return {"chunks": n, "strategy": strategy, "path": path, "batch": batch, **stats,
            "GB_per_s": round(gigabytes / (stats["p50_ms"] / 1000), 2) if gigabytes else None}


def time_search(index: Index, matrix: Any, n: int, repeats: int) -> list[dict[str, Any]]:
    """Exact search, batch of 1 and of 32 six-sentence queries: the whole `Index.search_many` (query
    embedding is a random-vector fake) and the scoring alone (`retrieve.vote_many` on the matrix)."""
    scales = index.space_weights()
    ranker = exact.Exact(matrix.standard, matrix.heads)
    fake = index.embedder
    one, many = long_queries(1), long_queries(BATCH)

    def vectors(texts: list[str]) -> list[retrieve.QueryVectors]:
        emb = fake.embed(texts, kind="query")
        return [retrieve.QueryVectors(retrieve.unit(s), retrieve.unit(h)) for s, h in zip(emb.standard, emb.heads)]

    def prepared(strategy: str, texts: list[str]) -> list[tuple[retrieve.QueryVectors, Any]]:
        out = []
        for text in texts:
            parts = retrieve.query_parts(strategy, text)
            qs = vectors(parts or [text])
            out.append((qs[0], qs if parts else None))
        return out

    rows = []
    for strategy in strategies():
        gb = scanned_bytes(strategy, n) / 1e9
        for texts in (one, many):
            b = len(texts)
            calls = repeats if b == 1 else max(3, repeats // 4)
            times = time_calls(lambda s=strategy, t=texts: index.search_many(t, k=5, strategy=s, exact=True), calls)
            rows.append(_row(n, strategy, "Index.search_many", b, [t / b for t in times], 0))
            batch = prepared(strategy, texts)
            times = time_calls(
                lambda s=strategy, q=batch: retrieve.vote_many(s, q, 5, 32, scales, ranker, 12), calls
            )
            rows.append(_row(n, strategy, "scoring (vote_many)", b, [t / b for t in times], gb / b))
    times = time_calls(index.store.matrix, repeats)
    rows.append(_row(n, "-", "store.matrix(), cached", 1, times, 0))
    some_ids = [str(i) for i in matrix.ids[:: max(1, n // 5)][:5]]
    times = time_calls(lambda: index.store.rows_by_id(some_ids, ["text"], table=matrix.table), repeats)
    rows.append(_row(n, "-", "store.rows_by_id(5 ids)", 1, times, 0))
    return rows


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """p50 of each strategy over p50 of `standard`, per size, path and batch."""
    base = {(r["chunks"], r["path"], r["batch"]): r["p50_ms"] for r in rows if r["strategy"] == "standard"}
    out = []
    for r in rows:
        key = (r["chunks"], r["path"], r["batch"])
        if r["strategy"] not in ("standard", "-") and key in base:
            out.append({"chunks": r["chunks"], "path": r["path"], "batch": r["batch"], "strategy": r["strategy"],
                        "p50_ms": r["p50_ms"], "standard_p50_ms": base[key],
                        "over_standard": round(r["p50_ms"] / base[key], 2)})
    return out


# --- main ------------------------------------------------------------------------------------


def run_section(name: str, work: Any) -> dict[str, Any]:
    """Run one benchmark section and record the conditions it ran under (shared machine: load varies)."""
    start_load = os.getloadavg()
    data = work()
    blas = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    return data | {"load_average_start_end": [start_load, os.getloadavg()], "openblas_threads": blas}


def render(result: dict[str, Any]) -> str:
    md = [f"# mrag core benchmark\n\nmachine: {result['machine']}\n"]
    if "indexing" in result:
        section = result["indexing"]
        md += ["## Indexing throughput (all-MiniLM-L6-v2, ~800-char chunks, batch 32, CPU)\n",
               markdown_table(section["embed"], list(section["embed"][0])), "",
               markdown_table(section["index_add"], list(section["index_add"][0])), "",
               f"load average (1/5/15 min) at start and end: {section['load_average_start_end']}\n"]
    if "search" in result:
        section = result["search"]
        columns = ["chunks", "strategy", "path", "batch", "p50_ms", "p99_ms", "n", "GB_per_s"]
        md += ["## Exact search latency (synthetic unit vectors, D=384, H=12 x d=32, k=5, c=32, six-sentence "
               "queries; batch 32 is per query)\n",
               markdown_table(section["rows"], columns), "",
               "## Over standard (p50 ratio, same path and batch)\n",
               markdown_table(ratios(section["rows"]), list(ratios(section["rows"])[0])), "",
               "## Memory\n", markdown_table(section["memory"], list(section["memory"][0])), "",
               f"peak RSS of the benchmark process: {section['peak_rss_mb']} MiB; "
               f"OPENBLAS_NUM_THREADS: {section['openblas_threads']}; "
               f"load average at start and end: {section['load_average_start_end']}"]
    return "\n".join(md)


def search_section(sizes: list[int], quick: bool) -> dict[str, Any]:
    rows, memory = [], []
    for n in sizes:
        repeats = 5 if quick else (50 if n <= 10_000 else 20 if n <= 100_000 else 8)
        print(f"\nsearch benchmark at {n} chunks ...", flush=True)
        size_rows, size_memory = bench_search(n, repeats)
        rows += size_rows
        memory.append(size_memory)
        print(markdown_table(size_rows, ["chunks", "strategy", "path", "batch", "p50_ms", "p99_ms", "n", "GB_per_s"]))
        print(markdown_table([size_memory], list(size_memory)))
    return {"rows": rows, "memory": memory, "peak_rss_mb": round(peak_rss_mb())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (small sizes, one repeat)")
    parser.add_argument("--texts", type=int, default=1000, help="chunks for the indexing benchmark")
    parser.add_argument("--repeats", type=int, default=3, help="indexing runs per variant (median kept)")
    parser.add_argument("--sizes", default="10000,100000,1000000", help="index sizes for the search benchmark")
    parser.add_argument("--skip-indexing", action="store_true", help="keep the indexing section already written")
    parser.add_argument("--skip-search", action="store_true", help="keep the search section already written")
    parser.add_argument("--name", default="core", help="results file name (benchmarks/results/NAME.json)")
    args = parser.parse_args()
    if args.quick:
        args.texts, args.repeats, args.sizes, args.name = 64, 1, "2000", args.name + "-quick"
    sizes = [int(s) for s in args.sizes.split(",") if s]
    previous = RESULTS / f"{args.name}.json"
    result: dict[str, Any] = json.loads(previous.read_text()) if previous.is_file() else {}
    result["machine"] = machine()
    if not args.skip_indexing:
        result["indexing"] = run_section("indexing", lambda: bench_indexing(args.texts, args.repeats))
    if not args.skip_search:
        result["search"] = run_section("search", lambda: search_section(sizes, args.quick))
    write_results(args.name, result, render(result))


if __name__ == "__main__":
    main()
