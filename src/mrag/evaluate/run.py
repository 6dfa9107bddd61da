"""`mrag eval` end to end: load, embed (cached), evaluate, summarise, write table/records/plots."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mrag.evaluate.datasets import load
from mrag.evaluate.harness import WHOLE_DOCUMENTS, embed_corpus, evaluate, split_label, summarize
from mrag.evaluate.metrics import ranking_metrics
from mrag.evaluate.report import markdown_table, plot, write_records
from mrag.spaces import parse_space

DEFAULT_STRATEGIES = (
    "standard",
    "mrag",
    "mrag-paper",
    "mrag-std",
    "mrag-decay",
    "mrag-distance",
    "split",
    "split-weighted",
    "interleave+standard",
    "interleave+mrag-paper",
    "segment+standard",
    "segment+mrag-paper",
    "fusion",
    "mrag-fusion",
    "bm25",  # what a LanceDB user has without vectors: its full-text search, and its hybrid search
    "hybrid",
    "segment+hybrid",
    "mrag-bm25",
    "segment-bm25",
)


def default_cache() -> Path:
    return Path.home() / ".cache" / "mrag" / "eval"


def run_eval(
    corpus: str,
    queries: str | None,
    model: str | None = None,
    layer: int = -1,
    pooling: str | None = None,
    strategies: Sequence[str] | None = None,
    c: int = 32,
    chunk_chars: int = 0,
    cache: str | None = None,
    query_instruction: str = "",
    device: str = "auto",
    dtype: str = "float32",
    out_dir: str | None = None,
    show_progress: bool = False,
    spaces: Sequence[str] = (),
) -> dict[str, Any]:
    from mrag.embed.transformer import TransformerEmbedder

    names = list(dict.fromkeys(strategies or DEFAULT_STRATEGIES))  # a strategy named twice runs once
    specs = [parse_space(s) for s in spaces]
    for s in names:
        split_label(s, [x.name for x in specs])
    if c <= 0:
        raise ValueError(f"c must be positive, got {c}")
    bench = load(corpus, queries)
    if not bench.queries:
        raise ValueError(f"no usable queries in {queries or corpus} ({len(bench.skipped)} skipped)")
    embedder = TransformerEmbedder(
        model, layer=layer, pooling=pooling, device=device, dtype=dtype,  # type: ignore[arg-type]
        query_instruction=query_instruction,
    )
    embedded = embed_corpus(bench, embedder, cache or default_cache(), chunk_chars or WHOLE_DOCUMENTS, show_progress,
                            spaces=specs)
    records = evaluate(bench, embedded, names, c=c, show_progress=show_progress)
    ran = {r["strategy"] for r in records}
    # a fusion strategy runs on the queries that carry sub-queries (the paper's do); say where none does
    left_out = [f"strategy {name}: no query carries the sub-queries it needs (the queries file's 'fusion')"
                for name in names if name not in ran]  # fusion ones only: the others run on all
    summary = summarize(records, categories=bench.has_categories)
    # one-aspect questions (n = 1), and for BEIR (no categories) the standard ranking metrics of all
    single = ranking_metrics(records, only_n=None if not bench.has_categories else 1)
    info = embedder.info()
    title = f"{bench.name}: {info['model']}, layer {info['layer']}, {info['pooling']} pooling, c = {c}"
    if specs:
        title += "; spaces: " + ", ".join(f"{x.name} ({x.function})" for x in specs)
    table = markdown_table(records, summary, title, bench.has_categories) + single_table(
        single, "Single-aspect queries (n = 1)" if bench.has_categories else "All queries (BEIR)")
    files: list[str] = []
    if out_dir:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_records(records, out / "records.jsonl")
        (out / "table.md").write_text(table)
        (out / "summary.json").write_text(json.dumps({"title": title, "embedder": info, "summary": summary,
                                                      "single_aspect": single,
                                                      "spaces": [x.to_json() for x in specs],
                                                      "skipped": bench.skipped + left_out}, indent=2))
        files = [str(out / n) for n in ("records.jsonl", "table.md", "summary.json")]
        files += [str(p) for p in plot(records, out)]
    return {"summary": summary, "single_aspect": single, "table": table, "skipped": bench.skipped + left_out,
            "files": files, "records": records}


def single_table(single: dict[str, dict[str, float]], which: str) -> str:
    """The single-aspect (or BEIR) ranking metrics: one line per strategy."""
    if not single:
        return ""
    metrics = [m for m in next(iter(single.values())) if m != "queries"]
    lines = ["", f"{which}, {next(iter(single.values()))['queries']} queries: ranking metrics.", "",
             "| strategy | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    lines += [f"| {name} | " + " | ".join(f"{m[x]:.3f}" for x in metrics) + " |" for name, m in single.items()]
    return "\n".join(lines) + "\n"
