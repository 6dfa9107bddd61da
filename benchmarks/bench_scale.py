"""Search at scale on a real mrag store: exact in-memory search against the per-space ANN indexes.

Builds an mrag index of N synthetic chunks (default 1M) whose vectors are clustered like real
embeddings: every space (the standard vector and each of the 12 heads) draws its own cluster for a
row, so the heads are different views of the same chunk. Queries come from the same generator
(seeded by the query text) through `Index.search_many`, six sentences each, as `mrag` sees them.

Measured: exact search (`exact=True`) p50/p99 for standard, mrag-std and mrag (= segment+mrag-std);
`Index.build_ann` time; ANN search p50/p99; recall of the final top-10 against exact search, and
per-space recall@c of the indexes (each space's c = 32 nearest rows, the depth mrag votes with).

Run: python benchmarks/bench_scale.py [--rows 1000000] [--index IVF_FLAT] [--queries 50] [--quick]
Writes benchmarks/results/scale.json and scale.md (quick: scale-quick.*).
"""

from __future__ import annotations

import argparse
import functools
import gc
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from _common import machine, markdown_table, peak_rss_mb, percentiles_ms, rss_mb, time_calls, write_results

from mrag.embed.base import Embeddings, HeadEmbedder
from mrag.embed.models import DEFAULT_MODEL
from mrag.index import Index
from mrag.retrieve import ann
from mrag.retrieve import strategies as retrieve
from mrag.retrieve.exact import Exact
from mrag.rows import build_rows, chunk_schema

STRATEGIES = ("standard", "mrag-std", "mrag")
SENTENCES = [
    "A sailor crosses the ocean at night", "She steers by the stars and a compass",
    "At dawn her boat reaches a harbour", "Merchants there trade spices and silk",
    "A storm comes in from the west", "The harbour master closes the gates",
]


