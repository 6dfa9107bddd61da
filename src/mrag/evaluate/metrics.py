"""Multi-aspect retrieval metrics, per query and per k (k is always the number of units fetched).

For a query with aspects R (n = |R|) and fetched units F_k (the first k):
    success           = every aspect found in F_k                (1 or 0)
    success ratio     = |aspects found| / n
    category success  = every aspect's category among F_k's categories
    category ratio    = share of R's categories found among F_k's categories (aspects of one category count once)
    weighted ratio    = (2 * success ratio + category ratio) / 3
    recall@k          = success ratio;  nDCG@k with the aspects' grades as gains (as trec_eval, BEIR's)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from mrag.evaluate.datasets import Aspect

K_MAX = 32


def query_metrics(
    fetched: Sequence[str], aspects: Sequence[Aspect], category_of: dict[str, str], k_max: int = K_MAX
) -> list[dict[str, float | int]]:
    """One record per k = 1..k_max, each carrying its k."""
    records = []
    for k in range(1, k_max + 1):
        top = fetched[:k]
        units = set(top)
        categories = {category_of.get(u, "") for u in top}
        found = [bool(a.units & units) for a in aspects]
        cat_found = [bool(wanted & categories) for wanted in dict.fromkeys(a.categories for a in aspects)]
        ratio = sum(found) / len(aspects)
        cat_ratio = sum(cat_found) / len(cat_found)
        records.append(
            {
                "k": k,
                "success": int(all(found)),
                "success_ratio": ratio,
                "category_success": int(all(cat_found)),
                "category_ratio": cat_ratio,
                "weighted_ratio": (2 * ratio + cat_ratio) / 3,
                "ndcg": ndcg(top, aspects, k),
            }
        )
    return records


def ndcg(fetched: Sequence[str], aspects: Sequence[Aspect], k: int | None = None) -> float:
    """nDCG@k of a ranked unit list (k: default its length); each aspect counts once (its first hit), its
    grade the gain (trec_eval's, as BEIR reports). A list shorter than k is cut against the ideal of k places:
    a strategy that returns fewer units never scores as if the missing places held the aspects left."""
    k = len(fetched) if k is None else k
    dcg, credited = 0.0, set()
    for rank, unit in enumerate(fetched[:k]):
        for j, a in enumerate(aspects):
            if j not in credited and unit in a.units:
                credited.add(j)
                dcg += a.grade / math.log2(rank + 2)
                break
    ideal = sorted((a.grade for a in aspects), reverse=True)[:k]
    idcg = sum(g / math.log2(r + 2) for r, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def dedupe_units(chunk_units: Sequence[str], k: int) -> list[str]:
    """Chunk-level ranking -> unit-level ranking (first occurrence wins), the first k."""
    seen: dict[str, None] = {}
    for u in chunk_units:
        if u not in seen:
            seen[u] = None
            if len(seen) == k:
                break
    return list(seen)


def ranking_metrics(records: Sequence[dict], only_n: int | None = None) -> dict[str, dict[str, float]]:
    """Per strategy, from the per-k records of each query: hit@1 and hit@5 (a relevant unit among the
    first 1 / 5), MRR@10 (1 / rank of the first relevant unit, 0 past 10), nDCG@10 and recall@K_MAX
    (the share of relevant units among the first K_MAX); `only_n`: queries with that many aspects only
    (1: the single-aspect rows)."""
    per_query: dict[tuple[str, str], dict[int, dict]] = {}
    for r in records:
        if only_n is None or r["n"] == only_n:
            per_query.setdefault((r["strategy"], r["query"]), {})[r["k"]] = r
    out: dict[str, dict[str, list[float]]] = {}
    for (strategy, _), by_k in per_query.items():
        first = next((k for k in sorted(by_k) if by_k[k]["success_ratio"] > 0), None)
        deepest = by_k[max(by_k)]
        m = out.setdefault(strategy, {"hit@1": [], "hit@5": [], "mrr@10": [], "ndcg@10": [], f"recall@{K_MAX}": []})
        m["hit@1"].append(float(first == 1))
        m["hit@5"].append(float(first is not None and first <= 5))
        m["mrr@10"].append(1.0 / first if first is not None and first <= 10 else 0.0)
        m["ndcg@10"].append(float(by_k.get(10, deepest)["ndcg"]))
        m[f"recall@{K_MAX}"].append(float(by_k.get(K_MAX, deepest)["success_ratio"]))  # records go past K_MAX
    return {name: {k: sum(v) / len(v) for k, v in m.items()} | {"queries": len(m["hit@1"])} for name, m in out.items()}
