"""Pure voting and fusion over ranked lists, one list per embedding space.

Every retrieval strategy ends here. A *ranking* is an int array of shape (S, c): row s holds the
item ids that space s returned, best first, padded with -1 when a space has fewer than c items.
Nothing in this module knows where a space comes from (a head, the standard embedding, a slice of
it, another model, a query segment): it only sees ids, ranks and weights.

Tie-breaks are deterministic everywhere: higher score first, then the better (lower) best rank,
then the smaller id.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TIE_BREAK = 1e-9  # `zscore_weights`: far below any vote, far above float64 rounding of a sum of votes
RRF_K = 60  # Cormack, Clarke & Buettcher (SIGIR 2009), "Reciprocal rank fusion outperforms ..."


@dataclass(frozen=True)
class Vote:
    """One space's vote for one item: the space, the 0-based rank it gave, and the weight added."""

    space: int
    rank: int
    weight: float


@dataclass(frozen=True)
class Fused:
    """The fused ranking: item ids best first, their scores, and every vote behind each item."""

    ids: np.ndarray  # (k,) int
    scores: np.ndarray  # (k,) float
    votes: list[list[Vote]]  # per returned item


def rank_weights(ranking: np.ndarray, space_weights: np.ndarray, base: float = 2.0) -> np.ndarray:
    """Weight of every vote: w_s * base**-rank; padding (-1) gets 0.  (..., S, c) -> (..., S, c)."""
    s, c = ranking.shape[-2:]
    decay = base ** -np.arange(c, dtype=np.float64)  # (c,)
    weights = np.asarray(space_weights, dtype=np.float64).reshape(s, 1) * decay  # (S, c)
    return np.where(ranking >= 0, weights, 0.0)


def rrf_weights(ranking: np.ndarray, k: int = RRF_K) -> np.ndarray:
    """Reciprocal rank fusion weight 1 / (k + rank), rank 1-based.  (..., S, c) -> (..., S, c)."""
    if k <= 0:
        raise ValueError(f"the RRF constant must be positive, got {k}")
    c = ranking.shape[-1]
    weights = np.broadcast_to(1.0 / (k + 1 + np.arange(c, dtype=np.float64)), ranking.shape)
    return np.where(ranking >= 0, weights, 0.0)


def zscore_weights(
    ranking: np.ndarray, scores: np.ndarray, empty: np.ndarray, places: int | None = None, tie_breaks: bool = False
) -> np.ndarray:
    """Score fusion with no tuning (CombSUM of z-scores): each list's scores standardised over its
    slots, then shifted so its lowest slot weighs 0, as does every row the list leaves out. Lists on
    different scales (cosine, BM25) weigh alike, and a list whose first row stands far above the rest
    (a decisive word match) outvotes one whose rows all score alike.
    empty (S,): the score an empty slot (-1) stands for (BM25: 0, a chunk matching no query word), or
    NaN to leave empty slots out (a vector list is short only when the corpus is); a list whose slots
    all score alike weighs 0.  ranking, scores (..., S, c) -> (..., S, c).
    `places`: standardise over the first `places` slots only (a deeper list then weighs its first places
    as a shorter one does). `tie_breaks`: every row listed there adds TIE_BREAK; a row listed only past them
    (it weighs 0) adds at most TIE_BREAK / (2 S) a list, smaller the lower it scores, so such rows rank by
    their scores, below every row of the first places, and the order of those does not depend on how deep
    lists go. A slot whose score is NaN weighs 0.
    Example: scores [0.9, 0.8, 0.7] -> z [1.22, 0, -1.22] -> weights [2.45, 1.22, 0]."""
    valid = ranking >= 0
    filled = np.where(valid, np.asarray(scores, dtype=np.float64), np.asarray(empty, dtype=np.float64)[:, None])
    s, c = ranking.shape[-2:]
    places = c if places is None else min(places, c)
    first = filled[..., :places]  # the slots standardised: sliced, so their sums round alike at any depth
    counted = ~np.isnan(first)
    n = np.maximum(counted.sum(-1, keepdims=True), 1)
    mean = np.where(counted, first, 0.0).sum(-1, keepdims=True) / n  # (..., S, 1)
    sd = np.sqrt(np.where(counted, (first - mean) ** 2, 0.0).sum(-1, keepdims=True) / n)
    z = np.where(sd > 0, (filled - mean) / np.where(sd > 0, sd, 1.0), 0.0)  # (..., S, c); NaN where filled is
    lowest = np.where(counted, z[..., :places], np.inf).min(-1, keepdims=True)
    shifted = z - np.where(np.isfinite(lowest), lowest, 0.0)  # (..., S, c): < 0 only past the first places
    scored = valid & ~np.isnan(filled)
    if not tie_breaks or c <= places:  # past the first places 0; there a listed row's tie-break is TIE_BREAK
        return np.where(scored, np.maximum(shifted, 0.0) + (TIE_BREAK if tie_breaks else 0.0), 0.0)
    share = np.full(ranking.shape, TIE_BREAK)  # rows listed only past the first places: a share, none elsewhere
    share[..., places:] = np.where(_in_first_places(ranking, places)[..., places:], 0.0, TIE_BREAK / (2 * s))
    tie_break = share / (1.0 + np.maximum(-np.nan_to_num(shifted), 0.0))  # lower the further below: no underflow
    return np.where(scored, np.maximum(shifted, 0.0) + tie_break, 0.0)


