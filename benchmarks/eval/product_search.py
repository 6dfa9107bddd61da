"""The product's own search (`Index.search`, exact), as a user runs it, on the evaluation's sets: Wikipedia v1's
multi-aspect queries (doc / category success ratio at k = n, n >= 2) and the single-aspect sets of
`single_aspect.py` (MRR@10 at k = 10), by the halves of `fulltext.py`. The harness asks for 64-70 results to
score k up to n + 10; a user asks for fewer, and the default's z-score fusion standardised each list over
max(k, c) places, 32 for these searches: this runs both rules (`strategies.ZSCORE_PLACES` 32: before, 64: now)
in one process.

Run: python benchmarks/eval/product_search.py DATASETS_DIR OUT_DIR [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks" / "eval"))

from fulltext import HALVES, half  # noqa: E402

from mrag.evaluate.datasets import Benchmark, load  # noqa: E402
from mrag.evaluate.harness import embed_corpus  # noqa: E402
from mrag.evaluate.metrics import query_metrics  # noqa: E402
from mrag.retrieve import strategies  # noqa: E402

STRATEGY = "segment-bm25"  # the default
RULES = {"max(k, c) = 32 places (before)": 32, "64 places (now)": 64}


def multi(bench: Benchmark, index: object) -> dict[str, list[float]]:
    """Per half: mean doc and category success ratio at k = n over the queries with n >= 2."""
    category, out = bench.unit_category(), {}
    for name in HALVES:
        records = []
        for q in bench.queries:
            if q.n >= 2 and half(q.id) == name:
                hits = index.search(q.text, k=q.n, strategy=STRATEGY, exact=True)  # type: ignore[attr-defined]
                units = list(dict.fromkeys(unit(h.doc_id) for h in hits))
                records.append(query_metrics(units, q.aspects, category, k_max=q.n)[-1])
        out[name] = [round(sum(r[m] for r in records) / len(records), 4) for m in ("success_ratio", "category_ratio")]
    return out


def single(bench: Benchmark, index: object) -> dict[str, float]:
    """Per half: MRR@10 of k = 10 searches."""
    out = {}
    for name in HALVES:
        ranks = []
        for q in bench.queries:
            if half(q.id) == name:
                want = set().union(*(a.units for a in q.aspects))
                hits = index.search(q.text, k=10, strategy=STRATEGY, exact=True)  # type: ignore[attr-defined]
                ranks.append(next((1 / (i + 1) for i, h in enumerate(hits) if unit(h.doc_id) in want), 0.0))
        out[name] = round(sum(ranks) / len(ranks), 4)
    return out


UNITS: dict[str, str] = {}


def unit(doc_id: str) -> str:
    return UNITS.get(doc_id, doc_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "mrag" / "eval")
    args = parser.parse_args()
    from mrag.embed.transformer import TransformerEmbedder

    embedder = TransformerEmbedder(None, layer=-1, device="cpu")
    made = Path(tempfile.mkdtemp(prefix="mrag-single-"))
    subprocess.run([sys.executable, str(ROOT / "benchmarks/eval/single_aspect.py"), str(args.data), str(made)],
                   check=True)
    sets = {"wikipedia-v1 n>=2": (args.data / "wikipedia_articles_v1.json.bz2",
                                  args.data / "wikipedia_queries_v1.json.bz2")}
    sets |= {name: (made / name, None) for name in ("titles", "snippets", "questions")}
    results: dict[str, dict[str, object]] = {rule: {} for rule in RULES}
    for name, (corpus, queries) in sets.items():
        bench = load(corpus, queries)
        UNITS.update({d.id: d.unit for d in bench.docs})
        index = embed_corpus(bench, embedder, args.cache).index
        for rule, places in RULES.items():
            strategies.ZSCORE_PLACES = places
            results[rule][name] = multi(bench, index) if queries else single(bench, index)
            print(rule, name, results[rule][name], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps({"strategy": STRATEGY, "embedder": embedder.info(),
                                                       "results": results}, indent=1))
    names = list(sets)
    lines = [f"# The default ({STRATEGY}) as `Index.search` runs it: z-scores over 32 or 64 places",
             "", "MiniLM, last layer, mean pooling, c = 32, exact search. Wikipedia v1: doc / category at k = n",
             "(n >= 2); the others: MRR@10 of k = 10 searches. Cells: tune / held-out (halves of `fulltext.py`).",
             "", "| rule | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for rule in RULES:
        cells = []
        for name in names:
            value = results[rule][name]
            cells.append(" / ".join(f"{v[0]:.3f}, {v[1]:.3f}" if isinstance(v, list) else f"{v:.3f}"
                                    for v in value.values()))  # type: ignore[union-attr]
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
