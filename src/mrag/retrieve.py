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
from mrag.vote import Fused, Vote, fuse, interleave, rank_weights

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


def strategy_names() -> list[str]:
    return [*BASE_STRATEGIES, *(SEGMENT + s for s in BASE_STRATEGIES)]


def check_strategy(name: str) -> str:
    base = name.removeprefix(SEGMENT)
    if base not in BASE_STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(strategy_names())}")
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


def run(
    strategy: str,
    standard: np.ndarray,
    heads: np.ndarray,
    queries: list[QueryVectors],
    k: int,
    c: int,
    head_scales: np.ndarray,
    split_scales: np.ndarray,
) -> Result:
    """Run a strategy for one query given as one or more segments (queries[0] is the whole query).

    standard (N, D) and heads (N, H*d) hold unit vectors (heads unit per head).
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    if c <= 0:
        raise ValueError(f"the per-space depth c must be positive, got {c}")
    check_strategy(strategy)
    base = strategy.removeprefix(SEGMENT)
    segments = queries[1:] if strategy.startswith(SEGMENT) and len(queries) > 2 else queries[:1]
    per_segment = [
        _run_one(base, standard, heads, q, max(k, c), c, head_scales, split_scales) for q in segments
    ]
    if len(per_segment) == 1:
        only = per_segment[0]
        return Result(only.rows[:k], only.scores[:k], only.votes[:k])
    rows = interleave([r.rows for r in per_segment], k)
    # a row's score and votes come from the segment that ranked it best
    scores, votes = [], []
    for row in rows:
        best = min(
            (int(np.nonzero(r.rows == row)[0][0]), s) for s, r in enumerate(per_segment) if row in r.rows
        )
        seg = per_segment[best[1]]
        pos = int(np.nonzero(seg.rows == row)[0][0])
        scores.append(seg.scores[pos])
        votes.append([v | {"segment": best[1]} for v in seg.votes[pos]])
    return Result(rows, np.asarray(scores), votes)


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
    names, ranking, sims, weights = spaces_for(strategy, standard, heads, query, c, head_scales, split_scales)
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