def _in_first_places(ranking: np.ndarray, places: int) -> np.ndarray:
    """Whether each slot's row is in the first `places` slots of a list of its part: (..., S, c) -> (..., S, c).
    Rows are told apart by part (one `isin` for a batch of parts, not one per part)."""
    s, c = ranking.shape[-2:]
    lists = ranking.reshape(-1, s, c).astype(np.int64) + 1  # (P, S, c), padding 0
    keys = lists + (int(lists.max(initial=0)) + 1) * np.arange(len(lists))[:, None, None]
    return np.isin(keys, keys[..., :places]).reshape(ranking.shape)


def fuse(ranking: np.ndarray, weights: np.ndarray, k: int, with_votes: bool = True) -> Fused:
    """Sum each item's vote weights over all spaces and return the top k (deterministic ties);
    `with_votes` False leaves `votes` empty (building them cost more than the sums for a query's parts)."""
    ranking = np.asarray(ranking)
    (ids, scores), = fuse_many(ranking[None], np.asarray(weights)[None], k)
    votes: list[list[Vote]] = []
    if with_votes:
        spaces, ranks = np.nonzero(ranking >= 0)
        w = np.asarray(weights, dtype=np.float64)[spaces, ranks]
        items = ranking[spaces, ranks]
        votes = [[Vote(int(s), int(r), float(x)) for s, r, x in zip(*(a[items == item] for a in (spaces, ranks, w)))]
                 for item in ids]
    return Fused(ids=ids, scores=scores, votes=votes)


