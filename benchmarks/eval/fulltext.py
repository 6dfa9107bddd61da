"""The full-text space (issue 13, item 4): BM25, hybrid and the full-text voter against the vector
strategies, on Wikipedia v1 (multi-aspect n >= 2 and its n = 1 queries) and the rule-made single-aspect
sets of `single_aspect.py` (titles, snippets), with MiniLM (last layer, mean pooling, c = 32).

Every query goes to one of two halves by a hash of its id: `tune` and `held-out`. Nothing here is
fitted (the full-text weight is a rule), but a variant is picked on the `tune` half only, and the
`held-out` numbers say whether the pick holds. Writes summary.json and table.md.

`NAME=DIR` arguments add benchmarks made by `mrag bench` (BEIR folders with n >= 2 and n = 1 queries):
a second table shows them. `[rank votes]` rows use the rank votes w * 2**-rank of the standard vector
and BM25 wherever the strategy fuses z-scores (one-part queries; every part in `segment-bm25`): the rule
before the z-score fusion.

Run: python benchmarks/eval/fulltext.py DATASETS_DIR OUT_DIR [--cache DIR] [NAME=BENCH_DIR ...]
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402

from mrag.evaluate.datasets import load  # noqa: E402
from mrag.evaluate.harness import embed_corpus, evaluate, summarize  # noqa: E402
from mrag.evaluate.metrics import ranking_metrics  # noqa: E402
from mrag.retrieve import strategies  # noqa: E402
from mrag.settings import FULLTEXT  # noqa: E402

STRATEGIES = [
    "standard", "segment+standard", "mrag", "mrag-paper",  # the vector strategies (main's default: mrag)
    "bm25", "hybrid",  # what a LanceDB user has: full-text search, hybrid search (RRF)
    "segment+bm25", "segment+hybrid",  # the same per sentence, merged like mrag's parts
    "segment+spaces@standard+bm25",  # segment+standard with BM25 voting beside the standard vector
    "mrag-std@heads+standard+bm25",  # the heads' vote with BM25, whole query
    "mrag-bm25",  # the heads with BM25 voting in every part; standard and BM25 fused on one-part queries
    "segment-bm25",  # the default: per part, the standard vector's and BM25's z-scores fused
]
HALVES = ("tune", "held-out")
# another weight rule that needs no tuning, for the strategies where BM25 votes beside the heads: the
# full-text side weighs as much as all vector voters together (the product's rule: the standard vector's)
RULES = {"w=sum": lambda scales: float(scales["heads"].sum() + scales["standard"][0])}
RULE_STRATEGIES = ["mrag-bm25", "mrag-std@heads+standard+bm25"]
RANK_VOTES = ["mrag-bm25", "segment-bm25"]  # also measured with one-part queries ranked by rank votes
NAMES = (STRATEGIES + [f"{s} [{rule}]" for rule in RULES for s in RULE_STRATEGIES]
         + [f"{s} [rank votes]" for s in RANK_VOTES])


def with_rank_votes(bench: Any, embedded: Any) -> list[dict[str, Any]]:
    """RANK_VOTES' records with rank votes wherever they fuse z-scores."""
    # the one place every path takes its vote weights (`_tally` for one part, `_part_lists` for several)
    weigh = strategies._vote_weights
    strategies._vote_weights = lambda how, *rest: weigh("mrag-std" if how == "zscore" else how, *rest)  # type: ignore
    try:
        return [r | {"strategy": f"{r['strategy']} [rank votes]"} for r in evaluate(bench, embedded, RANK_VOTES)]
    finally:
        strategies._vote_weights = weigh  # type: ignore[assignment]


def half(query_id: str) -> str:
    return HALVES[hashlib.sha256(query_id.encode()).digest()[0] % 2]


def rounded(values: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in values.items()}


def score(bench: Any, records: list[dict[str, Any]], multi: bool) -> dict[str, Any]:
    """Per half and for all queries: the n >= 2 summary (multi-aspect sets) and the n = 1 ranking metrics."""
    out: dict[str, Any] = {}
    for name in (*HALVES, "all"):
        mine = [r for r in records if name == "all" or half(r["query"]) == name]
        entry: dict[str, Any] = {"single": {s: rounded(m) for s, m in
                                            ranking_metrics(mine, only_n=1 if multi else None).items()}}
        if multi:
            entry["multi"] = {s: rounded(m) for s, m in summarize(mine).items()}
        out[name] = entry
    return out


