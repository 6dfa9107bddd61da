"""`mrag tune`: evaluate an index's own embeddings on a benchmark and record the strategy that wins.

The benchmark is a folder `mrag bench` wrote (or any BEIR folder whose documents are in the index).
Its documents are found in the index by the id `mrag index` gave them (`doc_id`), else by their path
below the folder they came from. Rows of other documents stay in the ranking as distractors.

Each candidate strategy gets one score: the mean of its multi-aspect result (share of the n relevant
documents among the first n, over queries with n >= 2) and its single-aspect MRR@10 (n = 1), so both
kinds of question count alike; with one kind only, that kind's number. The best score wins, but the
built-in default is kept unless the winner is ahead of it by more than twice the standard error of
the paired per-query difference: a benchmark of 75 queries should not flip the default on noise.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mrag import settings
from mrag.evaluate.bench import read_jsonl
from mrag.evaluate.datasets import load_beir
from mrag.evaluate.harness import Corpus, evaluate, summarize
from mrag.evaluate.metrics import ranking_metrics
from mrag.evaluate.run import DEFAULT_STRATEGIES
from mrag.retrieve.strategies import uses_fulltext

CANDIDATES = tuple(s for s in DEFAULT_STRATEGIES if "fusion" not in s)  # no LLM at search time


def candidates(chosen: Sequence[str] | None, default: str = settings.DEFAULT_STRATEGY) -> list[str]:
    """The strategies to compare: the built-in default first, whether chosen or not (a winner must beat it),
    then the others (fusion ones refused: they need an LLM at search time, which a recorded default must not)."""
    names = [default, *(chosen or CANDIDATES)]
    for name in names:
        settings.check_strategy(name)
        if settings.parse_strategy(name).expand == "fusion":
            raise ValueError(f"{name} needs an LLM to write sub-queries at search time: it cannot be a default")
    return sorted(dict.fromkeys(names), key=lambda s: s != default)


EXTRACTIVE_NOTE = ("an extractive benchmark's queries are its documents' rarest words, which full-text search finds "
                   "by construction (bm25 0.98 there against 0.52 on the paper's own queries, same articles), so "
                   "strategies with the full-text space were not candidates, the built-in default aside; "
                   "a benchmark written by an LLM (--generator) can rank them")


EXTRACTIVE_DEFAULT_NOTE = ("an extractive benchmark's queries are its documents' rarest words, which full-text search "
                           "finds by construction: the built-in default, which searches the full text too, is favoured")


def writer_of(folder: Path) -> str | None:
    """Who wrote a benchmark's queries, as its bench.json records (None: not made by mrag bench)."""
    try:
        writer = json.loads((folder / "bench.json").read_text(encoding="utf-8")).get("generator")
    except (OSError, ValueError, AttributeError):
        return None
    return writer if isinstance(writer, str) else None


def row_units(index: Any, bench_dir: Path, units: set[str]) -> np.ndarray:
    """The benchmark document behind every row of the index's matrix ('other:<doc_id>' when none): the one
    whose `doc_id` field names the row's document, else the one whose `_id` is that document's id (a BEIR
    corpus indexed with its ids), else the one whose path ends that document's (a folder indexed
    elsewhere; the longest such path: `a/b.txt` before `b.txt`)."""
    by_doc_id = {str(r["doc_id"]): str(r["_id"]) for r in read_jsonl(bench_dir / "corpus.jsonl") if r.get("doc_id")}
    doc_ids = [str(chunk_id).rsplit("#", 1)[0] for chunk_id in index.store.matrix().ids]
    found: dict[str, str] = {}  # doc_id -> its unit, each document looked up once
    for doc_id in doc_ids:
        if doc_id not in found:
            unit = by_doc_id.get(doc_id) or (doc_id if doc_id in units else None)
            if unit is None:  # indexed from another place: the longest path below the benchmark's folder
                parts = doc_id.split("/")
                unit = next((s for s in ("/".join(parts[i:]) for i in range(1, len(parts))) if s in units), None)
            found[doc_id] = unit if unit in units else f"other:{doc_id}"
    return np.array([found[d] for d in doc_ids], dtype=object)


