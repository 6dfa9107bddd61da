"""The ANN path at 1M (issue 17, target 2): per-space indexes against candidates re-scored exactly.

Two parts, one results file:

1. **Recall on real embeddings**: MiniLM vectors of real text (the paper's 1,250 Wikipedia v1 articles
   cut into sentences and 2- and 3-sentence windows, plus the sentences of the benchmark's query
   stories; `--embed` writes them, cached as .npz) in an mrag index with `--index-type` indexes (IVF_FLAT
   unless told; IVF_PQ is searched with the product's refine factor, `ann.DEFAULT_REFINE`). The paper's
   queries (every other one of the 250), embedded by MiniLM and cut into sentences as `mrag` cuts them,
   are ranked by the exact default (`segment+mrag-std`), by one ANN index per space (`AnnRanker`) and by
   the standard index's candidates re-scored exactly in every space (`RescoreRanker`). Recall is that of
   the final top 10 against the exact default's. nprobes are also given as the share of partitions
   probed, since an IVF index of N rows has sqrt(N) partitions: 20 and 60 of 1,000 at 1M are 2% and 6%
   (IVF_HNSW_SQ has N / 50,000: one below 100,000 rows, where nprobes changes nothing).
   Also: where the exact default's top-10 rows stand in the standard space (best rank over the
   query's parts, as a share of the index), which says how deep the candidates must go as rows grow.
2. **Speed at 1M synthetic rows** (`bench_scale.build`; no real text of that size here): `Index.search_many`
   end to end, batch 1 and 32, the configurations interleaved round by round so that the shared
   machine's load falls on all alike; p50/p99 per query and recall of the top 10 against exact.

`--strategy` names the strategies studied (comma-separated; default `mrag`, the default the committed
`ann-1m-real`/`ann-1m-synthetic` results measured). Each is compared with its own exact search; the
re-scored candidates apply only to strategies where the heads vote. A strategy where the full-text space
votes (`segment-bm25`, `mrag-bm25`, `hybrid`, `bm25`) needs the index's full-text index: the real rows carry
their text and get one (built on the temporary index when missing); an existing synthetic index without one
is refused (its text is synthetic anyway: time the strategy's vector part, e.g. `segment+standard`).

Run: python benchmarks/bench_ann_1m.py [--embed] [--rows 1000000] [--db EXISTING_INDEX] [--rounds 2] [--quick]
[--strategy mrag] [--index-type IVF_FLAT] [--replace-ann]
Writes benchmarks/results/ann-1m-all.json and .md (quick: ann-1m-all-quick.*). The committed results came from
`--skip synthetic --cache DIR --real-nprobes 3,8,20,40 --candidates 200,800 --name ann-1m-real` and
`--skip real --db COPY_OF_bench_memory_1M_INDEX --queries 32 --rounds 2 --nprobes 20,60 --candidates 200,800
--name ann-1m-synthetic`; `ann-1m.md` is the summary written from both. An existing index is only read
(its ANN indexes are built only when it has none), so `--db` may name it directly when it has them;
`--replace-ann` instead rebuilds, as `--index-type`, the indexes of the columns the strategies search (the
standard vector's, and the heads' where heads vote) in `--db`, which must then be a copy: the committed
`ann-1m-default-hnsw` came from `--skip real --db COPY --replace-ann --index-type IVF_HNSW_SQ --queries 32
--rounds 4 --nprobes 1,3,10,20 --strategy segment+standard --name ann-1m-default-hnsw` (`standard` is
always timed beside the strategies). `ann-real-141k` came from `--skip synthetic --cache DIR --man-queries
125 --strategy standard,segment-bm25,mrag --real-nprobes 4,8,23,60 --candidates 200 --name ann-real-141k`
on rows that `--embed --man-pages 100000 --cache DIR` (given to a first such run) had cached: the
Wikipedia rows and 100,000 sentences of the machine's manual pages, 141,381 real rows, and queries of
held-out manual-page sentences beside the paper's; `ann-real-141k-hnsw` from the same with
`--index-type IVF_HNSW_SQ --real-nprobes 1,2 --name ann-real-141k-hnsw`.
`exact-or-ann-300k`, `-500k` and `-1m` (where the ANN path starts to pay, `ANN_THRESHOLD`) came from
`--skip real --rows 300000 (500000, 1000000) --queries 32 --rounds 2 --nprobes 20,60 --candidates 200 --strategy
segment+standard,segment-bm25,mrag --name exact-or-ann-300k (-500k, -1m)`.
"""

