"""Run retrieval strategies over a benchmark and score them for every k.

The corpus is embedded once into an mrag index under the cache folder, keyed by (model, layer,
pooling, chunking, corpus content), and query embeddings are cached beside it: a second run with
other strategies embeds nothing. Retrieval works on chunks; chunks map to units (documents or
topics) keeping the first occurrence, so k always counts distinct units.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mrag.embed.base import HeadEmbedder
from mrag.evaluate.datasets import Benchmark
from mrag.evaluate.metrics import K_MAX, dedupe_units, query_metrics
from mrag.index import Index
from mrag.manifest import FORMAT_VERSION
from mrag.retrieve import fulltext
from mrag.retrieve import strategies as retrieve
from mrag.retrieve.device_scan import exact_ranker, scan_device
from mrag.spaces import SpaceSpec

WHOLE_DOCUMENTS = 10**9  # chunk size that keeps every document in one chunk (the paper's setting)


@dataclass
class Corpus:
    """An embedded benchmark corpus: the index, and the unit of every row of its matrix."""

    index: Index
    row_units: np.ndarray  # (N,) unit id per matrix row
    spaces: list[str] = field(default_factory=list)  # the external spaces this evaluation uses
    query_cache: Path | None = None  # folder for query embeddings (None: not cached)


def cache_key(bench: Benchmark, embedder_info: dict[str, Any], chunk_chars: int) -> str:
    """The cache folder of a benchmark's embeddings: its documents, the chunk size and what makes the vectors,
    the embedder's probe included (a model folder's files replaced under its name: other vectors)."""
    h = hashlib.sha256()
    settings = {k: embedder_info.get(k) for k in ("model", "revision", "layer", "n_layers", "pooling", "max_length",
                                                  "query_instruction", "document_instruction", "dim", "n_heads",
                                                  "head_dim", "probe")}
    h.update(json.dumps([settings, chunk_chars, FORMAT_VERSION], sort_keys=True).encode())
    for d in bench.docs:
        h.update(d.id.encode() + b"\0" + d.text.encode() + b"\0")
    return h.hexdigest()[:20]


def embed_corpus(
    bench: Benchmark,
    embedder: HeadEmbedder,
    cache_dir: str | Path,
    chunk_chars: int = WHOLE_DOCUMENTS,
    show_progress: bool = False,
    spaces: Sequence[SpaceSpec] = (),
) -> Corpus:
    """Index the benchmark's documents (once per key) and map matrix rows to units.

    External `spaces` are added to the cached index (computed once per label); only these vote."""
    folder = Path(cache_dir) / cache_key(bench, embedder.recorded(), chunk_chars)
    index = Index.open(folder / "index", embedder=embedder, chunk_chars=chunk_chars, overlap=1)
    docs = [{"id": d.id, "text": d.text, "title": d.title, "source": bench.name} for d in bench.docs]
    index.upsert(docs, show_progress=show_progress)
    if spaces:
        index = Index.open(folder / "index", embedder=embedder, spaces=list(spaces))
    unit_of = {d.id: d.unit for d in bench.docs}
    matrix = index.store.matrix()
    row_units = np.array([unit_of[str(i).rsplit("#", 1)[0]] for i in matrix.ids], dtype=object)
    return Corpus(index, row_units, [s.name for s in spaces], query_cache=folder)


def embed_queries(
    corpus: Corpus, texts: Sequence[str], show_progress: bool = False
) -> dict[str, retrieve.QueryVectors]:
    """Unit query vectors for every distinct text, cached in an .npz in `corpus.query_cache`."""
    unique = sorted(set(texts))
    digest = hashlib.sha256("\0".join(unique).encode()).hexdigest()[:16]
    path = (corpus.query_cache or Path()) / f"queries-{digest}.npz"
    cached = read_npz(path, len(unique)) if corpus.query_cache is not None else None
    if cached is not None:
        standard, heads = cached["standard"], cached["heads"]
    else:
        emb = corpus.index.embedder.embed(unique, kind="query", show_progress=show_progress)
        emb.check_queries(unique)
        standard, heads = retrieve.unit(emb.standard), retrieve.unit(emb.heads)
        if corpus.query_cache is not None:
            write_npz(path, standard=standard, heads=heads)
    extra = {}
    for space in (s for s in corpus.index.spaces if s.name in corpus.spaces):
        spec = hashlib.sha256(json.dumps(space.spec.to_json(), sort_keys=True).encode()).hexdigest()[:8]
        space_path = path.with_name(f"{path.stem}-{space.name}-{spec}.npz")
        vectors = read_npz(space_path, len(unique)) if corpus.query_cache is not None else None
        if vectors is not None:
            extra[space.name] = vectors["vectors"]
        else:
            extra[space.name] = retrieve.unit(space.embed(unique, kind="query"))
            if corpus.query_cache is not None:
                write_npz(space_path, vectors=extra[space.name])
    return {
        t: retrieve.QueryVectors(s, h, {name: v[i] for name, v in extra.items()}, t)
        for i, (t, s, h) in enumerate(zip(unique, standard, heads))
    }


def read_npz(path: Path, rows: int) -> dict[str, np.ndarray] | None:
    """The arrays of a cached .npz, each of `rows` rows; None when it is missing or unreadable (a file cut by
    a crash, from an mrag that wrote in place): the caller computes the vectors again and overwrites it."""
    try:
        with np.load(path) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error):
        return None
    return arrays if arrays and all(len(a) == rows for a in arrays.values()) else None


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write an .npz whole or not at all: into a temporary file beside it, then renamed over it. Opened as any
    file is, so the umask gives its mode (a cache shared between users stays readable; mkstemp's is 0600)."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with temporary.open("wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stubs type the keywords as its own options
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def split_label(label: str, spaces: Sequence[str] = (), n_heads: int | None = None,
                n_slices: int | None = None) -> tuple[str, list[str] | None]:
    """'mrag@heads+standard' -> ('mrag', ['heads', 'standard']); 'mrag' -> ('mrag', None). Checks both
    (head:I and split:I against the index's numbers when given)."""
    strategy, at, selection = label.partition("@")
    retrieve.check_strategy(strategy)
    if not at:
        return strategy, None
    chosen = [s for s in selection.split("+") if s]
    retrieve.check_selection(chosen, n_heads, n_slices, spaces)
    return strategy, chosen


def query_texts(bench: Benchmark) -> list[str]:
    texts = []
    for q in bench.queries:
        texts += [q.text, *q.fusion]
        texts += [part for m in retrieve.MODIFIERS for part in retrieve.query_parts(m + "standard", q.text)]
    return texts


def evaluate(
    bench: Benchmark,
    corpus: Corpus,
    strategies: Sequence[str],
    c: int = retrieve.DEFAULT_C,
    k_max: int | None = None,
    show_progress: bool = False,
) -> list[dict[str, Any]]:
    """One record per (query, strategy, k): the metrics of the first k distinct units (a strategy named twice
    runs once); k up to `k_max`, by default `K_MAX` or n + 10 of the query of most aspects (the paper's plots
    go to k = n + 10, and a query of n > k_max would have no k = n)."""
    strategies = list(dict.fromkeys(strategies))
    if k_max is None:
        k_max = max(K_MAX, max((q.n for q in bench.queries), default=0) + 10)
    scales = corpus.index.space_weights()
    plans = {s: split_label(s, corpus.spaces, corpus.index.store.n_heads, len(scales["split"])) for s in strategies}
    vectors = embed_queries(corpus, query_texts(bench), show_progress=show_progress)
    if any(retrieve.uses_fulltext(strategy, select) for strategy, select in plans.values()):
        corpus.index.maintain_fulltext()  # an index cached before the full-text space existed gets one
    matrix = corpus.index.store.matrix()
    extra = {name: matrix.extra[name] for name in corpus.spaces}
    # BM25 on the same rows as a search answers it (in memory or through LanceDB's index); each text asked once
    device = scan_device(getattr(corpus.index.embedder, "device", None))  # a GPU's when the embedder runs on one
    ranker = fulltext.FullTextRanker(exact_ranker(matrix.standard, matrix.heads, extra, device), matrix.table,
                                     row_ids=matrix.row_ids, cache=True,
                                     memory=fulltext.in_memory(matrix, corpus.index.store.fulltext))
    category_of = bench.unit_category()
    chunks_per_unit = len(corpus.row_units) / max(len(set(corpus.row_units)), 1)
    depth = min(len(corpus.row_units), math.ceil(k_max * chunks_per_unit * 2))  # enough chunks for k_max units
    work = [(q, s) for q in bench.queries for s in strategies]
    if show_progress:
        from tqdm import tqdm

        work = tqdm(work, desc="evaluating", unit="run")  # type: ignore[assignment]
    records = []
    for q, label in work:
        strategy, select = plans[label]
        fusion = retrieve.parse_strategy(strategy).expand == "fusion"
        part_texts = q.fusion if fusion else retrieve.query_parts(strategy, q.text)
        if fusion and not part_texts:
            continue  # this query has no sub-queries: fusion does not apply
        result = retrieve.vote(strategy, vectors[q.text], depth, c, scales, ranker, len(matrix.heads),
                               [vectors[t] for t in part_texts], list(extra), select)
        units = dedupe_units(list(corpus.row_units[result.rows]), k_max)
        for rec in query_metrics(units, q.aspects, category_of, k_max):
            records.append({"query": q.id, "n": q.n, "strategy": label, **rec})
    return records


def summarize(records: list[dict[str, Any]], min_n: int = 2, categories: bool = True) -> dict[str, dict[str, float]]:
    """Per strategy: mean over queries with n >= min_n at k = n (doc and, when the set has `categories`,
    category ratio)."""
    out: dict[str, dict[str, list[float]]] = {}
    for r in records:
        if r["n"] >= min_n and r["k"] == r["n"]:
            s = out.setdefault(r["strategy"], {"doc": [], "category": [], "ndcg": []} if categories
                               else {"doc": [], "ndcg": []})
            s["doc"].append(r["success_ratio"])
            s["ndcg"].append(r["ndcg"])
            if categories:
                s["category"].append(r["category_ratio"])
    return {name: {m: float(np.mean(v)) for m, v in s.items()} | {"queries": len(s["doc"])} for name, s in out.items()}