def per_query(records: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """strategy -> kind ("multi", "single") -> query -> its value: the share found at k = n for n >= 2,
    the reciprocal rank of the first hit within 10 for n = 1."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for r in records:
        kinds = out.setdefault(r["strategy"], {"multi": {}, "single": {}})
        if r["n"] >= 2 and r["k"] == r["n"]:
            kinds["multi"][r["query"]] = r["success_ratio"]
        elif r["n"] == 1 and r["k"] <= 10 and r["success_ratio"] > 0:
            best = kinds["single"].get(r["query"], 0.0)
            kinds["single"][r["query"]] = max(best, 1.0 / r["k"])
        elif r["n"] == 1:
            kinds["single"].setdefault(r["query"], 0.0)
    return out


def paired_gain(values: dict[str, dict[str, dict[str, float]]], a: str, b: str) -> tuple[float, float]:
    """The score of `a` minus that of `b`, and its standard error over the queries (paired, each kind
    weighted as in `score`)."""
    gains, variances = [], []
    for kind in ("multi", "single"):
        qa, qb = values[a][kind], values[b][kind]
        if qa:
            d = np.array([qa[q] - qb[q] for q in qa])
            gains.append(float(d.mean()))
            variances.append(float(d.var(ddof=1)) / len(d) if len(d) > 1 else 0.0)
    if not gains:
        return 0.0, 0.0
    w = 1.0 / len(gains)
    return w * sum(gains), float(np.sqrt(w * w * sum(variances)))


def score(multi: float | None, single: float | None) -> float:
    kinds = [x for x in (multi, single) if x is not None]
    return float(np.mean(kinds)) if kinds else 0.0


def tune(
    index: Any, bench_dir: str | Path, strategies: Sequence[str] | None = None, save: bool = True,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Score every candidate on the benchmark with the index's embeddings; record the winner in the index
    (unless `save` is False). -> the record: strategy, score, every candidate's numbers."""
    folder = Path(bench_dir)
    if not (folder / "corpus.jsonl").exists():
        raise FileNotFoundError(f"{folder} is not a benchmark folder (no corpus.jsonl): make one with mrag bench")
    names = candidates(strategies, index.built_in_default())
    lexical_note, extractive = None, writer_of(folder) == "extractive"
    if extractive and strategies is None:
        names = [s for s in names if s == names[0] or not uses_fulltext(s, None)]
        lexical_note = EXTRACTIVE_NOTE
    elif extractive and uses_fulltext(names[0], None):  # it competes, named or not
        lexical_note = EXTRACTIVE_DEFAULT_NOTE
    bench = load_beir(folder)
    units = {d.unit for d in bench.docs}
    rows = row_units(index, folder, units)
    found = set(rows) & units
    if not found:
        raise ValueError(f"the index at {index.store.uri} holds none of the benchmark's documents: index the same "
                         "files first (mrag index DOCS --db ...); a BEIR folder's own corpus is found by its ids: "
                         f"mrag index {folder / 'corpus.jsonl'} --id-field _id --db ...")
    usable = [q for q in bench.queries if all(a.units <= found for a in q.aspects)]
    if not usable:
        raise ValueError("no benchmark query has all its documents in the index")
    skipped = len(bench.skipped) + len(bench.queries) - len(usable)
    bench.queries = usable
    records = evaluate(bench, Corpus(index, rows), names, show_progress=show_progress)
    multi = summarize(records, categories=bench.has_categories)
    single = ranking_metrics(records, only_n=1)
    scores = {name: score(multi.get(name, {}).get("doc"), single.get(name, {}).get("mrr@10")) for name in names}
    table = {
        name: {"score": scores[name],
               "multi_aspect_doc": multi.get(name, {}).get("doc"),
               "multi_aspect_category": multi.get(name, {}).get("category"),
               "single_aspect_mrr@10": single.get(name, {}).get("mrr@10"),
               "single_aspect_hit@1": single.get(name, {}).get("hit@1")}
        for name in names
    }
    best = max(names, key=lambda s: (scores[s], -names.index(s)))
    gain, error = paired_gain(per_query(records), best, names[0])
    chosen = names[0] if best != names[0] and gain <= 2 * error else best  # not clearly ahead: the default stays
    record = {
        "strategy": chosen,
        "source": "mrag tune",
        "score": scores[chosen],
        "margin": scores[chosen] - max((scores[s] for s in names if s != chosen), default=0.0),
        "default_kept": (f"the best ({best}) is ahead by {gain:.3f}, within twice its standard error "
                         f"({error:.3f})") if chosen != best else None,
        "queries": {"multi_aspect": next(iter(multi.values()), {}).get("queries", 0),
                    "single_aspect": next(iter(single.values()), {}).get("queries", 0),
                    "skipped": skipped},
        "documents_found": f"{len(found)} of {len(units)}",
        "bench": str(folder.resolve()),
        "tuned_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "candidates": table,
    } | ({"note": lexical_note} if lexical_note else {})
    if save:
        index.set_default_strategy(record)
    return record


def summary_lines(record: dict[str, Any]) -> list[str]:
    """The comparison as a markdown table, best first."""
    lines = ["| strategy | score | multi-aspect doc | single-aspect MRR@10 |", "|---|---|---|---|"]
    table = record["candidates"]
    for name in sorted(table, key=lambda s: -table[s]["score"]):
        row = table[name]
        cells = [row["score"], row["multi_aspect_doc"], row["single_aspect_mrr@10"]]
        lines.append(f"| {name} | " + " | ".join("-" if x is None else f"{x:.3f}" for x in cells) + " |")
    return lines