from __future__ import annotations

import argparse
import bz2
import functools
import gzip
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import machine, markdown_table, percentiles_ms, time_calls, write_results
from bench_scale import ClusteredEmbedder, queries
from bench_scale import build as build_synthetic

from mrag.index import Index
from mrag.retrieve import ann, fulltext
from mrag.retrieve import strategies as retrieve
from mrag.retrieve.ann import DEFAULT_REFINE, AnnRanker, index_config
from mrag.retrieve.exact import Exact
from mrag.retrieve.fulltext import FullTextRanker
from mrag.retrieve.rescore import RescoreRanker
from mrag.rows import build_rows, chunk_schema
from mrag.settings import INDEX_TYPES

DATA = Path("/work/shared/datasets")
CACHE = Path.home() / ".cache" / "mrag" / "bench-ann-1m"
STRATEGY = "mrag"  # the default --strategy: segment+mrag-std, the default the committed ann-1m results measured


def real_texts(data: Path) -> list[str]:
    """Real text rows: article sentences, then 2-sentence windows, query-story sentences, 3-sentence windows."""
    from mrag.chunk import split_sentences

    articles = json.load(bz2.open(data / "wikipedia_articles_v1.json.bz2"))
    stories = json.load(bz2.open(data / "wikipedia_queries_v1.json.bz2"))
    split = [split_sentences(a["text"]) for a in articles]
    texts: dict[str, None] = {}
    for group in (
        [x for s in split for x in s],
        [" ".join(s[i : i + 2]) for s in split for i in range(len(s) - 1)],
        [x for q in stories for x in split_sentences(q["text"])],
        [" ".join(s[i : i + 3]) for s in split for i in range(len(s) - 2)],
    ):
        texts.update((t.strip(), None) for t in group if len(t.strip()) >= 20)
    return list(texts)


MAN_PAGES = Path("/usr/share/man")
MAN_ESCAPES = re.compile(r"\\f[BIRP]|\\f\(..|\\f\[[^\]]*\]|\\\(..|\\\[[^\]]*\]|\\[&|^%:]|\\s[-+]?\d|\\\*.")
MAN_BREAKS = (".PP", ".P", ".LP", ".SH", ".SS", ".TP", ".IP", ".Pp", ".Sh")  # macros that end a paragraph


def man_texts(limit: int, root: Path = MAN_PAGES, seed: int = 0) -> list[str]:
    """Up to `limit` sentences of real English prose beside the Wikipedia rows: the English manual pages
    of this machine (sections 1-8, groff source with its macros and escapes dropped), 40-400 characters,
    mostly letters, deduplicated, in a shuffled order fixed by `seed` (182,199 of them on these machines)."""
    from mrag.chunk import split_sentences

    found: dict[str, None] = {}
    for path in sorted(root.glob("man[1-8]*/*.gz")):
        lines: list[str] = []
        for line in gzip.open(path, "rt", errors="replace").read().splitlines() + [".PP"]:
            if line.startswith((".", "'")):
                if line.startswith(MAN_BREAKS) and lines:  # a paragraph ends: its sentences
                    for sentence in split_sentences(" ".join(lines)):
                        text = " ".join(sentence.split())
                        prose = text[:1].isupper() and sum(map(str.isalpha, text)) > 0.7 * len(text)
                        if 40 <= len(text) <= 400 and prose:
                            found.setdefault(text, None)
                    lines = []
                continue
            lines.append(MAN_ESCAPES.sub("", line.replace("\\-", "-")).replace("\\", ""))
    texts = list(found)
    np.random.default_rng(seed).shuffle(texts)
    return texts[:limit]


