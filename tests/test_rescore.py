"""The ANN path's re-score (mrag.retrieve.rescore): the standard index proposes rows, every space ranks
them exactly. A hand-worked example of the ranking, and on a real index: the same answers as exact
search when the candidates cover every row, fewer when they do not."""

from __future__ import annotations

import numpy as np
import pytest
from test_ann import QUERIES, SeededEmbedder, docs, hits

from mrag.index import Index
from mrag.retrieve.rescore import RescoreRanker, rank_candidates
from mrag.retrieve.types import QueryVectors, Voter

CHOSEN = [Voter("standard", "standard", 1.0), Voter("head:0", "heads", 1.0)]


def test_rank_candidates_by_hand():
    query = QueryVectors(np.array([1.0, 0.0]), np.array([[0.0, 1.0]]))
    stored = {
        "standard": np.array([[0.0, 1.0], [1.0, 0.0], [0.6, 0.8]]),  # cosines 0, 1, 0.6
        "head:0": np.array([[0.0, 1.0], [1.0, 0.0], [0.8, 0.6]]),  # cosines 1, 0, 0.6
    }
    ranking, sims = rank_candidates(CHOSEN, [query], stored, 2)
    assert ranking.tolist() == [[[1, 2], [0, 2]]]
    assert np.allclose(sims, [[[1.0, 0.6], [1.0, 0.6]]])
    ranking, sims = rank_candidates(CHOSEN, [query], stored, 4)  # deeper than the 3 candidates
    assert ranking[0, 0].tolist() == [1, 2, 0, -1] and sims[0, 0, 3] == -np.inf


def test_rank_candidates_breaks_ties_to_the_lower_row_and_handles_no_candidates():
    query = QueryVectors(np.array([1.0, 0.0]), np.array([[1.0, 0.0]]))
    same = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])  # rows 1 and 2 tie
    ranking, _ = rank_candidates(CHOSEN, [query, query], {"standard": same, "head:0": same}, 2)
    assert ranking.tolist() == [[[1, 2], [1, 2]], [[1, 2], [1, 2]]]
    empty = np.zeros((0, 2))
    ranking, sims = rank_candidates(CHOSEN, [query], {"standard": empty, "head:0": empty}, 3)
    assert (ranking == -1).all() and (sims == -np.inf).all()


@pytest.fixture
def built(tmp_path) -> Index:
    index = Index.open(tmp_path / "db", embedder=SeededEmbedder())
    index.add(docs(150))
    index.build_ann("IVF_FLAT")  # 12 partitions, 60 probes: the standard index returns exact neighbours
    return index


def test_candidates_covering_every_row_answer_as_exact_search(built):
    for strategy in ("mrag-std", "mrag", "mrag-paper", "interleave+mrag-std"):
        exact = hits(built, strategy, True)
        found = [[(h.id, round(h.score, 5)) for h in built.search(q, k=10, strategy=strategy, candidates=150)]
                 for q in QUERIES]
        assert found == exact, strategy
    explained = built.search(QUERIES[0], k=3, strategy="mrag-std", candidates=150)
    assert [h.votes for h in explained] == [h.votes for h in built.search(QUERIES[0], k=3, strategy="mrag-std",
                                                                          exact=True)]


def test_few_candidates_only_narrow_what_the_heads_see(built):
    exact = hits(built, "mrag-std", True)
    few = [[(h.id, round(h.score, 5)) for h in built.search(q, k=10, strategy="mrag-std", candidates=3)]
           for q in QUERIES]
    assert few != exact  # random heads: their nearest rows are rarely the standard vector's
    assert all(len(f) == 10 for f in few)  # rank c=32 >= candidates: every part still fills its lists
    with pytest.raises(ValueError, match="candidates must be 0"):
        built.search(QUERIES[0], candidates=-1)
    with pytest.raises(ValueError, match="candidates must be positive"):
        RescoreRanker(built.store.snapshot(), {}, 10, 0)