def fuse_many(ranking: np.ndarray, weights: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """`fuse` of each of P rankings at once, without the votes: the items of ranking p are told apart by
    p, so one pass sums them all (a query's parts: one call, not one per part).
    ranking, weights (P, S, c) -> per ranking its top k (ids (<=k,) int64, scores (<=k,) float64)."""
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    ranking = np.asarray(ranking)
    valid = ranking >= 0
    part, _, ranks = np.nonzero(valid)  # one entry per vote, by part, then space, then rank
    items = ranking[valid].astype(np.int64)
    span = int(items.max()) + 1 if len(items) else 1
    # (U,) distinct (part, item): items are row numbers, so part * span stays far below 2**63
    uniq, inverse = np.unique(part * span + items, return_inverse=True)
    totals = np.bincount(inverse, weights=np.asarray(weights, dtype=np.float64)[valid], minlength=len(uniq))
    totals = totals.astype(np.float64, copy=False)  # no vote at all: bincount gives int64
    best_rank = np.full(len(uniq), np.iinfo(np.int64).max)
    np.minimum.at(best_rank, inverse, ranks)
    owner, item = uniq // span, uniq % span
    order = _ranked(owner, totals, best_rank, item, k)
    bounds = np.searchsorted(owner[order], np.arange(len(ranking) + 1))
    return [(item[order[a:min(b, a + k)]], totals[order[a:min(b, a + k)]]) for a, b in zip(bounds[:-1], bounds[1:])]


def _ranked(owner: np.ndarray, totals: np.ndarray, best_rank: np.ndarray, item: np.ndarray, k: int) -> np.ndarray:
    """Positions of distinct (owner, item) entries in the order by owner, then total descending, then best
    rank, then item, each owner's k best first (all (U,), sorted by owner; an owner's entries below its
    k-th largest total may be left out). Only entries at or above their owner's k-th
    largest total are sorted (one partition per owner first): a lexsort of every entry was most of a
    batch's vote (32 six-part queries, 13 spaces: 78k entries, 15 ms of lexsort).
    Example: owners [0, 0, 0, 1], totals [1.0, 3.0, 2.0, 1.0], k 2 -> [1, 2, 3]."""
    keep = np.arange(len(totals))
    if len(totals) and np.isfinite(totals).all():
        count = np.bincount(owner)
        first = np.cumsum(count) - count
        width = int(count.max())
        if width > k:  # each owner's totals side by side, -inf after its last; its k-th largest
            laid = np.full((len(count), width), -np.inf)
            laid[owner, keep - first[owner]] = totals
            kth = np.partition(laid, width - k, axis=1)[:, width - k]
            keep = np.flatnonzero(totals >= kth[owner])
    # lexsort sorts by the last key first: owner, then total desc, then best rank asc, then item asc
    return keep[np.lexsort((item[keep], best_rank[keep], -totals[keep], owner[keep]))]


def interleave(lists: list[np.ndarray], k: int) -> np.ndarray:
    """Round-robin merge: each list's best first, then each list's second, ...; duplicates skipped.

    Used to combine per-segment results of a long query, where summing scores would let generic
    items that appear in many lists push out the one item each segment is about.
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    out: list[int] = []
    seen: set[int] = set()
    depth = max((len(x) for x in lists), default=0)
    for r in range(depth):
        for ranked in lists:
            if r < len(ranked) and ranked[r] >= 0 and int(ranked[r]) not in seen:
                seen.add(int(ranked[r]))
                out.append(int(ranked[r]))
                if len(out) == k:
                    return np.array(out, dtype=np.int64)
    return np.array(out, dtype=np.int64)


def consensus(lists: list[np.ndarray], top_scores: np.ndarray, k: int) -> np.ndarray:
    """Merge the ranked lists of a query's parts (e.g. its sentences) by their first choices.

    Each part votes for its best item. Items with votes come first, by vote count, then by the
    best score among their votes, then by id; the rest is filled round-robin from all lists.
    lists: P arrays of item ids, best first; top_scores (P,): the score of each list's first item.
    Example: parts a, b, c pick 7, 7, 3 -> [7, 3, ...]: two parts agree on 7.
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    firsts: dict[int, list[float]] = {}
    for ranked, score in zip(lists, top_scores):
        if len(ranked) and ranked[0] >= 0:
            firsts.setdefault(int(ranked[0]), []).append(float(score))
    chosen = sorted(firsts, key=lambda i: (-len(firsts[i]), -max(firsts[i]), i))[:k]
    if len(chosen) == k:
        return np.array(chosen, dtype=np.int64)
    rest = [i for i in interleave(lists, k + len(chosen)) if i not in firsts]
    return np.array(chosen + rest[: k - len(chosen)], dtype=np.int64)