def embed_real(data: Path, out: Path, step: int = 4096, man_pages: int = 0) -> None:
    """MiniLM vectors of `real_texts` (real-NNN.npz) and of `man_pages` sentences of `man_texts`
    (man-NNN.npz), `step` rows per file (stop it any time: the files written are used)."""
    from mrag.embed.transformer import TransformerEmbedder

    out.mkdir(parents=True, exist_ok=True)
    embedder = TransformerEmbedder()
    for prefix, texts in (("real", real_texts(data)), ("man", man_texts(man_pages) if man_pages else [])):
        for n, first in enumerate(range(0, len(texts), step)):
            if not (out / f"{prefix}-{n:03d}.npz").exists():
                e = embedder.embed(texts[first : first + step], kind="document", batch_size=64)
                batch = np.array(texts[first : first + step])
                np.savez(out / f"{prefix}-{n:03d}.npz", standard=e.standard, heads=e.heads, texts=batch)
                print(f"embedded {prefix} {first + step} of {len(texts)}", flush=True)


def real_queries(data: Path, out: Path) -> list[list[retrieve.QueryVectors]]:
    """Every other benchmark query, cut into parts as `mrag` cuts it (as every `segment+` strategy does),
    as unit vectors with their text (vectors cached in queries.npz)."""
    stories = [q["text"] for q in json.load(bz2.open(data / "wikipedia_queries_v1.json.bz2"))][::2]
    return query_vectors(stories, out / "queries.npz")


def query_vectors(stories: list[str], path: Path) -> list[list[retrieve.QueryVectors]]:
    """Each story cut into parts as `mrag` cuts it, the parts as MiniLM unit vectors with their text,
    grouped by story; the vectors are cached at `path` and embedded again when its texts differ."""
    cut = [retrieve.query_parts(STRATEGY, story) or [story] for story in stories]
    texts = [p for ps in cut for p in ps]
    if not path.exists() or "texts" not in np.load(path) or list(np.load(path)["texts"]) != texts:
        from mrag.embed.transformer import TransformerEmbedder

        e = TransformerEmbedder().embed(texts, kind="query")
        np.savez(path, standard=e.standard, heads=e.heads, texts=np.array(texts))
    saved = np.load(path)
    vectors = [retrieve.QueryVectors(retrieve.unit(v), retrieve.unit(h), text=t)
               for v, h, t in zip(saved["standard"], saved["heads"], texts)]
    out, first = [], 0
    for ps in cut:
        out.append(vectors[first : first + len(ps)])
        first += len(ps)
    return out


def build_real(path: Path, files: list[Path]) -> Index:
    embedder = ClusteredEmbedder()  # sizes only: the rows carry MiniLM's vectors
    index = Index.open(path, embedder=embedder)
    schema = chunk_schema(embedder.dim, embedder.n_heads, embedder.head_dim)
    with index.store.writing():
        first = 0
        for f in files:
            saved = np.load(f)
            m = len(saved["standard"])
            ids = [f"r{i}" for i in range(first, first + m)]
            index.store.add(build_rows(
                ids=ids, doc_ids=ids, sources=["wikipedia-v1"] * m, titles=[""] * m, positions=[0] * m,
                texts=[str(t) for t in saved["texts"]], metadata=[{}] * m, doc_hashes=["x"] * m,
                standard=saved["standard"], heads=saved["heads"], schema=schema,
            ))
            first += m
    return index


def vote_ids(index: Index, strategy: str, ranker: Any, parts: list[retrieve.QueryVectors], ids: Any) -> list[str]:
    result = retrieve.vote(strategy, parts[0], 10, retrieve.DEFAULT_C, index.space_weights(), ranker,
                           index.store.n_heads, parts if len(parts) > 1 else None)
    names = ids() if callable(ids) else ids
    return [names[int(r)] for r in result.rows]