def table(results: dict[str, Any]) -> str:
    lines = ["# Full-text space: BM25, hybrid and the full-text voter (MiniLM, last layer, mean, c = 32)", "",
             "Queries split in two halves by a hash of their id; `held-out` numbers were not looked at to",
             "pick a variant. Multi-aspect: doc / category success ratio at k = n, n >= 2. Single-aspect:",
             "MRR@10 (hit@1).", ""]
    wiki = results["wikipedia-v1"]
    sets = [s for s in ("titles", "snippets", "questions") if s in results]
    head = ["strategy"]
    for name in ("all", "held-out"):
        head += [f"wiki n>=2 {name}", f"wiki n=1 {name}"] + [f"{s} {name}" for s in sets]
    lines += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for strategy in NAMES:
        cells = [strategy]
        for name in ("all", "held-out"):
            m = wiki[name]["multi"].get(strategy, {})
            cells.append(f"{m.get('doc', float('nan')):.3f} / {m.get('category', float('nan')):.3f}")
            for data in [wiki, *(results[s] for s in sets)]:
                r = data[name]["single"].get(strategy, {})
                cells.append(f"{r.get('mrr@10', float('nan')):.3f} ({r.get('hit@1', float('nan')):.3f})")
        lines.append("| " + " | ".join(cells) + " |")
    counts = {s: {h: results[s][h]["single"]["standard"]["queries"] for h in (*HALVES, "all")} for s in results}
    lines += ["", "Queries (single-aspect rows): " + json.dumps(counts),
              "Multi-aspect queries: " + json.dumps({h: wiki[h]["multi"]["standard"]["queries"]
                                                     for h in (*HALVES, "all")}), ""]
    made = [s for s in results if s not in ("wikipedia-v1", "titles", "snippets", "questions")]
    if made:
        lines += ["Benchmarks made by `mrag bench` (all queries): n >= 2 doc / category at k = n; n = 1 MRR@10 (hit@1)",
                  "", "| strategy | " + " | ".join(f"{s} n>=2 | {s} n=1" for s in made) + " |",
                  "|---" * (1 + 2 * len(made)) + "|"]
        for strategy in NAMES:
            cells = [strategy]
            for name in made:
                m, r = results[name]["all"]["multi"].get(strategy, {}), results[name]["all"]["single"].get(strategy, {})
                cells += [f"{m.get('doc', float('nan')):.3f} / {m.get('category', float('nan')):.3f}",
                          f"{r.get('mrr@10', float('nan')):.3f} ({r.get('hit@1', float('nan')):.3f})"]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "Queries: " + json.dumps({s: {"n>=2": results[s]["all"]["multi"]["standard"]["queries"],
                                                   "n=1": results[s]["all"]["single"]["standard"]["queries"]}
                                               for s in made}), ""]
    return "\n".join(lines)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("benches", nargs="*", metavar="NAME=BENCH_DIR")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "mrag" / "eval")
    args = parser.parse_args()
    data, out, cache = args.data, args.out, args.cache
    from mrag.embed.transformer import TransformerEmbedder

    embedder = TransformerEmbedder(None, layer=-1, device="cpu")
    sets: dict[str, tuple[Path, Path | None, bool]] = {
        "wikipedia-v1": (data / "wikipedia_articles_v1.json.bz2", data / "wikipedia_queries_v1.json.bz2", True)}
    made = Path(tempfile.mkdtemp(prefix="mrag-single-"))
    subprocess.run([sys.executable, str(ROOT / "benchmarks/eval/single_aspect.py"), str(data), str(made)], check=True)
    sets |= {name: (made / name, None, False) for name in ("titles", "snippets", "questions")}
    sets |= {b.split("=", 1)[0]: (Path(b.split("=", 1)[1]), None, True) for b in args.benches}
    results: dict[str, Any] = {}
    for name, (corpus, queries, multi) in sets.items():
        bench = load(corpus, queries)
        embedded = embed_corpus(bench, embedder, cache, show_progress=True)
        records = evaluate(bench, embedded, STRATEGIES, show_progress=True)
        weights = embedded.index.space_weights
        for rule, weight in RULES.items():
            ruled = weights()
            ruled[FULLTEXT] = np.array([weight(ruled)])  # the full-text voter's weight by this rule
            embedded.index.space_weights = lambda ruled=ruled: ruled  # type: ignore[method-assign]
            records += [r | {"strategy": f"{r['strategy']} [{rule}]"}
                        for r in evaluate(bench, embedded, RULE_STRATEGIES)]
            embedded.index.space_weights = weights  # type: ignore[method-assign]
        records += with_rank_votes(bench, embedded)
        results[name] = score(bench, records, multi)
        print(name, json.dumps(results[name]["all"], indent=1)[:2000], flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps({"embedder": embedder.info(), "strategies": NAMES,
                                                  "halves": "sha256(query id)[0] % 2: 0 tune, 1 held-out",
                                                  "results": results}, indent=1))
    (out / "table.md").write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
