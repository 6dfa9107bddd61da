"""Heads study (issue 13, items 3 and 5): what makes the head spaces add to query segmentation?

Loads the embeddings `mrag eval` cached (corpus rows, query and sentence vectors; anything missing is
embedded once and cached the same way) and replays the default strategy and its variants as pure numpy
on full similarity vectors, so each variant costs seconds. Every variant is scored per query; the
report splits Wikipedia v1's queries into a tuning half (even position) and a held-out half (odd).

    python benchmarks/eval/heads_study.py SET=CORPUS[,QUERIES] ... [--out DIR] [--model minilm]

Metrics as `mrag eval`: multi-aspect queries (n >= 2) success ratio and category ratio at k = n;
single-aspect queries (n = 1) hit@1 and MRR@10.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from mrag.chunk import segment_query  # noqa: E402
from mrag.evaluate.datasets import Aspect, load  # noqa: E402
from mrag.evaluate.harness import WHOLE_DOCUMENTS, embed_corpus, embed_queries, query_texts  # noqa: E402
from mrag.evaluate.run import default_cache  # noqa: E402
from mrag.vote import consensus  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from heads_report import diagnose, table  # noqa: E402

DEPTH = 32  # per-space list depth c (the default)
# MiniLM layer 5, Wikipedia v1 tuning half (even positions, n >= 2): share of sentence parts whose first
# choice is relevant, per head and (last) for the standard vector; used as learned vote weights
TUNED_PRECISION = np.array([0.119, 0.305, 0.21, 0.471, 0.211, 0.447, 0.102, 0.276, 0.105, 0.116, 0.155, 0.284, 0.677])


@dataclass
class Query:
    id: str
    n: int
    aspects: list[Aspect]
    std: np.ndarray  # (N,) whole query: standard cosine of every row
    heads: np.ndarray  # (H, N) head cosines
    parts_std: np.ndarray  # (P, N) the same per sentence part (P = 1: the query has one part)
    parts_heads: np.ndarray  # (P, H, N)
    half: str  # "tune" or "held"
    gram: np.ndarray  # (P, P) cosines of the parts' standard vectors; (H, P, P) below for the heads
    head_gram: np.ndarray


@dataclass
class Data:
    name: str
    scales: np.ndarray  # (H,) head scales
    std_scale: float
    units: np.ndarray  # (N,) unit per row
    category_of: dict[str, str]
    queries: list[Query]


def load_set(name: str, corpus: str, queries: str | None, embedder, cache: Path) -> Data:
    bench = load(corpus, queries)
    emb = embed_corpus(bench, embedder, cache, WHOLE_DOCUMENTS)
    parts = {q.text: segment_query(q.text) for q in bench.queries}
    vec = embed_queries(emb, query_texts(bench))  # the texts `mrag eval` embeds (and caches)
    matrix = emb.index.store.matrix()
    scales = emb.index.space_weights()
    out = []
    for i, q in enumerate(bench.queries):
        ps = parts[q.text] if len(parts[q.text]) > 1 else [q.text]
        whole = part_sims(matrix.standard, matrix.heads, vec[q.text].standard, vec[q.text].heads)
        pv = np.stack([vec[p].standard for p in ps])
        phv = np.stack([vec[p].heads for p in ps])  # (P, H, d)
        sims = [part_sims(matrix.standard, matrix.heads, a, b) for a, b in zip(pv, phv)]
        out.append(Query(q.id, q.n, q.aspects, whole[0], whole[1], np.stack([x for x, _ in sims]),
                         np.stack([y for _, y in sims]), "tune" if i % 2 == 0 else "held",
                         pv @ pv.T, np.einsum("phd,qhd->hpq", phv, phv)))
    return Data(name, scales["heads"], float(scales["standard"][0]),
                emb.row_units, bench.unit_category(), out)


# ---------------------------------------------------------------- per-part rankers (pure numpy)

def part_sims(std_rows: np.ndarray, head_rows: np.ndarray, std: np.ndarray, heads: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """(N,) standard cosine and (H, N) head cosines of one part."""
    return std_rows @ std, np.einsum("hnd,hd->hn", head_rows, heads)


def top(scores: np.ndarray, c: int) -> np.ndarray:
    """Indices of the c best, best first, ties to the smaller index."""
    idx = np.argpartition(-scores, min(c, len(scores) - 1))[: c + 1] if c < len(scores) else np.arange(len(scores))
    return idx[np.lexsort((idx, -scores[idx]))][:c]


def vote_rank(lists: list[np.ndarray], weights: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The rank vote w_s * 2**-rank over lists; ties: better best rank, then smaller id."""
    total = np.zeros(n)
    best = np.full(n, 10**9)
    for ranked, w in zip(lists, weights):
        r = np.arange(len(ranked))
        np.add.at(total, ranked, w * 2.0 ** -r)
        np.minimum.at(best, ranked, r)
    cand = np.flatnonzero(total > 0)
    order = cand[np.lexsort((cand, best[cand], -total[cand]))]
    return order, total[order]