def recall(found: list[list[str]], exact: list[list[str]]) -> float:
    return round(float(np.mean([len(set(a) & set(e)) / max(1, len(e)) for a, e in zip(found, exact)])), 4)


def man_queries(cache: Path, count: int, parts: int = 6, seed: int = 1) -> list[list[retrieve.QueryVectors]]:
    """`count` multi-aspect queries of `parts` manual-page sentences that the index does not hold (those
    after the ones embedded into man-*.npz), each from other pages at random, cut into parts as `mrag`
    cuts them (vectors cached in man-queries.npz)."""
    held = sum(len(np.load(f)["texts"]) for f in sorted(cache.glob("man-[0-9]*.npz")))
    spare = man_texts(10**9)[held:]
    rng = np.random.default_rng(seed)
    stories = [" ".join(spare[i] for i in rng.choice(len(spare), parts, replace=False)) for _ in range(count)]
    return query_vectors(stories, cache / "man-queries.npz")


def real_part(
    data: Path, cache: Path, probes: list[int], pools: list[int], strategies: list[str], index_type: str = "IVF_FLAT",
    man_query_count: int = 0,
) -> dict[str, Any]:
    files = sorted(cache.glob("real-*.npz")) + sorted(cache.glob("man-[0-9]*.npz"))
    if not files:
        raise SystemExit(f"no real vectors in {cache}: run with --embed first")
    query_sets = {"wikipedia": real_queries(data, cache)}
    if man_query_count:
        query_sets["man pages"] = man_queries(cache, man_query_count)
    with tempfile.TemporaryDirectory() as tmp:
        index = build_real(Path(tmp) / "db", files)
        n = index.store.count()
        has_fulltext = "yes" if index.store.reading(fulltext.has_index) else "no"
        if any(retrieve.uses_fulltext(s) for s in strategies) and has_fulltext == "no":
            has_fulltext = "built here" if index.maintain_fulltext(force=True) else "no"
        matrix = index.store.matrix()
        exact_ranker = FullTextRanker(Exact(matrix.standard, matrix.heads), matrix.table, row_ids=matrix.row_ids)
        vote_ids(index, strategies[0], exact_ranker, query_sets["wikipedia"][0], matrix.ids)  # makes the bf16 copies
        exact: dict[tuple[str, str], list[list[str]]] = {}
        rows: list[dict[str, Any]] = []
        for name, qs in query_sets.items():
            for s in strategies:
                start = time.perf_counter()
                exact[name, s] = [vote_ids(index, s, exact_ranker, p, matrix.ids) for p in qs]
                rows.append({"rows": n, "queries": name, "index": "none", "strategy": s, "path": "exact scan",
                             "recall@10": 1.0, "mean_ms": round((time.perf_counter() - start) / len(qs) * 1e3, 1)})
        depth = {f"{name}, {s}": standard_depth(matrix, query_sets[name], top) for (name, s), top in exact.items()}
        start = time.perf_counter()
        index.build_ann(index_type, 20)  # every space's column (standard, heads), as the product builds them
        build_s = round(time.perf_counter() - start, 1)
        print(f"built {index_type} indexes in {build_s} s", flush=True)
        columns = {c.space: c.column for c in index.store.vector_columns(committed=True)}
        partitions = index_config(index_type, matrix.standard.shape[1], n).num_partitions
        refine = DEFAULT_REFINE if index_type == "IVF_PQ" else None  # as the product's ANN path (`ranker_for`)
        for name, qs in query_sets.items():
            for strategy in strategies:
                for nprobes in probes:
                    for pool in [0, *(pools if retrieve.uses_heads(strategy) else [])]:
                        table = index.store.snapshot()
                        inner = (RescoreRanker(table, columns, nprobes, pool, refine) if pool
                                 else AnnRanker(table, columns, nprobes, refine))
                        ranker = FullTextRanker(inner, table, ann=inner)
                        start = time.perf_counter()
                        found = [vote_ids(index, strategy, ranker, p, lambda r=inner: r.ids) for p in qs]
                        ms = (time.perf_counter() - start) / len(qs) * 1e3
                        rows.append({"rows": n, "queries": name, "index": index_type, "strategy": strategy,
                                     "path": f"rescore, {pool} candidates/part" if pool else "one index per space",
                                     "nprobes": nprobes, "probed": f"{min(nprobes, partitions) / partitions:.1%}",
                                     "recall@10": recall(found, exact[name, strategy]), "mean_ms": round(ms, 1)})
                        print(rows[-1], flush=True)
    return {"rows": n, "queries": {name: len(qs) for name, qs in query_sets.items()},
            "parts": {name: sum(len(p) for p in qs) for name, qs in query_sets.items()}, "partitions": partitions,
            "index_type": index_type, "refine_factor": refine, "build_s": build_s,
            "fulltext_index": has_fulltext, "table": rows, "standard_depth": depth}


