import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrag.vote import (
    RRF_K,
    TIE_BREAK,
    Vote,
    consensus,
    fuse,
    fuse_many,
    interleave,
    rank_weights,
    rrf_weights,
    zscore_weights,
)


def test_mrag_vote_by_hand():
    # Three head spaces over four chunks (ids 0..3), c = 3; space 1 found only two chunks.
    ranking = np.array(
        [
            [2, 0, 1],  # head 0, scale 1.0
            [0, 3, -1],  # head 1, scale 0.5 (padded)
            [1, 2, 0],  # head 2, scale 2.0
        ]
    )
    scales = np.array([1.0, 0.5, 2.0])
    # vote weight = scale * 2**-rank:
    #   head 0: id2 1*1 = 1.0,   id0 1*1/2 = 0.5,   id1 1*1/4 = 0.25
    #   head 1: id0 .5*1 = 0.5,  id3 .5*1/2 = 0.25
    #   head 2: id1 2*1 = 2.0,   id2 2*1/2 = 1.0,   id0 2*1/4 = 0.5
    # sums: id0 = 0.5 + 0.5 + 0.5 = 1.5;  id1 = 0.25 + 2.0 = 2.25;  id2 = 1.0 + 1.0 = 2.0;  id3 = 0.25
    # ranking: id1 (2.25) > id2 (2.0) > id0 (1.5) > id3 (0.25)
    weights = rank_weights(ranking, scales)
    assert weights.tolist() == [[1.0, 0.5, 0.25], [0.5, 0.25, 0.0], [2.0, 1.0, 0.5]]

    fused = fuse(ranking, weights, k=4)
    assert fused.ids.tolist() == [1, 2, 0, 3]
    assert fused.scores.tolist() == [2.25, 2.0, 1.5, 0.25]
    assert fused.votes[0] == [Vote(space=0, rank=2, weight=0.25), Vote(space=2, rank=0, weight=2.0)]
    assert fused.votes[2] == [Vote(0, 1, 0.5), Vote(1, 0, 0.5), Vote(2, 2, 0.5)]
    assert fused.votes[3] == [Vote(1, 1, 0.25)]

    top2 = fuse(ranking, weights, k=2)
    assert top2.ids.tolist() == [1, 2]
    assert top2.scores.tolist() == [2.25, 2.0]


def test_decay_only_vote_ignores_scales():
    # decay only (all scales 1): id0 = 1/2 + 1 + 1/4 = 1.75; id2 = 1 + 1/2 = 1.5; id1 = 1/4 + 1 = 1.25; id3 = 1/2
    ranking = np.array([[2, 0, 1], [0, 3, -1], [1, 2, 0]])
    fused = fuse(ranking, rank_weights(ranking, np.ones(3)), k=10)
    assert fused.ids.tolist() == [0, 2, 1, 3]
    assert fused.scores.tolist() == [1.75, 1.5, 1.25, 0.5]


def test_rank_weights_other_base():
    ranking = np.array([[4, 5, 6]])
    assert rank_weights(ranking, np.array([3.0]), base=3.0).tolist() == [[3.0, 1.0, 1.0 / 3.0]]


def test_ties_break_on_best_rank_then_smaller_id():
    ranking = np.array([[9, 4], [3, 4]])
    # id9 = 1 (rank 0); id3 = 1 (rank 0); id4 = 1/2 + 1/2 = 1 (best rank 1)
    # equal scores: best rank 0 beats best rank 1, then the smaller id: 3, 9, 4
    fused = fuse(ranking, rank_weights(ranking, np.ones(2)), k=3)
    assert fused.scores.tolist() == [1.0, 1.0, 1.0]
    assert fused.ids.tolist() == [3, 9, 4]
    # the order of the input spaces does not matter
    assert fuse(ranking[::-1], rank_weights(ranking[::-1], np.ones(2)), k=3).ids.tolist() == [3, 9, 4]


def test_padding_is_ignored_even_with_weights():
    ranking = np.array([[7, -1, -1], [-1, -1, -1]])
    fused = fuse(ranking, np.ones((2, 3)), k=5)  # weights on padding must not count
    assert fused.ids.tolist() == [7]
    assert fused.scores.tolist() == [1.0]
    assert fused.votes == [[Vote(0, 0, 1.0)]]
    empty = fuse(np.full((2, 3), -1), np.ones((2, 3)), k=5)
    assert empty.ids.tolist() == [] and empty.votes == []


@pytest.mark.parametrize("k", [0, -1])
def test_fuse_rejects_non_positive_k(k):
    with pytest.raises(ValueError, match="k must be positive"):
        fuse(np.array([[0]]), np.ones((1, 1)), k=k)