def sharpness(sims: np.ndarray, c: int) -> np.ndarray:
    """How far each space's best stands out: (top1 - mean of its top c) / std over all rows.  (S, N) -> (S,)"""
    part = -np.sort(-np.partition(sims, -c, axis=1)[:, -c:], axis=1)
    return (part[:, 0] - part.mean(axis=1)) / np.maximum(sims.std(axis=1), 1e-9)


def zscore(sims: np.ndarray) -> np.ndarray:
    return (sims - sims.mean(axis=-1, keepdims=True)) / np.maximum(sims.std(axis=-1, keepdims=True), 1e-9)


Ranker = Callable[[Data, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]  # rows, their scores


def ranker(kind: str, std_mult: float = 1.0, c: int = DEPTH, heads_keep: int = 0, sharp: float = 0.0,
           lam: float = 1.0, learned: float = 0.0) -> Ranker:
    """A part's ranking and its top score.  kinds: std, vote (heads + standard), heads (mrag-paper),
    dense (z-scored standard + lam * mean of z-scored heads), headsum (standard + lam * sum_h s_h cos_h)."""

    def run(data: Data, s: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if kind == "std":
            order = top(s, 64)
            return order, s[order]
        hw = data.scales.copy()
        std_w = std_mult * data.std_scale
        if learned:  # weights from the tuning half's per-space precision (MiniLM only: 12 heads)
            hw, std_w = TUNED_PRECISION[:-1] ** learned, std_mult * TUNED_PRECISION[-1] ** learned
        if heads_keep and kind != "rerank":
            hw[np.argsort(-hw)[heads_keep:]] = 0.0
        if sharp:
            g = sharpness(h, c) ** sharp
            hw = hw * g / g.mean()
        if kind == "rerank":  # the vote reorders the standard vector's first `heads_keep` rows only
            shortlist = top(s, 64)
            lists = [top(h[i], c) for i in range(len(hw))] + [top(s, c)]
            total = np.zeros(len(s))
            for ranked, w in zip(lists, [*hw, std_w]):
                np.add.at(total, ranked, w * 2.0 ** -np.arange(len(ranked)))
            head_m = shortlist[:heads_keep]
            head_m = head_m[np.lexsort((np.arange(len(head_m)), -total[head_m]))]
            order = np.concatenate([head_m, shortlist[heads_keep:]])
            return order, total[order]
        if kind in ("vote", "heads"):
            lists = [top(h[i], c) for i in range(len(hw)) if hw[i] > 0]
            ws = [w for w in hw if w > 0]
            if kind == "vote":
                lists.append(top(s, c))
                ws.append(std_w)
            return vote_rank(lists, np.array(ws), len(s))
        if kind == "dense":
            score = std_mult * zscore(s) + lam * (hw[:, None] * zscore(h)).sum(0) / hw.sum()
        elif kind == "maxsim":  # MaxSim over the row's head vectors: its best (z-scored) head, plus the standard
            score = std_mult * zscore(s) + lam * zscore(h).max(axis=0)
        else:  # headsum
            score = std_mult * s + lam * (hw[:, None] * h).sum(0) / hw.sum()
        order = top(score, 64)
        return order, score[order]

    return run


# ---------------------------------------------------------------- strategies over parts

@dataclass
class Strategy:
    name: str
    part: Ranker  # ranks a part of a query of several parts
    one: Ranker  # ranks a query of one part
    merge: str = "consensus"  # consensus | consensus+whole
    segment: str = "sentences"  # sentences | adaptive:TAU | whole


def groups(gram: np.ndarray, tau: float) -> list[list[int]]:
    """Consecutive sentences whose standard vectors agree (cosine >= tau) form one part."""
    out = [[0]]
    for i in range(1, len(gram)):
        if float(gram[i, i - 1]) >= tau:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def iterated(lists: list[np.ndarray], scores: list[np.ndarray], k: int) -> np.ndarray:
    """Rounds of consensus: each part proposes its best row not chosen yet; rows proposed by more parts
    first, then by the best proposing score; repeat until k rows."""
    chosen: list[int] = []
    taken: set[int] = set()
    while len(chosen) < k:
        proposals: dict[int, list[float]] = {}
        for ranked, sc in zip(lists, scores):
            pos = next((i for i, r in enumerate(ranked) if int(r) not in taken), None)
            if pos is not None:
                proposals.setdefault(int(ranked[pos]), []).append(float(sc[pos]))
        if not proposals:
            break
        for row in sorted(proposals, key=lambda r: (-len(proposals[r]), -max(proposals[r]), r)):
            chosen.append(row)
            taken.add(row)
    return np.array(chosen[:k], dtype=np.int64)


def run_query(data: Data, q: Query, st: Strategy, k: int) -> list[str]:
    ps, ph = q.parts_std, q.parts_heads
    if st.segment == "whole":
        ps, ph = ps[:0], ph[:0]
    elif st.segment.startswith("adaptive:") and len(ps) > 1:
        g = groups(q.gram, float(st.segment.split(":")[1]))
        # a group's vector: the normalised sum of its sentences' (study); cosines are linear in it
        ps = np.stack([ps[i].sum(0) / np.sqrt(q.gram[np.ix_(i, i)].sum()) for i in g])
        ph = np.stack([ph[i].sum(0) / np.sqrt(q.head_gram[:, i][:, :, i].sum(axis=(1, 2)))[:, None] for i in g])
    if len(ps) <= 1:
        rows = st.one(data, q.std, q.heads)[0]
    else:
        ranked = [st.part(data, ps[i], ph[i]) for i in range(len(ps))]
        lists, tops = [r for r, _ in ranked], np.array([sc[0] for _, sc in ranked])
        if st.merge == "consensus+whole":
            lists.append(st.one(data, q.std, q.heads)[0])
            tops = np.append(tops, -np.inf)
        if st.merge == "oracle":  # the parts' relevant first choices first: what ordering could reach
            relevant = set().union(*(a.units for a in q.aspects))
            good = [r for r in lists if str(data.units[r[0]]) in relevant]
            rows = consensus(good + [r for r in lists if str(data.units[r[0]]) not in relevant],
                             np.array([1.0] * len(good) + [0.0] * (len(lists) - len(good))), 64)
        elif st.merge == "iterated":  # consensus again over each part's best row not chosen yet, and so on
            rows = iterated(lists, [sc for _, sc in ranked], 64)
        elif st.merge == "parts-vote":  # every part votes 2**-rank for its list (not only its first)
            rows = vote_rank(lists, np.ones(len(lists)), len(data.units))[0][:64]
        elif st.merge == "margin":  # ties in count broken by the first choice's lead over the second
            rows = consensus(lists, np.array([sc[0] - sc[1] for _, sc in ranked]), 64)
        elif st.merge == "relative":  # ties in count broken by the first choice's score over its part's 10th
            rows = consensus(lists, np.array([sc[0] / max(sc[9], 1e-9) for _, sc in ranked]), 64)
        else:
            rows = consensus(lists, tops, 64)
    seen: dict[str, None] = {}
    for u in data.units[rows]:
        seen.setdefault(str(u), None)
        if len(seen) == k:
            break
    return list(seen)


def score(data: Data, q: Query, units: list[str]) -> dict[str, float]:
    if q.n == 1 or not data.category_of.get(units[0], ""):  # one aspect, or a BEIR set (any relevant unit)
        first = next((i + 1 for i, u in enumerate(units[:10]) if any(u in a.units for a in q.aspects)), None)
        return {"hit@1": float(first == 1), "mrr@10": 1.0 / first if first else 0.0}
    top_n = units[: q.n]
    cats = {data.category_of.get(u, "") for u in top_n}
    return {"doc": float(np.mean([bool(a.units & set(top_n)) for a in q.aspects])),
            "category": float(np.mean([bool(a.categories & cats) for a in q.aspects]))}


def evaluate(data: Data, st: Strategy) -> dict[str, dict[str, float]]:
    """Mean metrics per half ("tune", "held", "all") and kind (multi: doc, category; single: hit@1, mrr@10)."""
    per: dict[str, dict[str, list[float]]] = {}
    for q in data.queries:
        m = score(data, q, run_query(data, q, st, max(q.n, 10)))
        for half in (q.half, "all"):
            for key, v in m.items():
                per.setdefault(half, {}).setdefault(key, []).append(v)
    return {h: {k: float(np.mean(v)) for k, v in m.items()} for h, m in per.items()}


def paired(data: Data, a: Strategy, b: Strategy) -> dict[str, float]:
    """a minus b over the multi-aspect queries: mean difference and its standard error (doc, category)."""
    diffs: dict[str, list[float]] = {"doc": [], "category": []}
    for q in data.queries:
        if q.n >= 2:
            ma, mb = (score(data, q, run_query(data, q, st, q.n)) for st in (a, b))
            for key in diffs:
                diffs[key].append(ma[key] - mb[key])
    out = {}
    for key, d in diffs.items():
        out[key] = float(np.mean(d))
        out[f"{key} se"] = float(np.std(d, ddof=1) / np.sqrt(len(d)))
    return out


def strategies() -> list[Strategy]:
    std, vote = ranker("std"), ranker("vote")
    out = [
        Strategy("standard", std, std, segment="whole"),
        Strategy("segment+standard", std, std),
        Strategy("mrag (default)", vote, std),
        Strategy("segment+mrag-paper", ranker("heads"), std),
        Strategy("mrag, one part mrag-std", vote, vote),
    ]
    out += [Strategy(f"mrag, standard x{m}", ranker("vote", std_mult=m), std) for m in (0.5, 2, 4, 8)]
    out += [Strategy(f"mrag, c={c}", ranker("vote", c=c), std) for c in (4, 8, 16, 64)]
    out += [Strategy(f"mrag, top {h} heads by scale", ranker("vote", heads_keep=h), std) for h in (3, 6)]
    out += [Strategy(f"mrag, sharpness^{p} head weights", ranker("vote", sharp=p), std) for p in (1, 2)]
    out += [Strategy(f"dense z, heads x{lam}", ranker("dense", lam=lam), std) for lam in (0.5, 1, 2)]
    out += [Strategy(f"heads rerank standard's top {m}", ranker("rerank", heads_keep=m), std) for m in (2, 3, 5)]
    out += [Strategy(f"mrag, learned head weights (precision^{p})", ranker("vote", learned=p), std) for p in (1, 2)]
    out += [Strategy(f"maxsim z, heads x{lam}", ranker("maxsim", lam=lam), std) for lam in (0.5, 1)]
    out += [Strategy(f"headsum, heads x{lam}", ranker("headsum", lam=lam), std) for lam in (0.5, 1, 2)]
    out += [Strategy("mrag + whole-query vote", vote, std, merge="consensus+whole"),
            Strategy("segment+standard + whole-query vote", std, std, merge="consensus+whole")]
    out += [Strategy(f"mrag, adaptive {t}", vote, std, segment=f"adaptive:{t}") for t in (0.5, 0.6, 0.7)]
    out += [Strategy(f"{label}, merge {m}", part, std, merge=m)
            for label, part in (("mrag", vote), ("segment+standard", std))
            for m in ("oracle", "parts-vote", "margin", "relative", "iterated")]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sets", nargs="+", help="NAME=CORPUS[,QUERIES]")
    ap.add_argument("--model", default=None)
    ap.add_argument("--layer", type=int, default=-1)
    ap.add_argument("--only", default="", help="comma-separated substrings of strategy names")
    ap.add_argument("--out", default="")
    ap.add_argument("--data-cache", default="/tmp", help="where the similarity arrays of each set are kept")
    args = ap.parse_args()
    embedder = None
    chosen = [s for s in strategies() if not args.only or any(x in s.name for x in args.only.split(","))]
    results: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for spec in args.sets:
        name, paths = spec.split("=", 1)
        corpus, _, queries = paths.partition(",")
        saved = Path(args.data_cache) / f"heads-study-{name}-{Path(args.model or 'minilm').name}-{args.layer}.pkl"
        if saved.exists():
            data = pickle.loads(saved.read_bytes())
        else:
            if embedder is None:
                from mrag.embed.transformer import TransformerEmbedder

                embedder = TransformerEmbedder(args.model, layer=args.layer)
            data = load_set(name, corpus, queries or None, embedder, default_cache())
            saved.write_bytes(pickle.dumps(data))
        rankers = {"standard": ranker("std"), "vote": ranker("vote"), "vote sharp": ranker("vote", sharp=1)}
        results[name] = {"diagnosis": {"all": diagnose(data, rankers)}}
        by_name = {st.name: st for st in strategies()}
        if any(q.n >= 2 for q in data.queries):
            results[name]["diagnosis"]["heads' contribution"] = paired(
                data, by_name["mrag (default)"], by_name["segment+standard"])
        print(name, json.dumps({k: round(v, 3) for k, v in results[name]["diagnosis"]["all"].items()}))
        for st in chosen:
            results[name][st.name] = evaluate(data, st)
            r = results[name][st.name]
            cells = [f"{h}: " + " ".join(f"{k}={v:.3f}" for k, v in r[h].items())
                     for h in ("tune", "held", "all") if h in r]
            print(f"{name:10s} {st.name:40s} " + " | ".join(cells), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
        Path(args.out).with_suffix(".md").write_text(table(results, f"heads study, {args.model or 'minilm'}"))


if __name__ == "__main__":
    main()
