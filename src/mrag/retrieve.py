"""Retrieval strategies: score every space, keep each space's top c, then vote or fuse.

Spaces of one multi-head index: `standard` (the sentence embedding), `head:i` (head i of the hooked
layer) and `split:i` (slice i of the standard embedding, the paper's control). A strategy picks
spaces and a vote (`mrag.vote`). The `segment+` modifier runs a strategy once per query segment
(two sentences each) and interleaves the per-segment lists round-robin.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mrag.chunk import split_sentences
from mrag.vote import Fused, Vote, fuse, interleave, rank_weights, rrf_weights

BASE_STRATEGIES = (
    "standard",
    "mrag",
    "mrag-paper",
    "mrag-decay",
    "mrag-distance",
    "split",
    "split-weighted",
)
SEGMENT = "segment+"
DEFAULT_STRATEGY = "mrag"
DEFAULT_C = 32


FUSION = {"fusion": "standard", "mrag-fusion": "mrag"}  # RAG-Fusion and MRAG-Fusion over sub-queries


def strategy_names() -> list[str]:
    return [*BASE_STRATEGIES, *(SEGMENT + s for s in BASE_STRATEGIES), *FUSION]


def check_strategy(name: str) -> str:
    parse_strategy(name)
    return name


@dataclass
class QueryVectors:
    """One query's unit vectors.  standard (D,), heads (H, d)."""

    standard: np.ndarray
    heads: np.ndarray


@dataclass
class Result:
    """Row indices best first, scores, and per row the votes (space name, rank, weight, segment)."""

    rows: np.ndarray
    scores: np.ndarray
    votes: list[list[dict[str, object]]] = field(default_factory=list)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def head_similarities(heads: np.ndarray, query_heads: np.ndarray) -> np.ndarray:
    """Cosine per head for every row: one block-diagonal matmul.  (N, H*d), (H, d) -> (N, H)."""
    h, d = query_heads.shape
    block = np.zeros((h * d, h), dtype=heads.dtype)  # (H*d, H): column i holds query head i
    for i in range(h):
        block[i * d : (i + 1) * d, i] = query_heads[i]
    return heads @ block


def slice_similarities(standard: np.ndarray, query: np.ndarray, n_slices: int) -> np.ndarray:
    """Cosine per slice of the standard embedding.  (N, D), (D,) -> (N, S)."""
    n, dim = standard.shape
    width = dim // n_slices
    rows = unit(standard[:, : n_slices * width].reshape(n, n_slices, width))
    q = unit(query[: n_slices * width].reshape(n_slices, width))
    return np.einsum("nsw,sw->ns", rows, q)