def test_rrf_weights():
    ranking = np.array([[3, 1, -1], [1, 2, 3]])
    w = rrf_weights(ranking)
    assert RRF_K == 60
    assert w.tolist() == [[1 / 61, 1 / 62, 0.0], [1 / 61, 1 / 62, 1 / 63]]
    # id1 = 1/62 + 1/61 beats id3 = 1/61 + 1/63, which beats id2 = 1/62
    assert fuse(ranking, w, k=3).ids.tolist() == [1, 3, 2]
    assert rrf_weights(np.array([[0, 1]]), k=1).tolist() == [[1 / 2, 1 / 3]]


@pytest.mark.parametrize("k", [0, -60])
def test_rrf_rejects_non_positive_constant(k):
    with pytest.raises(ValueError, match="positive"):
        rrf_weights(np.array([[0, 1]]), k=k)


def test_interleave_round_robin_skips_duplicates_and_padding():
    lists = [np.array([1, 2, 3]), np.array([2, 4]), np.array([5, -1, 6])]
    # round 0: 1, 2, 5; round 1: (2 seen), 4, (pad); round 2: 3, 6
    assert interleave(lists, k=10).tolist() == [1, 2, 5, 4, 3, 6]
    assert interleave(lists, k=4).tolist() == [1, 2, 5, 4]
    assert interleave([], k=3).tolist() == []
    assert interleave([np.array([], dtype=np.int64)], k=3).tolist() == []


@pytest.mark.parametrize("k", [0, -2])
def test_interleave_rejects_non_positive_k(k):
    with pytest.raises(ValueError, match="k must be positive"):
        interleave([np.array([1])], k=k)


@st.composite
def rankings(draw):
    s = draw(st.integers(1, 4))
    c = draw(st.integers(1, 5))
    rows = []
    for _ in range(s):
        ids = draw(st.lists(st.integers(0, 7), min_size=0, max_size=c, unique=True))
        rows.append(ids + [-1] * (c - len(ids)))
    scales = draw(st.lists(st.sampled_from([0.25, 0.5, 1.0, 2.0, 3.0]), min_size=s, max_size=s))
    return np.array(rows, dtype=np.int64), np.array(scales)


def plain_vote(ranking: np.ndarray, weights: np.ndarray, k: int) -> tuple[list[int], dict[int, float]]:
    """The top k items by summed weight, ties to the better best rank, then the smaller id, in plain Python;
    and every item's total."""
    totals: dict[int, float] = {}
    best: dict[int, int] = {}
    for s, row in enumerate(ranking):
        for rank, item in enumerate(row):
            if item >= 0:
                totals[int(item)] = totals.get(int(item), 0.0) + float(weights[s, rank])
                best[int(item)] = min(best.get(int(item), rank), rank)
    return sorted(totals, key=lambda i: (-totals[i], best[i], i))[:k], totals


@given(rankings(), st.integers(1, 10))
@settings(max_examples=200, deadline=None)
def test_fuse_matches_a_plain_python_vote(data, k):
    ranking, scales = data
    expected, totals = plain_vote(ranking, rank_weights(ranking, scales), k)
    fused = fuse(ranking, rank_weights(ranking, scales), k)
    assert fused.ids.tolist() == expected
    np.testing.assert_allclose(fused.scores, [totals[i] for i in expected])
    for item, votes in zip(expected, fused.votes):
        assert sum(v.weight for v in votes) == pytest.approx(totals[item])
        assert all(ranking[v.space, v.rank] == item for v in votes)


@given(st.lists(rankings(), min_size=1, max_size=4), st.integers(1, 10))
@settings(max_examples=200, deadline=None)
def test_fuse_many_is_fuse_of_each_ranking(data, k):
    """A query's parts fused at once: each part's top k as `fuse` gives it alone, ties included (the
    weights are powers of two times a few scales, so sums tie often), and parts never share a vote."""
    c = max(r.shape[1] for r, _ in data)
    s = max(r.shape[0] for r, _ in data)
    ranking = np.full((len(data), s, c), -1, dtype=np.int64)
    weights = np.zeros((len(data), s, c))
    for p, (r, scales) in enumerate(data):
        ranking[p, : r.shape[0], : r.shape[1]] = r
        weights[p, : r.shape[0], : r.shape[1]] = rank_weights(r, scales)
    many = fuse_many(ranking, weights, k)
    assert len(many) == len(data)
    for p, (ids, scores) in enumerate(many):
        expected, totals = plain_vote(ranking[p], weights[p], k)
        assert ids.tolist() == expected
        assert scores.tolist() == [totals[i] for i in expected]  # the same sums, added in the same order
        assert scores.dtype == np.float64