class ClusteredEmbedder(HeadEmbedder):
    """MiniLM's sizes (D=384, H=12, d=32). Each space has its own 2,000 cluster centres; a text's
    vector in a space is a centre (picked by the text's CRC) plus noise."""

    name = DEFAULT_MODEL
    dim, n_heads, head_dim = 384, 12, 32

    def __init__(self, clusters: int = 2000, noise: float = 0.35, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.standard_centres = rng.standard_normal((clusters, self.dim)).astype(np.float32)
        self.head_centres = rng.standard_normal((self.n_heads, clusters, self.head_dim)).astype(np.float32)
        self.head_size = np.linspace(0.5, 2.0, self.n_heads, dtype=np.float32)[None, :, None]  # (1, H, 1)
        self.noise = noise

    def sample(self, rng: np.random.Generator, m: int) -> tuple[np.ndarray, np.ndarray]:
        """m rows: standard (m, D), heads (m, H, d)."""
        k = len(self.standard_centres)
        standard = self.standard_centres[rng.integers(0, k, m)]
        standard = standard + self.noise * rng.standard_normal(standard.shape, dtype=np.float32)
        picks = rng.integers(0, k, (self.n_heads, m))
        heads = np.stack([self.head_centres[h, picks[h]] for h in range(self.n_heads)], axis=1)  # (m, H, d)
        heads = heads + self.noise * rng.standard_normal(heads.shape, dtype=np.float32)
        return standard, heads * self.head_size

    def embed_batch(self, texts: list[str]) -> Embeddings:
        pairs = [self.sample(np.random.default_rng(zlib.crc32(t.encode())), 1) for t in texts]
        return Embeddings(np.concatenate([s for s, _ in pairs]), np.concatenate([h for _, h in pairs]))


def build(path: Path, n: int, embedder: ClusteredEmbedder, batch: int = 50_000) -> tuple[Index, float]:
    index = Index.open(path, embedder=embedder)
    schema = chunk_schema(embedder.dim, embedder.n_heads, embedder.head_dim)
    rng = np.random.default_rng(1)
    start = time.perf_counter()
    with index.store.writing():
        for first in range(0, n, batch):
            m = min(batch, n - first)
            standard, heads = embedder.sample(rng, m)
            index.store.add(build_rows(
                ids=[f"c{i}" for i in range(first, first + m)], doc_ids=[f"d{i // 4}" for i in range(first, first + m)],
                sources=["synthetic"] * m, titles=[""] * m, positions=[i % 4 for i in range(first, first + m)],
                texts=[f"chunk {i}" for i in range(first, first + m)], metadata=[{}] * m, doc_hashes=["x"] * m,
                standard=standard, heads=heads, schema=schema,
            ))
    return index, time.perf_counter() - start


def queries(count: int) -> list[str]:
    return [". ".join(f"{s} {i}" for s in SENTENCES) + "." for i in range(count)]


def timed(
    index: Index, strategy: str, texts: list[str], exact: bool, batch: int, repeats: int, nprobes: int | None = None
) -> dict[str, Any]:
    """p50/p99 per query of `Index.search_many` over the texts in batches of `batch`."""
    groups = [texts[i : i + batch] for i in range(0, len(texts), batch)][: max(1, repeats // batch) or 1]
    times = []
    for group in groups:
        call = functools.partial(index.search_many, group, 10, strategy, exact=exact, nprobes=nprobes)
        times += [t / len(group) for t in time_calls(call, 1, warmup=0)]
    return percentiles_ms(times)


def top_ids(index: Index, strategy: str, texts: list[str], exact: bool, nprobes: int | None = None) -> list[list[str]]:
    return [[h.id for h in hits] for hits in index.search_many(texts, 10, strategy, exact=exact, nprobes=nprobes)]


def space_recall(index: Index, texts: list[str], nprobes: int, c: int = 32) -> dict[str, float]:
    """Per space, the share of the exact top c that the ANN index returns (mean over query parts)."""
    matrix = index.store.matrix()
    exact = Exact(matrix.standard, matrix.heads)
    columns = {c.space: c.column for c in index.store.vector_columns(committed=True)}
    approx = ann.AnnRanker(index.store.snapshot(), columns, nprobes)
    chosen = retrieve.voters("mrag-std", index.store.n_heads, index.space_weights())
    emb = index.embedder.embed([p for t in texts for p in retrieve.query_parts("mrag", t)], kind="query")
    parts = [retrieve.QueryVectors(retrieve.unit(s), retrieve.unit(h)) for s, h in zip(emb.standard, emb.heads)]
    want, _ = exact(chosen, parts, c)  # (P, S, c) row numbers
    got, _ = approx(chosen, parts, c)
    got_ids = np.array(approx.ids + [""], dtype=object)[got]  # -1 -> ""
    out = {}
    for s, voter in enumerate(chosen):
        hits = [len(set(matrix.ids[want[p, s]]) & set(got_ids[p, s])) / c for p in range(len(parts))]
        out[voter.name] = round(float(np.mean(hits)), 4)
    return out


def run(n: int, index_type: str, n_queries: int, clusters: int, noise: float, probes: list[int]) -> dict[str, Any]:
    texts = queries(n_queries)
    with tempfile.TemporaryDirectory() as tmp:
        rss_start = rss_mb()
        index, build_s = build(Path(tmp) / "db", n, ClusteredEmbedder(clusters, noise))
        print(f"built {n} rows in {build_s:.1f} s", flush=True)
        start = time.perf_counter()
        index.store.matrix()
        load_s = time.perf_counter() - start
        rows: list[dict[str, Any]] = []
        for strategy in STRATEGIES:
            for batch in (1, 32):
                stats = timed(index, strategy, texts, True, batch, n_queries)
                rows.append({"chunks": n, "search": "exact", "strategy": strategy, "batch": batch, **stats})
                print(rows[-1], flush=True)
        exact_ids = {s: top_ids(index, s, texts, True) for s in STRATEGIES}
        memory = {"chunks": n, "build_s": round(build_s, 1), "matrix_load_s": round(load_s, 1),
                  "rss_after_matrix_mb": round(rss_mb()), "rss_growth_mb": round(rss_mb() - rss_start)}
        index.store._matrix = None  # the ANN path does not need the vectors in memory
        gc.collect()
        start = time.perf_counter()
        index.build_ann(index_type)
        ann_build_s = time.perf_counter() - start
        print(f"ANN ({index_type}) built in {ann_build_s:.1f} s", flush=True)
        per_space = {}
        for nprobes in probes:
            for strategy in STRATEGIES:
                found = top_ids(index, strategy, texts, False, nprobes)
                recall = np.mean([len(set(a) & set(e)) / max(1, len(e)) for a, e in zip(found, exact_ids[strategy])])
                for batch in (1, 32):
                    stats = timed(index, strategy, texts, False, batch, n_queries, nprobes)
                    rows.append({"chunks": n, "search": f"ANN {index_type}, nprobes {nprobes}", "strategy": strategy,
                                 "batch": batch, **stats, "recall@10": round(float(recall), 4)})
                    print(rows[-1], flush=True)
            per_space[f"nprobes {nprobes}"] = space_recall(index, texts[:10], nprobes)
        memory |= {"ann_index": index_type, "ann_build_s": round(ann_build_s, 1)}
    return {"rows": rows, "memory": memory, "space_recall@32": per_space, "peak_rss_mb": round(peak_rss_mb())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--index", default=ann.DEFAULT_INDEX, choices=ann.INDEX_TYPES)
    parser.add_argument("--queries", type=int, default=64, help="queries timed (batch 1) and checked for recall")
    parser.add_argument("--clusters", type=int, default=2000, help="cluster centres per space")
    parser.add_argument("--noise", type=float, default=0.35, help="noise per dimension (centres are N(0, 1))")
    parser.add_argument("--name", default="scale", help="results file name")
    parser.add_argument("--nprobes", default="20", help="comma-separated IVF probes to measure")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.queries, args.name = 20_000, 32, args.name + "-quick"
    result = {"machine": machine(), "clusters": args.clusters, "noise": args.noise,
              **run(args.rows, args.index, args.queries, args.clusters, args.noise,
                    [int(p) for p in args.nprobes.split(",")])}
    columns = ["chunks", "search", "strategy", "batch", "p50_ms", "p99_ms", "n", "recall@10"]
    md = "\n".join([
        f"# mrag search at scale ({args.rows} chunks, synthetic vectors in {args.clusters} clusters per space, "
        f"noise {args.noise}, {args.index}, k=10, c=32)\n",
        f"machine: {result['machine']}\n", markdown_table(result["rows"], columns), "",
        "## Build and memory\n", markdown_table([result["memory"]], list(result["memory"])), "",
        "## Per-space recall@32 of the ANN indexes (query parts of 10 queries)\n",
        markdown_table([{"nprobes": k, **v} for k, v in result["space_recall@32"].items()],
                       ["nprobes", *next(iter(result["space_recall@32"].values()))]), "",
        f"peak RSS: {result['peak_rss_mb']} MiB",
    ])
    write_results(args.name, result, md)


if __name__ == "__main__":
    main()
