"""Retrieval strategies: score every space, keep each space's top c, then vote or fuse.

Spaces of one multi-head index: `standard` (the sentence embedding), `head:i` (head i of the hooked
layer), `split:i` (slice i of the standard embedding, the paper's control) and, when the index holds
them, external spaces of other embedding models (`mrag.spaces`, named by their label). A base
strategy picks spaces and a vote (`mrag.vote`):

    standard        cosine on the standard embedding
    mrag-paper      heads vote scale_i * 2**-rank (the paper's MRAG)
    mrag-std        heads, the standard space and the external spaces vote, each with its own weight
    spaces          the standard space and the external spaces vote (no heads: LanceDB's multi-model way)
    mrag-decay      heads vote 2**-rank;  mrag-distance: heads vote 1 / cosine distance
    split           slices of the standard embedding vote 2**-rank;  split-weighted: scale_i * 2**-rank
    bm25            LanceDB's full-text (BM25) search on the chunk text alone (`mrag.retrieve.fulltext`)
    hybrid          the standard vector and BM25 merged by reciprocal rank fusion (LanceDB's hybrid search)

Modifiers run a base strategy once per query part and merge the lists:

    segment+X       one part per sentence (per question in a sentence asking several); merged by
                    consensus of the parts' first choices
    interleave+X    one part per two sentences; merged round-robin
    fusion, mrag-fusion   RAG-Fusion / MRAG-Fusion: sub-queries merged by reciprocal rank fusion

`mrag` is `segment+mrag-std` (a one-part query: the standard vector alone); `mrag-bm25` is `mrag` with the
full-text space (`bm25`) voting too, with the standard vector's weight, and a one-part query ranked by the
fused z-scores of the standard vector's and BM25's lists (`mrag.vote.zscore_weights`). `segment-bm25`, the
default, ranks every part by the fused z-scores of the standard vector, BM25 and any external spaces, no
heads (README, Results).
A selection of spaces (`select`: names such as "standard", "heads", "head:3", "split", or a label)
keeps only the strategy's voters it names. Without external spaces or a selection, every strategy
votes exactly as it did before spaces existed.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Collection

import numpy as np

from mrag.chunk import segment_query, split_questions  # noqa: F401  (split_questions re-exported)
from mrag.retrieve.types import QueryVectors, Ranker, Result, Scales, Voter  # noqa: F401  (re-exported)
from mrag.scales import split_width
from mrag.settings import (  # noqa: F401  (re-exported: retrieve is where callers look for them)
    ALIASES,
    BASE_STRATEGIES,
    DEFAULT_C,
    DEFAULT_STRATEGY,
    EXTRA_SPACE_STRATEGIES,
    FULLTEXT,
    FUSION,
    MODIFIERS,
    Plan,
    check_strategy,
    parse_strategy,
    strategy_names,
)
from mrag.vote import consensus, fuse, fuse_many, interleave, rank_weights, rrf_weights, zscore_weights


def query_parts(strategy: str, text: str) -> list[str]:
    """The texts a strategy embeds besides the whole query (segments; none for single-sentence queries)."""
    plan = parse_strategy(strategy)
    if plan.expand not in MODIFIERS:
        return []
    parts = segment_query(text, MODIFIERS[plan.expand][1])
    return parts if len(parts) > 1 else []


def uses_heads(strategy: str, select: Collection[str] | None = None) -> bool:
    """Whether a strategy (with its selection of spaces) votes with the heads; the in-memory matrix
    leaves them out otherwise (half its size)."""
    plan = parse_strategy(strategy)
    if plan.base in ("standard", "spaces", "bm25", "hybrid") or plan.base.startswith("split"):
        return False
    return select is None or "heads" in select or any(str(s).startswith("head:") for s in select)


def uses_vectors(strategy: str, select: Collection[str] | None = None) -> bool:
    """Whether a strategy (with its selection of spaces) votes with any vector space: the full-text space
    alone (`bm25`, or a selection of it alone) needs no query embedding, so no model is loaded."""
    alone = parse_strategy(strategy).base == "bm25" or (select is not None and set(select) == {FULLTEXT})
    return not alone


def uses_fulltext(strategy: str, select: Collection[str] | None = None) -> bool:
    """Whether a strategy (with its selection of spaces) asks the full-text space."""
    plan = parse_strategy(strategy)
    return plan.base in ("bm25", "hybrid") or plan.fulltext or FULLTEXT in (select or ())


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def voters(
    strategy: str,
    n_heads: int,
    scales: Scales,
    extra: Collection[str] = (),
    select: Collection[str] | None = None,
    fulltext: bool = False,
) -> list[Voter]:
    """The spaces a base strategy votes with, and their weights; `select` keeps only the named ones
    (a voter's name or group: "heads", "split", "standard", "bm25", a label). The full-text space
    votes in `mrag-std` and `spaces` when `fulltext` or the selection names it."""
    found: list[Voter] = []

    def take(group: str, names: list[str], weights: np.ndarray) -> None:
        found.extend(
            Voter(name, group, float(w))
            for name, w in zip(names, np.asarray(weights, dtype=np.float64))
            if select is None or name in select or group in select
        )

    if strategy == "standard":
        take("standard", ["standard"], np.ones(1))
    elif strategy in ("bm25", "hybrid"):  # hybrid: RRF ignores the weights
        if strategy == "hybrid":
            take("standard", ["standard"], np.ones(1))
        take(FULLTEXT, [FULLTEXT], np.ones(1))
    elif strategy.startswith("split"):
        n_slices = len(scales["split"])
        take("split", [f"split:{i}" for i in range(n_slices)],
             scales["split"] if strategy == "split-weighted" else np.ones(n_slices))
    else:
        if strategy != "spaces":
            take("heads", [f"head:{i}" for i in range(n_heads)],
                 scales["heads"] if strategy in ("mrag-paper", "mrag-std") else np.ones(n_heads))
        if strategy in EXTRA_SPACE_STRATEGIES:
            # the standard space votes too, with its scale computed like a head's; so do external spaces
            take("standard", ["standard"], scales["standard"])
            for name in extra:
                take(name, [name], scales[f"space:{name}"])
            if fulltext or FULLTEXT in (select or ()):
                # BM25 scores have no scale like a vector space's: it votes with the standard vector's weight
                # (unless the scales name one: the evaluation measures other rules that way)
                take(FULLTEXT, [FULLTEXT], scales.get(FULLTEXT, scales["standard"]))
    if not found:
        raise ValueError(f"strategy {strategy!r} has no voter among the selected spaces {sorted(select or [])}")
    return found


def check_selection(select: Collection[str], n_heads: int | None, n_slices: int | None, extra: Collection[str]) -> None:
    """Refuse space names an index does not have (None: a number of heads or slices not known yet, any)."""

    def numbered(name: str, prefix: str, count: int | None) -> bool:  # "head:3", not "head:03" (no voter's name)
        number = name.removeprefix(prefix)
        canonical = re.fullmatch(r"0|[1-9][0-9]*", number, re.ASCII) is not None
        return name.startswith(prefix) and canonical and (count is None or int(number) < count)

    unknown = sorted(name for name in set(select) - {"standard", "heads", "split", FULLTEXT, *extra}
                     if not numbered(name, "head:", n_heads) and not numbered(name, "split:", n_slices))
    if unknown:
        heads = "head:I" if n_heads is None else f"head:0..head:{n_heads - 1}"
        have = ", ".join(["standard", f"heads ({heads})", "split", FULLTEXT, *sorted(extra)])
        raise ValueError(f"unknown space {unknown[0]!r}; this index has: {have}")
    if not select:
        raise ValueError("the space selection is empty")


def vote(
    strategy: str,
    query: QueryVectors,
    k: int,
    c: int,
    scales: Scales,
    ranker: Ranker,
    n_heads: int,
    parts: list[QueryVectors] | None = None,
    extra: Collection[str] = (),
    select: Collection[str] | None = None,
) -> Result:
    """Run a strategy for one query; `vote_many` for several at once."""
    return vote_many(strategy, [(query, parts)], k, c, scales, ranker, n_heads, extra, select)[0]


def _silent(chosen: list[Voter], parts: list[QueryVectors], n_heads: int) -> np.ndarray:
    """(P, S) bool: whether each part's vector in each voter's space is all zeros (the full-text space has
    none). One test per group over all parts at once (a test per part and voter cost 0.23 ms a query)."""
    groups = {v.group for v in chosen} - {FULLTEXT}
    standard = np.stack([q.standard for q in parts]) if groups & {"standard", "split"} else None  # (P, D)
    zero: dict[str, np.ndarray] = {}  # voter name -> (P,)
    if "heads" in groups:
        heads = _all_zero(np.stack([q.heads for q in parts]))  # (P, H)
        zero |= {f"head:{i}": heads[:, i] for i in range(heads.shape[1])}
    if "split" in groups and standard is not None:
        slices = _all_zero(standard.reshape(len(parts), -1, split_width(standard.shape[1], n_heads)))  # (P, S)
        zero |= {f"split:{i}": slices[:, i] for i in range(slices.shape[1])}
    if "standard" in groups and standard is not None:
        zero["standard"] = _all_zero(standard)
    for name in groups - {"heads", "split", "standard"}:
        zero[name] = _all_zero(np.stack([q.extra[name] for q in parts]))
    nothing = np.zeros(len(parts), dtype=bool)
    return np.stack([zero.get(v.name, nothing) for v in chosen], axis=1)


def _all_zero(vectors: np.ndarray) -> np.ndarray:
    """Whether each vector (along the last axis) is all zeros: (..., d) -> (...)."""
    return np.asarray(np.count_nonzero(vectors, axis=-1) == 0)


# z-score fusion (`vote.zscore_weights`) standardises each list over its first ZSCORE_PLACES places, whatever the
# k and c asked (a place past them only breaks ties): its weights depended on k, so searches (k = 5: 32 places)
# ranked otherwise than the evaluation (k = 64), 0.933 against 0.946 MRR@10 on the snippet queries
# (benchmarks/results/eval/zscore-places/)
ZSCORE_PLACES = 2 * DEFAULT_C


def vote_many(
    strategy: str,
    batch: list[tuple[QueryVectors, list[QueryVectors] | None]],
    k: int,
    c: int,
    scales: Scales,
    ranker: Ranker,
    n_heads: int,
    extra: Collection[str] = (),
    select: Collection[str] | None = None,
) -> list[Result]:
    """Run a strategy for a batch of (query, parts); every space is searched once for all of them.

    `ranker` finds each space's c nearest rows (`exact.Exact`, or `ann.AnnRanker`); `extra` names the external
    spaces the queries carry vectors for; `select` keeps only the named voters (see `voters`).

    `parts` are a query's segments (`segment+`, `interleave+`, see `query_parts`) or its sub-queries
    (fusion strategies): the base strategy votes once per part and the lists are merged. With fewer
    than two parts a modifier changes nothing (fusion needs at least one sub-query).
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    if c <= 0:
        raise ValueError(f"the per-space depth c must be positive, got {c}")
    plan = parse_strategy(strategy)
    if select is not None:
        check_selection(select, n_heads, len(scales.get("split", [])), list(extra))
    if not batch:
        return []
    try:
        chosen = voters(plan.base, n_heads, scales, extra, select, plan.fulltext)
    except ValueError:  # named by the strategy asked for, not its base
        spaces = dict.fromkeys(v.group for v in voters(plan.base, n_heads, scales, extra, None, plan.fulltext))
        raise ValueError(f"strategy {strategy!r} votes with none of the selected spaces {sorted(select or [])}: "
                         f"its spaces are {', '.join(spaces)}") from None
    searched: list[list[QueryVectors]] = []  # per query, the vectors that vote
    for query, parts in batch:
        if plan.expand == "fusion" and not parts:
            raise ValueError(f"strategy {strategy!r} needs sub-queries")
        expand = plan.expand is not None and parts and (plan.expand == "fusion" or len(parts) >= 2)
        searched.append(list(parts) if expand and parts else [query])
    # a query of one part may be ranked by one voter alone (the default's standard vector), joined by
    # the full-text space when it votes
    lone = [i for i, v in enumerate(chosen) if v.name == plan.one_part or v.group == FULLTEXT]
    lone = lone if any(chosen[i].name == plan.one_part for i in lone) else []
    depth = max(k, c) if plan.base in ("standard", "bm25") or lone or plan.fulltext else c  # each space's list
    if plan.zscores or (plan.fulltext and lone):  # z-scores over ZSCORE_PLACES: k = 5 ranks as the top of k = 100
        depth = max(depth, ZSCORE_PLACES)
    ranking, sims = ranker(chosen, [q for qs in searched for q in qs], depth)  # (P_total, S, depth)
    # a part whose vector in a space is zero (no direction: a fake embedder's text of no word) votes nothing
    # there, on every path: the exact scan ranked every row at 0 and voted for the first c, LanceDB's none
    silent = _silent(chosen, [q for qs in searched for q in qs], n_heads)  # (P_total, S)
    if silent.any():
        ranking, sims = np.where(silent[..., None], -1, ranking), np.where(silent[..., None], -np.inf, sims)
    weights = np.array([v.weight for v in chosen])
    results, start = [], 0
    one_part = lone or list(range(len(chosen)))  # the voters of a query of one part
    if len(lone) == 1:
        how = "standard"  # one list as it is
    elif plan.fulltext and len(one_part) > 1 and any(chosen[i].group == FULLTEXT for i in one_part):
        # the lists' scores fused (`zscore_weights`): rank votes let the standard vector's first row win
        # over a decisive BM25 match (benchmarks/results/eval/fulltext/)
        how = "zscore"
    else:
        how = "mrag-std" if lone else plan.base  # the lone voters' rank votes, or the base strategy's
    alone = [len(qs) == 1 and plan.expand != "fusion" for qs in searched]
    # every part of the batch listed at once (one fusion pass: 32 six-part queries in one call, not 32)
    lists, part_weights = ([], None) if all(alone) else _part_lists(
        "zscore" if plan.zscores else plan.base, chosen, weights, ranking, sims, max(k, c))
    for qs, one in zip(searched, alone):
        end = start + len(qs)
        if one:
            results.append(_tally(how, [chosen[i] for i in one_part], weights[one_part], ranking[start][one_part],
                                  sims[start][one_part], k))
        else:
            votes_for = functools.partial(_part_votes, chosen, ranking[start:end], sims[start:end],
                                          None if part_weights is None else part_weights[start:end])
            results.append(_merge(plan.expand or "", lists[start:end], k, votes_for))
        start = end
    return results


def _tally(
    strategy: str,
    chosen: list[Voter],
    weights: np.ndarray,
    ranking: np.ndarray,
    sims: np.ndarray,
    k: int,
    with_votes: bool = True,
) -> Result:
    """One part's votes.  ranking, sims (S, c) -> the top k rows; `with_votes` False leaves out who voted
    (a part's list: `_merge` asks `_part_votes` about the rows it keeps)."""
    if strategy in ("standard", "bm25"):  # one list: its own order and similarities (BM25 scores)
        valid = ranking[0] >= 0
        rows, scores = ranking[0][valid][:k], sims[0][valid][:k]
        return Result(rows, scores, [_list_vote(chosen, i, s) for i, s in enumerate(scores)] if with_votes else [])
    w = _vote_weights(strategy, chosen, weights, ranking, sims)
    fused = fuse(ranking, w, k, with_votes=False)
    return Result(fused.ids, fused.scores, [_row_votes(chosen, ranking, w, r) for r in fused.ids] if with_votes else [])


def _vote_weights(
    strategy: str, chosen: list[Voter], weights: np.ndarray, ranking: np.ndarray, sims: np.ndarray
) -> np.ndarray:
    """Each vote's weight by the strategy's rule: ranking, sims (..., S, c) -> (..., S, c)."""
    if strategy == "mrag-distance":
        return np.where(ranking >= 0, 1.0 / np.maximum(1.0 - sims, 1e-6), 0.0)
    if strategy == "hybrid":
        return rrf_weights(ranking)
    if strategy == "zscore":
        empty = np.array([0.0 if v.group == FULLTEXT else np.nan for v in chosen])
        return zscore_weights(ranking, sims, empty, places=ZSCORE_PLACES, tie_breaks=True)
    return rank_weights(ranking, weights)


def _part_lists(
    strategy: str, chosen: list[Voter], weights: np.ndarray, ranking: np.ndarray, sims: np.ndarray, k: int
) -> tuple[list[Result], np.ndarray | None]:
    """Each part's list as `_tally` gives it, without who voted, the fused ones in one pass (`fuse_many`):
    ranking, sims (P, S, c) -> P results, and the votes' weights (P, S, c) (None: one list each)."""
    if strategy in ("standard", "bm25"):
        return [_tally(strategy, chosen, weights, r, s, k, with_votes=False) for r, s in zip(ranking, sims)], None
    w = _vote_weights(strategy, chosen, weights, ranking, sims)
    return [Result(ids, scores, []) for ids, scores in fuse_many(ranking, w, k)], w


def _part_votes(
    chosen: list[Voter],
    ranking: np.ndarray,
    sims: np.ndarray,
    weights: np.ndarray | None,
    part: int,
    position: int,
    row: int,
) -> list[dict[str, object]]:
    """The votes a part's list (`_part_lists`) gives `row`, at `position` of it: ranking, sims, weights
    (P, S, c) the query's parts. One list (no weights): its vote at that position; fused lists: every
    space's vote for the row."""
    ranking, sims = ranking[part], sims[part]
    if weights is None:
        return _list_vote(chosen, position, sims[0][ranking[0] >= 0][position])
    return _row_votes(chosen, ranking, weights[part], row)


def _list_vote(chosen: list[Voter], rank: int, score: float) -> list[dict[str, object]]:
    """The one vote of a row of a one-list strategy: its rank and score there."""
    return [{"space": chosen[0].name, "rank": rank, "weight": float(score)}]


def _row_votes(chosen: list[Voter], ranking: np.ndarray, w: np.ndarray, row: int) -> list[dict[str, object]]:
    """Every space's vote for `row` (space order, then rank): ranking, w (S, c) the lists and their vote weights."""
    spaces, ranks = np.nonzero(ranking == row)
    return [{"space": chosen[s].name, "rank": int(r), "weight": float(w[s, r])} for s, r in zip(spaces, ranks)]


VotesFor = Callable[[int, int, int], list[dict[str, object]]]  # (part, position, row) -> that part's votes for it


def _merge(expand: str, lists: list[Result], k: int, votes_for: VotesFor) -> Result:
    """Merge the parts' lists: RRF for fusion, consensus for segment+, round-robin for interleave+.
    votes_for(part, position, row): the votes a part gave the row at that position of its list."""
    if expand == "fusion":
        depth = max(len(r.rows) for r in lists)
        ranking = np.full((len(lists), depth), -1, dtype=np.int64)
        for i, r in enumerate(lists):
            ranking[i, : len(r.rows)] = r.rows
        fused = fuse(ranking, rrf_weights(ranking), k, with_votes=False)
        rows, scores = fused.ids, fused.scores
    else:
        ranked = [r.rows for r in lists]
        if expand == "segment+":
            tops = np.array([r.scores[0] if len(r.scores) else -np.inf for r in lists])
            rows = consensus(ranked, tops, k)
        else:
            rows = interleave(ranked, k)
        scores = None  # taken from the part that ranked each row best
    best = _best_places(lists, np.asarray(rows, dtype=np.int64))
    if scores is None:
        scores = np.array([score for _, _, score in best])
    votes = [[v | {"part": part} for v in votes_for(part, pos, int(row))] for (part, pos, _), row in zip(best, rows)]
    return Result(np.asarray(rows, dtype=np.int64), np.asarray(scores, dtype=np.float64), votes)


def _best_places(lists: list[Result], rows: np.ndarray) -> list[tuple[int, int, float]]:
    """Each row's (part, position, score) in the part that ranked it best, the earliest part on ties;
    (0, 0, 0.0) for a row no list holds.  rows (R,) -> R tuples.
    Example: lists [5, 7], [7, 9] -> row 7: (1, 0, ...) (first in part 1), row 9: (1, 1, ...)."""
    wanted = set(rows.tolist())
    best: dict[int, tuple[int, int]] = {}  # row -> (position, part): the least position, then the earliest part
    for part, result in enumerate(lists):
        for position, row in enumerate(result.rows.tolist()):
            if row in wanted and position < best.get(row, (position + 1,))[0]:
                best[row] = (position, part)
    places = [best.get(row) for row in rows.tolist()]
    return [(0, 0, 0.0) if at is None else (at[1], at[0], float(lists[at[1]].scores[at[0]])) for at in places]