def test_fuse_many_by_hand():
    """Part 0: item 3 first in both spaces (1 + 1 = 2), 5 second (0.5 + 0.5); part 1: one space, items 5,
    then 3. A part with no item gives an empty list."""
    ranking = np.array([[[3, 5], [3, 5]], [[5, 3], [-1, -1]], [[-1, -1], [-1, -1]]])
    many = fuse_many(ranking, rank_weights(ranking, np.array([1.0, 1.0])), 5)
    assert [ids.tolist() for ids, _ in many] == [[3, 5], [5, 3], []]
    assert [scores.tolist() for _, scores in many] == [[2.0, 1.0], [1.0, 0.5], []]
    assert [ids.tolist() for ids, _ in fuse_many(ranking, rank_weights(ranking, np.ones(2)), 1)] == [[3], [5], []]
    nothing = fuse(np.full((2, 3), -1), np.zeros((2, 3)), 3)  # no vote at all: empty, as float scores
    assert nothing.ids.tolist() == [] and nothing.scores.dtype == np.float64


def test_fuse_many_ties_at_the_cut_go_to_the_better_rank_then_the_smaller_id():
    """Only each part's entries at or above its k-th largest total are sorted: every item tied at the
    cut stays in, so the tie-break still decides. Part 0: items 10, 11, 12 each score 1.0 (11 and 12 at
    best rank 0, 10 at 1), 7 scores 0.5; part 1: 10 and 12 score 1.5, both at best rank 0."""
    ranking = np.array([[[12, 10, 7], [11, 12, 10]],
                        [[12, 10, -1], [10, 12, -1]]])
    weights = np.array([[[0.75, 0.5, 0.5], [1.0, 0.25, 0.5]],
                        [[1.0, 0.5, 0.0], [1.0, 0.5, 0.0]]])
    assert [ids.tolist() for ids, _ in fuse_many(ranking, weights, 1)] == [[11], [10]]
    assert [ids.tolist() for ids, _ in fuse_many(ranking, weights, 2)] == [[11, 12], [10, 12]]
    four = fuse_many(ranking, weights, 4)
    assert [ids.tolist() for ids, _ in four] == [[11, 12, 10, 7], [10, 12]]
    assert [s.tolist() for _, s in four] == [[1.0, 1.0, 1.0, 0.5], [1.5, 1.5]]


def test_weights_of_several_rankings_are_each_ones():
    """Weights of a (P, S, c) stack are the weights of each (S, c) ranking."""
    rng = np.random.default_rng(0)
    ranking = rng.integers(-1, 9, size=(3, 2, 4))
    scores = rng.random((3, 2, 4))
    empty = np.array([np.nan, 0.0])
    for p in range(3):
        np.testing.assert_array_equal(zscore_weights(ranking, scores, empty)[p],
                                      zscore_weights(ranking[p], scores[p], empty))
        np.testing.assert_array_equal(rank_weights(ranking, np.array([1.0, 0.5]))[p],
                                      rank_weights(ranking[p], np.array([1.0, 0.5])))
        np.testing.assert_array_equal(rrf_weights(ranking)[p], rrf_weights(ranking[p]))


def test_consensus_by_hand():
    """Four query parts. First choices: 7 (parts 0 and 1, scores 0.9 and 0.8), 3 (0.95), 4 (0.7).
    7 has two votes and leads; 3 beats 4 on its best score. The rest comes round-robin from every
    list, skipping the chosen: round 1 gives 2 (then 4, 2, 7 again), round 2 gives 5, 1, 9, 8."""
    lists = [np.array(x) for x in ([7, 2, 5], [7, 4, 1], [3, 2, 9], [4, 7, 8])]
    scores = np.array([0.9, 0.8, 0.95, 0.7])
    assert consensus(lists, scores, 5).tolist() == [7, 3, 4, 2, 5]
    assert consensus(lists, scores, 2).tolist() == [7, 3]  # only first choices
    assert consensus(lists, scores, 9).tolist() == [7, 3, 4, 2, 5, 1, 9, 8]  # all there is
    assert consensus([np.array([5]), np.array([3])], np.array([0.5, 0.5]), 2).tolist() == [3, 5]  # tie: by id
    assert consensus([np.array([-1, 6]), np.array([6])], np.array([1.0, 0.2]), 2).tolist() == [6]  # -1: no item
    with pytest.raises(ValueError):
        consensus(lists, scores, 0)