def standard_depth(matrix: Any, qs: list[list[retrieve.QueryVectors]], exact: list[list[str]]) -> dict[str, Any]:
    """Best rank, over a query's parts, of each exact top-10 row in the standard space."""
    where = {name: i for i, name in enumerate(matrix.ids)}
    ranks = []
    for parts, top in zip(qs, exact):
        sims = np.stack([p.standard for p in parts]) @ matrix.standard.T  # (P, N)
        order = np.argsort(-sims, axis=1)
        position = np.empty_like(order)
        np.put_along_axis(position, order, np.arange(order.shape[1])[None, :], axis=1)
        ranks += [int(position[:, where[r]].min()) for r in top]
    arr = np.array(ranks)
    n = len(matrix.ids)
    return {"quantiles_rank": {q: int(np.quantile(arr, q)) for q in (0.5, 0.9, 0.95, 0.99)},
            "quantiles_share": {q: round(float(np.quantile(arr, q)) / n, 5) for q in (0.5, 0.9, 0.95, 0.99)},
            "within": {c: round(float(np.mean(arr < c)), 4) for c in (50, 100, 200, 400, 800)}}


def synthetic_part(
    n: int, n_queries: int, probes: list[int], pools: list[int], rounds: int, strategies: list[str],
    db: Path | None = None, index_type: str = "IVF_FLAT", replace_ann: bool = False,
) -> dict[str, Any]:
    texts = queries(n_queries)
    configs: list[tuple[str, str, bool, int | None, int | None]] = [("exact", "standard", True, None, None)]
    configs += [("exact", s, True, None, None) for s in strategies]
    for nprobes in probes:
        configs.append(("ANN", "standard", False, nprobes, None))
        for strategy in strategies:
            configs.append(("ANN", strategy, False, nprobes, 0))
            rescored = pools if retrieve.uses_heads(strategy) else []  # candidates re-scored where heads vote
            configs += [("ANN", strategy, False, nprobes, pool) for pool in rescored]
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        if db is None:
            index, _ = build_synthetic(Path(tmp) / "db", n, ClusteredEmbedder())
        else:  # an index built before (e.g. bench_memory.py's); its ANN indexes are built once
            index = Index.open(db, embedder=ClusteredEmbedder())
            n = index.store.count()
        has_fulltext = index.store.reading(fulltext.has_index)
        if not has_fulltext and any(retrieve.uses_fulltext(s) for s in strategies):
            if db is not None:
                raise SystemExit(f"{db} has no full-text index: time the vector part of {strategies} instead")
            index.maintain_fulltext(force=True)  # the synthetic rows' text: "synthetic chunk N"
            has_fulltext = True
        build_s = None
        if not index.store.manifest.ann:
            start = time.perf_counter()
            index.build_ann(index_type, progress=lambda c: print("indexed", c, round(time.perf_counter() - start)))
        elif replace_ann:  # only the columns searched here: the others keep their indexes
            store, start = index.store, time.perf_counter()
            heads = any(retrieve.uses_heads(s) for s in strategies)
            columns = {c.column: c.width for c in store.vector_columns()
                       if c.space == "standard" or heads and c.space.startswith("head:")}
            with store.writing(maintain=False):
                ann.build(store.chunks, columns, index_type,
                          lambda c: print("indexed", c, round(time.perf_counter() - start), flush=True))
                store.stage(ann={**store.manifest.ann, "index_type": index_type})
            build_s = round(time.perf_counter() - start, 1)
            print(f"replaced the {index_type} indexes of {sorted(columns)} in {build_s} s", flush=True)
        index.store.matrix()
        print(f"built {n} rows", flush=True)
        exact = {s: [[h.id for h in hits] for hits in index.search_many(texts, 10, s, exact=True)]
                 for s in ("standard", *strategies)}
        times: dict[tuple[Any, ...], dict[int, list[float]]] = {cfg: {1: [], 32: []} for cfg in configs}
        for _ in range(rounds):
            for cfg in configs:
                _, strategy, is_exact, nprobes, pool = cfg
                for batch in (1, 32):
                    groups = [texts[i : i + batch] for i in range(0, len(texts), batch)]
                    for group in groups:
                        call = functools.partial(index.search_many, group, 10, strategy, exact=is_exact,
                                                 nprobes=nprobes, candidates=pool)
                        times[cfg][batch] += [t / len(group) for t in time_calls(call, 1, warmup=0)]
        rows = []
        for cfg in configs:
            search, strategy, is_exact, nprobes, pool = cfg
            found = [[h.id for h in hits] for hits in
                     index.search_many(texts, 10, strategy, exact=is_exact, nprobes=nprobes, candidates=pool)]
            path = "exact scan" if is_exact else ("rescore" if pool else "index per space" if strategy != "standard"
                                                  else "standard index")
            for batch in (1, 32):
                rows.append({"rows": n, "strategy": strategy, "path": path,
                             "settings": "" if is_exact else f"nprobes {nprobes}" + (f", {pool} cand." if pool else ""),
                             "batch": batch, **percentiles_ms(times[cfg][batch]),
                             "recall@10 (synthetic)": recall(found, exact[strategy])})
        exact_p50 = {(s, b): next(r["p50_ms"] for r in rows if r["strategy"] == s and r["path"] == "exact scan"
                                  and r["batch"] == b) for s in strategies for b in (1, 32)}
        for r in rows:
            std = next(x["p50_ms"] for x in rows if x["strategy"] == "standard" and x["batch"] == r["batch"]
                       and x["settings"].split(",")[0] == r["settings"].split(",")[0])
            r["vs standard"] = round(r["p50_ms"] / std, 2)
            for s in strategies:
                r[f"speedup vs exact {s}"] = round(exact_p50[s, r["batch"]] / r["p50_ms"], 2)
            print(r, flush=True)
    return {"rows": rows, "rounds": rounds, "queries": n_queries, "fulltext_index": has_fulltext,
            "index_type": index.store.manifest.ann["index_type"], "replaced_ann_s": build_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embed", action="store_true", help="embed the real rows first (slow on a CPU)")
    parser.add_argument("--man-pages", type=int, default=0,
                        help="with --embed, also embed this many sentences of the machine's manual pages")
    parser.add_argument("--man-queries", type=int, default=0,
                        help="also this many queries of six held-out manual-page sentences (needs man-*.npz rows)")
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--nprobes", default="20,60")
    parser.add_argument("--real-nprobes", default="2,4,10,20")
    parser.add_argument("--candidates", default="100,200,400")
    parser.add_argument("--skip", choices=["real", "synthetic"], default=None)
    parser.add_argument("--db", type=Path, default=None,
                        help="time an existing index (only read; ANN indexes are built into it when it has none)")
    parser.add_argument("--replace-ann", action="store_true",
                        help="rebuild the ANN indexes of --db (a copy: it is changed) as --index-type")
    parser.add_argument("--name", default="ann-1m-all")
    parser.add_argument("--strategy", default=STRATEGY, help="the strategies studied, comma-separated")
    parser.add_argument("--index-type", choices=INDEX_TYPES, default="IVF_FLAT",
                        help="the ANN indexes built for the real rows (and for synthetic rows built here); "
                             "IVF_FLAT keeps the committed results reproducible")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.queries, args.rounds, args.name = 20_000, 16, 1, args.name + "-quick"
    if args.embed:
        embed_real(args.data, args.cache, man_pages=args.man_pages)
    pools = [int(p) for p in args.candidates.split(",")]
    strategies = [retrieve.check_strategy(s.strip()) for s in args.strategy.split(",") if s.strip()]
    started = time.perf_counter()
    result: dict[str, Any] = {"machine": machine(), "strategies": strategies,
                              "command": " ".join(["python", "benchmarks/bench_ann_1m.py", *sys.argv[1:]]),
                              "load_average": {"start": [round(x, 2) for x in os.getloadavg()]}}
    if args.skip != "real":
        result["real"] = real_part(args.data, args.cache, [int(p) for p in args.real_nprobes.split(",")], pools,
                                   strategies, args.index_type, args.man_queries)
    if args.skip != "synthetic":
        result["synthetic"] = synthetic_part(args.rows, args.queries, [int(p) for p in args.nprobes.split(",")],
                                             pools, args.rounds, strategies, args.db, args.index_type,
                                             args.replace_ann)
    result["load_average"]["end"] = [round(x, 2) for x in os.getloadavg()]
    result["wall_s"] = round(time.perf_counter() - started)
    types = sorted({result[p]["index_type"] for p in ("real", "synthetic") if p in result})
    md = [f"# The ANN path at 1M: {', '.join(strategies)} ({', '.join(types)}, k=10, c=32)\n",
          f"command: `{result['command']}`\n",
          f"machine: {result['machine']}; load average (1, 5, 15 min) at the start {result['load_average']['start']}, "
          f"at the end {result['load_average']['end']}; {result['wall_s']} s\n"]
    if "real" in result:
        real = result["real"]
        md += [f"## Recall of the top 10 vs the same strategy's exact search, real MiniLM rows ({real['rows']} rows, "
               f"{real['index_type']} indexes, {real['partitions']} partitions, queries {real['queries']}, "
               f"parts {real['parts']}; full-text index: {real['fulltext_index']})\n",
               f"ANN indexes ({real['index_type']}, every space's column) built in {real['build_s']} s; "
               f"refine factor on the ANN path: {real['refine_factor'] or 'none'}.\n",
               markdown_table(real["table"], ["rows", "queries", "index", "strategy", "path", "nprobes", "probed",
                                              "recall@10", "mean_ms"]), "",
               "Best standard-space rank (over the query's parts) of the exact top-10 rows: "
               f"{json.dumps(real['standard_depth'])}", ""]
    if "synthetic" in result:
        synthetic = result["synthetic"]
        md += [f"## Speed at {args.rows} synthetic rows ({synthetic['index_type']} indexes, {args.queries} queries x "
               f"{args.rounds} interleaved rounds; full-text index: {synthetic['fulltext_index']})\n",
               *([f"Indexes replaced in {synthetic['replaced_ann_s']} s.\n"] if synthetic["replaced_ann_s"] else []),
               markdown_table(result["synthetic"]["rows"], ["rows", "strategy", "path", "settings", "batch", "p50_ms",
                                                            "p99_ms", "n", "recall@10 (synthetic)", "vs standard",
                                                            *(f"speedup vs exact {s}" for s in strategies)])]
    write_results(args.name, result, "\n".join(md))


if __name__ == "__main__":
    main()