def top_c(similarities: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Each column's c best rows, best first, ties to the smaller row.  (N, S) -> (S, c) ids, sims."""
    n, s = similarities.shape
    c_eff = min(c, n)
    ranking = np.full((s, c), -1, dtype=np.int64)
    sims = np.full((s, c), -np.inf)
    if c_eff == 0:
        return ranking, sims
    for j in range(s):
        col = similarities[:, j]
        cand = np.argpartition(-col, c_eff - 1)[:c_eff] if c_eff < n else np.arange(n)
        order = cand[np.lexsort((cand, -col[cand]))]
        ranking[j, :c_eff] = order
        sims[j, :c_eff] = col[order]
    return ranking, sims


def spaces_for(
    strategy: str,
    standard: np.ndarray,
    heads: np.ndarray,
    query: QueryVectors,
    c: int,
    head_scales: np.ndarray,
    split_scales: np.ndarray,
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Names, rankings (S, c), similarities (S, c) and weights (S,) of the spaces a strategy votes with."""
    if strategy == "standard":
        ranking, sims = top_c((standard @ query.standard)[:, None], c)
        return ["standard"], ranking, sims, np.ones(1)
    if strategy.startswith("split"):
        n_slices = len(split_scales)
        ranking, sims = top_c(slice_similarities(standard, query.standard, n_slices), c)
        weights = split_scales if strategy == "split-weighted" else np.ones(n_slices)
        return [f"split:{i}" for i in range(n_slices)], ranking, sims, weights
    ranking, sims = top_c(head_similarities(heads, query.heads), c)
    names = [f"head:{i}" for i in range(len(head_scales))]
    if strategy in ("mrag-decay", "mrag-distance"):
        return names, ranking, sims, np.ones(len(names))
    return names, ranking, sims, head_scales


def parse_strategy(name: str) -> tuple[str, str | None]:
    """'segment+mrag' -> ('mrag', 'segment'); 'mrag-fusion' -> ('mrag', 'fusion'); 'split' -> ('split', None)."""
    if name in FUSION:
        return FUSION[name], "fusion"
    if name.startswith(SEGMENT):
        base = name.removeprefix(SEGMENT)
        if base in BASE_STRATEGIES:
            return base, "segment"
    if name in BASE_STRATEGIES:
        return name, None
    raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(strategy_names())}")


def run(
    strategy: str,
    standard: np.ndarray,
    heads: np.ndarray,
    query: QueryVectors,
    k: int,
    c: int,
    head_scales: np.ndarray,
    split_scales: np.ndarray,
    parts: list[QueryVectors] | None = None,
) -> Result:
    """Run a strategy for one query. standard (N, D) and heads (N, H*d) hold unit vectors.

    `parts` are the query's segments (for `segment+...`) or its sub-queries (for the fusion
    strategies): the base strategy runs once per part, and the lists are interleaved round-robin
    (segments) or merged by reciprocal rank fusion (sub-queries). One part or none: plain search.
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    if c <= 0:
        raise ValueError(f"the per-space depth c must be positive, got {c}")
    base, expand = parse_strategy(strategy)
    if expand == "fusion" and not parts:
        raise ValueError(f"strategy {strategy!r} needs sub-queries")
    if expand is None or not parts or (expand == "segment" and len(parts) < 2):
        return _run_one(base, standard, heads, query, k, c, head_scales, split_scales)
    depth = max(k, c)
    lists = [_run_one(base, standard, heads, q, depth, c, head_scales, split_scales) for q in parts]
    if expand == "segment":
        rows = interleave([r.rows for r in lists], k)
        scores = np.array([_best_in(lists, row)[2] for row in rows])
    else:
        ranking = np.full((len(lists), depth), -1, dtype=np.int64)
        for i, r in enumerate(lists):
            ranking[i, : len(r.rows)] = r.rows
        fused = fuse(ranking, rrf_weights(ranking), k)
        rows, scores = fused.ids, fused.scores
    votes = []
    for row in rows:
        part, pos, _ = _best_in(lists, row)
        votes.append([v | {"part": part} for v in lists[part].votes[pos]])
    return Result(np.asarray(rows, dtype=np.int64), np.asarray(scores, dtype=np.float64), votes)


def _best_in(lists: list[Result], row: int) -> tuple[int, int, float]:
    """(part, position, score) of the part that ranked `row` best (earliest part on ties)."""
    best = (len(lists), 0, 0.0)
    best_pos = np.iinfo(np.int64).max
    for i, r in enumerate(lists):
        hits = np.nonzero(r.rows == row)[0]
        if len(hits) and hits[0] < best_pos:
            best_pos, best = int(hits[0]), (i, int(hits[0]), float(r.scores[hits[0]]))
    return best


def _run_one(
    strategy: str,
    standard: np.ndarray,
    heads: np.ndarray,
    query: QueryVectors,
    k: int,
    c: int,
    head_scales: np.ndarray,
    split_scales: np.ndarray,
) -> Result:
    depth = max(k, c) if strategy == "standard" else c
    names, ranking, sims, weights = spaces_for(strategy, standard, heads, query, depth, head_scales, split_scales)
    if strategy == "standard":
        valid = ranking[0] >= 0
        rows, scores = ranking[0][valid][:k], sims[0][valid][:k]
        votes = [[{"space": "standard", "rank": i, "weight": float(s)}] for i, s in enumerate(scores)]
        return Result(rows, scores, votes)
    if strategy == "mrag-distance":
        w = np.where(ranking >= 0, 1.0 / np.maximum(1.0 - sims, 1e-6), 0.0)
    else:
        w = rank_weights(ranking, weights)
    fused: Fused = fuse(ranking, w, k)
    return Result(fused.ids, fused.scores, [_named(v, names) for v in fused.votes])


def _named(votes: list[Vote], names: list[str]) -> list[dict[str, object]]:
    return [{"space": names[v.space], "rank": v.rank, "weight": v.weight} for v in votes]


def segment_query(text: str, sentences_per_segment: int = 2) -> list[str]:
    """The segments of a long query: consecutive groups of sentences. One segment for short queries."""
    sentences = split_sentences(text)
    return [
        " ".join(sentences[i : i + sentences_per_segment])
        for i in range(0, len(sentences), sentences_per_segment)
    ] or [text]