def test_zscore_weights_by_hand():
    """Standard similarities 0.9, 0.8, 0.7: mean 0.8, sd sqrt(0.02 / 3), z 1.22, 0, -1.22, shifted to
    2.45, 1.22, 0. BM25 scores 3, 1 and an empty slot counting 0: mean 4/3, sd sqrt(42) / sqrt(27),
    z 1.34, -0.27, -1.07, shifted to 2.40, 0.80 (the empty slot weighs 0)."""
    ranking = np.array([[2, 0, 1], [0, 3, -1]])
    scores = np.array([[0.9, 0.8, 0.7], [3.0, 1.0, -np.inf]])
    w = zscore_weights(ranking, scores, np.array([np.nan, 0.0]))
    sd = (42 / 27) ** 0.5
    np.testing.assert_allclose(w, [[1.5 ** 0.5 * 2, 1.5 ** 0.5, 0], [3 / sd, 1 / sd, 0]])
    assert fuse(ranking, w, 4).ids.tolist() == [0, 2, 3, 1]  # 1.22 + 2.41, 2.45, 0.80, 0
    # without the empty slot's 0 the BM25 list is two rows: z +1 / -1
    np.testing.assert_allclose(zscore_weights(ranking, scores, np.array([np.nan, np.nan]))[1], [2, 0, 0])
    # a list whose slots all score alike adds nothing; so does a list of one row
    assert zscore_weights(np.array([[4, 5]]), np.array([[0.5, 0.5]]), np.array([np.nan])).tolist() == [[0, 0]]
    assert zscore_weights(np.array([[4, -1]]), np.array([[0.5, -np.inf]]), np.array([np.nan])).tolist() == [[0, 0]]


def test_zscore_weights_over_the_first_places_by_hand():
    """places = 2 of scores 0.9, 0.8, 0.7, 0.6: mean 0.85, sd 0.05, so z 1, -1, -3, -5 and the shift 2, 0, -2, -4.
    The first places weigh their shift plus t = TIE_BREAK; rows listed only past them t / 2 (one list) / (1 - shift).
    A NaN score weighs 0. Standardised over the same places, a list weighs its first places alike at any depth, to
    the last bit (summed over all slots, their sums rounded otherwise at another depth: ties swapped)."""
    ranking = np.array([[3, 1, 4, 2]])
    w = zscore_weights(ranking, np.array([[0.9, 0.8, 0.7, 0.6]]), np.array([np.nan]), places=2, tie_breaks=True)
    t = TIE_BREAK
    np.testing.assert_allclose(w, [[2 + t, t, t / 2 / 3, t / 2 / 5]], rtol=1e-12)
    # a row past the places that another list has in its first places adds nothing there
    two = zscore_weights(np.array([[3, 1, 4, 2], [4, 3, -1, -1]]), np.array([[0.9, 0.8, 0.7, 0.6], [2, 1, 0, 0]]),
                         np.array([np.nan, 0.0]), places=2, tie_breaks=True)
    np.testing.assert_allclose(two[0], [2 + t, t, 0, t / 4 / 5], rtol=1e-12)
    # places past the list: every slot standardised, as without them, plus the tie-break
    ranking, scores = np.array([[2, 0, 1]]), np.array([[0.9, 0.8, 0.7]])
    np.testing.assert_allclose(zscore_weights(ranking, scores, np.array([np.nan]), places=8, tie_breaks=True),
                               zscore_weights(ranking, scores, np.array([np.nan])) + TIE_BREAK, rtol=1e-12)
    nan = zscore_weights(np.array([[0, 1, 2, 3, 4]]), np.array([[0.9, 0.8, 0.7, np.nan, 0.5]]), np.array([np.nan]), 3,
                         tie_breaks=True)
    assert nan[0, 3] == 0 and nan[0, 4] > 0
    plain = zscore_weights(np.array([[0, 1, 2, 3, 4]]), np.array([[0.9, 0.8, 0.7, 0.6, 0.5]]), np.array([np.nan]), 3)
    np.testing.assert_allclose(plain, [[1.5 ** 0.5 * 2, 1.5 ** 0.5, 0, 0, 0]])  # past the places: 0, not below
    rng = np.random.default_rng(7)
    for _ in range(200):
        ranking = np.stack([rng.permutation(12) for _ in range(3)])
        scores = -np.sort(-rng.choice([0.1, 0.4, 0.5, 0.6, 0.9], (3, 12)), axis=-1)
        deep = zscore_weights(ranking, scores, np.array([0.0, np.nan, 0.0]), places=4)
        shallow = zscore_weights(ranking[:, :4], scores[:, :4], np.array([0.0, np.nan, 0.0]), places=4)
        assert np.array_equal(deep[:, :4], shallow)
