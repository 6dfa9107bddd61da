"""The exact ranker: one pass over the matrices for all parts, against brute force, ties, and batches
scored in steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrag.retrieve import exact
from mrag.retrieve import strategies as retrieve


def test_best_of_candidates_best_first_and_ties_to_the_smaller_row():
    # two lines, candidates from two blocks of rows (0-4 and 5-9), each block's best 3 (c = 2)
    values = np.array([[0.9, 0.5, 0.2, 0.9, 0.4, 0.1],  # tie at the top: rows 6 and 1, both candidates
                       [0.7, 0.3, 0.3, 0.3, 0.3, 0.3]])  # tie at the cut: rows 5, 0, 1 (and 2, 7 unseen)
    rows = np.array([[6, 8, 9, 1, 0, 3],
                     [3, 5, 7, 0, 1, 4]])
    full = np.array([[0.4, 0.9, 0.0, 0.1, 0.0, 0.0, 0.9, 0.0, 0.5, 0.2],
                     [0.3, 0.3, 0.3, 0.7, 0.3, 0.3, 0.0, 0.3, 0.0, 0.0]])
    asked = []

    def full_row(j):
        asked.append(j)
        return full[j]

    ranking, sims = exact.best_of(values, rows, 2, full_row)
    assert ranking.tolist() == [[1, 6], [3, 0]]  # line 1 re-ranked from its full row: row 0 wins the tie
    assert sims.tolist() == [[0.9, 0.9], [0.7, 0.3]] and asked == [1]
    ranking, sims = exact.best_of(values[:, :2], rows[:, :2], 4, full_row)  # fewer candidates than c: padded
    assert ranking.tolist() == [[6, 8, -1, -1], [3, 5, -1, -1]] and sims[0, 2] == -np.inf


def test_candidates_keep_each_lines_best_segments(monkeypatch):
    # keep 2 rows, segments of 2 rows, blocks of 4 rows: worked by hand
    monkeypatch.setattr(exact, "SEGMENT_ROWS", 2)
    found = exact.Candidates(keep=2, n=12)
    found.offer(torch.tensor([[0.1, 0.5, 0.2, 0.3],    # no floor yet: both segments of both lines wait
                              [0.6, 0.6, 0.0, 0.1]]), start=0)
    assert found.kept is None and found.waiting.tolist() == [2, 2]
    found.offer(torch.tensor([[0.0, 0.9, 0.4, 0.1],
                              [0.2, 0.3, 0.6, 0.0]]), start=4)
    # 4 segments wait per line, more than keep: merged into each line's best 2 by peak
    # line 0: peaks 0.5, 0.3, 0.9, 0.4 -> segments at rows 4, 0 (floor 0.5); line 1: 0.6, 0.1, 0.3, 0.6 -> 0, 6
    assert found.pending == [] and found.kept is not None
    assert found.kept[1][0].tolist() == [4, 0] and sorted(found.kept[1][1].tolist()) == [0, 6]
    assert found.floor(2).flatten().tolist() == pytest.approx([0.5, 0.6])
    found.offer(torch.tensor([[0.2, 0.45, 0.7, 0.1],   # peaks 0.45, 0.7: only rows 10-11 reach 0.5
                              [0.6, 0.0, 0.3, 0.2]]), start=8)  # peaks 0.6, 0.3: rows 8-9 tie the floor
    assert found.waiting.tolist() == [1, 1] and found.pending[0][3].tolist() == [10, 8]
    values, rows = found.best()
    assert rows[0].tolist() == [5, 10]
    assert len(set(rows[1].tolist())) == 2 and set(rows[1].tolist()) <= {0, 1, 6, 8}  # 0.6 four times: any two
    np.testing.assert_allclose(values, [[0.9, 0.7], [0.6, 0.6]])


@pytest.mark.parametrize("transposed", [False, True])
def test_candidates_match_a_top_k_of_every_row(monkeypatch, transposed):
    """Random lines with ties, a zero line (every row ties) and a NaN row, in blocks of whole
    segments and a ragged last one; the (P, B) view of a (B, P + 1) product as the standard group."""
    monkeypatch.setattr(exact, "SEGMENT_ROWS", 8)
    rng = np.random.default_rng(1)
    for n, keep, block in ((1000, 5, 64), (1000, 40, 96), (203, 11, 16), (30, 50, 8)):
        sims = torch.from_numpy(rng.integers(-50, 50, (4, n)).astype(np.float32) / 7)
        sims[1] = 0  # a zero query: every row ties
        sims[2, 17 % n] = float("nan")  # a NaN row (an index written before NaNs were refused) never ranks
        sims[3, 0], sims[3, 1] = float("nan"), 99.0  # and does not hide the best row beside it
        found = exact.Candidates(keep, n)
        for start in range(0, n, block):
            part = sims[:, start : start + block]
            if transposed:
                buffer = torch.zeros(part.shape[1], 5)
                buffer[:, :4] = part.T
                part = buffer[:, :4].T
            found.offer(part, start)
            # bounded, though line 1 ties everywhere: at most keep segments kept and keep waiting per line
            assert int(found.waiting.max()) <= keep and (found.kept is None or found.kept[0].shape[1] <= keep)
        values, rows = found.best()
        expected = torch.topk(sims.nan_to_num(nan=-torch.inf), min(keep, n), dim=1).values
        assert torch.equal(values, expected)
        real = rows >= 0  # -1 only for the NaN rows, where nothing else is left (keep >= n)
        assert torch.equal(real, values > -torch.inf) and real.sum() >= real.numel() - 2
        assert rows[3, 0] == 1
        assert torch.equal(sims.gather(1, rows.clamp(min=0))[real], values[real])  # each row holds its value
        assert all(len(set(line[line >= 0].tolist())) == int((line >= 0).sum()) for line in rows)  # no row twice


def test_one_block_is_ranked_directly():
    found = exact.Candidates(keep=2, n=3)
    found.offer(torch.tensor([[0.1, 0.5, 0.2]]), start=0)
    values, rows = found.best()
    assert rows.tolist() == [[1, 2]] and found.kept is None and not found.pending
    np.testing.assert_allclose(values, [[0.5, 0.2]])
    found = exact.Candidates(keep=2, n=3)
    found.offer(torch.tensor([[float("nan"), 0.5, 0.2]]), start=0)  # torch would rank NaN first
    assert found.best()[1].tolist() == [[1, 2]]
    found = exact.Candidates(keep=3, n=2)
    found.offer(torch.tensor([[float("nan"), 0.5]]), start=0)  # no row to take the NaN's place: -1
    assert found.best()[1].tolist() == [[1, -1]]


def random_index(n: int = 300, h: int = 3, d: int = 4, dim: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    standard = retrieve.unit(rng.standard_normal((n, dim))).astype(np.float32)
    heads = retrieve.unit(rng.standard_normal((h, n, d))).astype(np.float32)  # (H, N, d)
    parts = [retrieve.QueryVectors(retrieve.unit(rng.standard_normal(dim)), retrieve.unit(rng.standard_normal((h, d))))
             for _ in range(5)]
    return standard, heads, parts


# one block (a top-k), or 3 blocks of 8 segments and a last of 108 rows
@pytest.mark.parametrize("rows_per_block", [None, 64])
def test_exact_ranks_every_space_and_part_as_brute_force(monkeypatch, rows_per_block):
    if rows_per_block:
        monkeypatch.setattr(exact, "BLOCK_ROWS", rows_per_block)
        monkeypatch.setattr(exact, "SEGMENT_ROWS", 8)
    standard, heads, parts = random_index()
    scales = {"heads": np.ones(3), "standard": np.ones(1), "split": np.ones(3)}
    chosen = retrieve.voters("mrag-std", 3, scales)
    assert [v.name for v in chosen] == ["head:0", "head:1", "head:2", "standard"]
    ranking, sims = exact.Exact(standard, heads)(chosen, parts, 7)  # (P, S, c)
    assert ranking.shape == (5, 4, 7)
    for p, q in enumerate(parts):
        for s in range(3):
            brute = heads[s] @ q.heads[s]
            np.testing.assert_array_equal(ranking[p, s], np.argsort(-brute, kind="stable")[:7])
            np.testing.assert_allclose(sims[p, s], np.sort(brute)[::-1][:7], rtol=1e-5)
        np.testing.assert_array_equal(ranking[p, 3], np.argsort(-(standard @ q.standard), kind="stable")[:7])


def tied_index():
    """300 rows with ties: 8 copies of row 7 inside one block of 16 rows (more than c + 1), 4 more in
    other blocks; an external space; a query on those rows and one that is zero everywhere.

    All values are small multiples of 1/8 and the standard vector's split slices (width 4) are +-0.5,
    already of norm 1: every product is exact in float32 whatever order BLAS sums it in, so copies tie
    exactly (with general floats the same row can come out an ulp apart at another position)."""
    rng = np.random.default_rng(0)

    def dyadic(*shape):
        return (rng.integers(-4, 5, shape) / 8).astype(np.float32)

    standard = (rng.choice([-0.5, 0.5], (300, 12))).astype(np.float32)
    heads, extra = dyadic(3, 300, 4), {"other": dyadic(300, 6)}
    copies = [8, 9, 10, 11, 12, 13, 14, 40, 41, 150, 299]
    standard[copies], heads[:, copies], extra["other"][copies] = standard[7], heads[:, [7]], extra["other"][7]
    parts = [retrieve.QueryVectors(standard[7], heads[:, 7], {"other": extra["other"][7]})]
    parts.append(retrieve.QueryVectors(np.zeros(12), np.zeros((3, 4)), {"other": np.zeros(6)}))  # all tie
    parts += [retrieve.QueryVectors(standard[i] * 0.5, dyadic(3, 4), {"other": dyadic(6)}) for i in (3, 60, 200)]
    return standard, heads, extra, parts


@pytest.mark.parametrize("strategy", ["mrag-std", "split", "spaces"])
@pytest.mark.parametrize("c", [3, 5, 13, 20, 40, 400])  # below, at and past the 12 tied rows, past a block, past N
@pytest.mark.parametrize("n_parts", [1, 5])
def test_blocks_of_rows_give_the_whole_scan_result_ties_included(monkeypatch, strategy, c, n_parts):
    standard, heads, extra, parts = tied_index()
    scales = {"heads": np.ones(3), "standard": np.ones(1), "split": np.ones(3), "space:other": np.ones(1)}
    chosen = retrieve.voters(strategy, 3, scales, ["other"])
    queries = parts[:n_parts]
    whole = exact.Exact(standard, heads, extra)(chosen, queries, c)
    # a last block shorter than lowprec.SPACE_RESCORE_ROWS joins the one before: 18 blocks of whole
    # segments, the last of 28 rows; blocks of 15, the last of 30; blocks rounded up to one 64-row
    # segment, the last of 108 rows; blocks of 14 rows, the last of 20: the last two pad a ragged segment
    for rows_per_block, segment in ((16, 4), (16, 5), (16, 64), (16, 7)):
        monkeypatch.setattr(exact, "BLOCK_ROWS", rows_per_block)
        monkeypatch.setattr(exact, "SEGMENT_ROWS", segment)
        blocked = exact.Exact(standard, heads, extra)(chosen, queries, c)
        np.testing.assert_array_equal(whole[0], blocked[0])
        np.testing.assert_allclose(whole[1], blocked[1], rtol=1e-6)
    tied = [7, 8, 9, 10, 11, 12, 13, 14, 40, 41, 150, 299]
    for s, voter in enumerate(chosen):
        if voter.group == "standard":  # the copies are the query's own row, its best: smaller rows first
            assert whole[0][0, s, : min(c, 12)].tolist() == tied[:c]
        if n_parts > 1:  # a zero query ties every row: rows in order
            assert whole[0][1, s, : min(c, 300)].tolist() == list(range(min(c, 300)))
    if c >= 300:
        assert (whole[0][..., 300:] == -1).all() and (whole[1][..., 300:] == -np.inf).all()


def test_the_whole_scan_matches_a_stable_brute_force_in_every_space():
    standard, heads, extra, parts = tied_index()
    scales = {"heads": np.ones(3), "standard": np.ones(1), "split": np.ones(3), "space:other": np.ones(1)}
    chosen = retrieve.voters("mrag-std", 3, scales) + retrieve.voters("spaces", 3, scales, ["other"])[1:]
    ranking, _ = exact.Exact(standard, heads, extra)(chosen, parts, 20)
    for p, q in enumerate(parts):
        for s, voter in enumerate(chosen):
            if voter.group == "heads":
                brute = heads[voter.index] @ q.heads[voter.index]
            else:
                brute = (standard @ q.standard) if voter.group == "standard" else extra["other"] @ q.extra["other"]
            np.testing.assert_array_equal(ranking[p, s], np.argsort(-brute, kind="stable")[:20])


def test_voters_of_a_group_must_be_listed_together():
    standard, heads, parts = random_index()
    chosen = retrieve.voters("mrag-std", 3, {"heads": np.ones(3), "standard": np.ones(1)})
    with pytest.raises(ValueError, match="listed together"):
        exact.Exact(standard, heads)([chosen[0], chosen[3], chosen[1]], parts, 5)


def test_large_batches_are_scored_in_steps_with_the_same_result(monkeypatch):
    standard, heads, parts = random_index()
    chosen = retrieve.voters("mrag-std", 3, {"heads": np.ones(3), "standard": np.ones(1)})
    whole = exact.Exact(standard, heads)(chosen, parts, 5)
    monkeypatch.setattr(exact, "SCORE_BYTES", 2 * 4 * 16 * (5 + 1) * exact.SEGMENT_ROWS)  # 2 parts of 4 voters
    stepped = exact.Exact(standard, heads)(chosen, parts, 5)
    np.testing.assert_array_equal(whole[0], stepped[0])
    np.testing.assert_allclose(whole[1], stepped[1], rtol=1e-6)  # other GEMM blocking: last-bit differences


def test_a_batch_votes_as_its_queries_one_by_one():
    standard, heads, parts = random_index()
    scales = {"heads": np.array([1.0, 2.0, 0.5]), "standard": np.ones(1), "split": np.ones(3)}
    ranker = exact.Exact(standard, heads)
    batch = [(parts[0], None), (parts[1], parts[1:4]), (parts[4], None)]
    for strategy in ("mrag", "mrag-paper", "standard", "interleave+mrag-std"):
        together = retrieve.vote_many(strategy, batch, 5, 8, scales, ranker, 3)
        alone = [retrieve.vote(strategy, q, 5, 8, scales, ranker, 3, p) for q, p in batch]
        assert [r.rows.tolist() for r in together] == [r.rows.tolist() for r in alone], strategy


def test_a_question_sentence_splits_into_its_questions():
    assert retrieve.split_questions("What is sourdough, how did Jenner use cowpox, and why do bees fan?") == [
        "What is sourdough", "how did Jenner use cowpox", "why do bees fan?"]
    assert retrieve.split_questions("Is it red, blue, or green?") == ["Is it red, blue, or green?"]
    assert retrieve.split_questions("Ann met Bob, who was a baker.") == ["Ann met Bob, who was a baker."]  # no question
    assert retrieve.segment_query("Bees fan. How do tides work, and what is a neap tide?") == [
        "Bees fan.", "How do tides work", "what is a neap tide?"]
    assert retrieve.segment_query("Ann sang. Bob ran. Cy hid.", 2) == ["Ann sang. Bob ran.", "Cy hid."]
    assert retrieve.segment_query("How did John F. Kennedy die?") == ["How did John F. Kennedy die?"]
    for one_question in ("Is it true that cats, which are mammals, purr?", "How do I, as a new user, do X?",
                         "What happened in 1989, when the Berlin Wall fell?", "When, where and how did it happen?"):
        assert retrieve.split_questions(one_question) == [one_question]
    # one question about two things stays whole: nothing tells where one aspect ends
    assert retrieve.query_parts("mrag", "How did Roman legions and irrigation shape cities?") == []


def test_nothing_to_rank():
    standard, heads, parts = random_index()
    scales = {"heads": np.ones(3), "standard": np.ones(1), "split": np.ones(3)}
    ranker = exact.Exact(standard[:0], heads[:, :0])
    assert retrieve.vote_many("mrag", [], 5, 8, scales, ranker, 3) == []
    result = retrieve.vote("mrag-std", parts[0], 5, 8, scales, ranker, 3)
    assert result.rows.tolist() == []


def test_the_default_ranks_a_one_part_query_by_the_standard_vector():
    """`mrag`: a query of one part (one sentence, one question) is ranked as `standard` ranks it; a
    query of several parts as `segment+mrag-std` does."""
    rng = np.random.default_rng(4)
    n, h, d, dim = 40, 3, 4, 6
    standard = retrieve.unit(rng.standard_normal((n, dim)))
    heads = retrieve.unit(rng.standard_normal((h, n, d)))
    scales = {"heads": np.array([1.0, 2.0, 0.5]), "standard": np.array([0.7]), "split": np.ones(3)}

    def query() -> retrieve.QueryVectors:
        standard_q, heads_q = rng.standard_normal(dim), rng.standard_normal((h, d))
        return retrieve.QueryVectors(retrieve.unit(standard_q), retrieve.unit(heads_q))

    one, parts = query(), [query(), query()]
    for name, q, p, same_as in [("mrag", one, None, "standard"), ("mrag", one, parts, "segment+mrag-std")]:
        got = exact.run(name, standard, heads, q, 5, 8, scales, parts=p)
        want = exact.run(same_as, standard, heads, q, 5, 8, scales, parts=p)
        assert got.rows.tolist() == want.rows.tolist() and np.allclose(got.scores, want.scores)
    assert exact.run("segment+mrag-std", standard, heads, one, 5, 8, scales).rows.tolist() == \
        exact.run("mrag-std", standard, heads, one, 5, 8, scales).rows.tolist()  # the named one keeps the heads


def test_a_multi_part_query_names_the_votes_behind_each_row_it_keeps():
    """Two parts, two heads (scales 1 and 0.5), c = 2, worked by hand. Part 0: head 0 ranks [3, 1], head 1
    [1, 3] -> row 3 1 + 0.25 = 1.25, row 1 0.5 + 0.5 = 1.0. Part 1: head 0 [2, 0], head 1 [2, 4] -> row 2
    1.5. Consensus of the first choices: 2 (1.5) before 3 (1.25); each row's votes are those of its part."""
    lists = {0: [[3, 1], [1, 3]], 1: [[2, 0], [2, 4]]}

    def ranker(chosen, queries, c):
        ranking = np.array([lists[i] for i in range(len(queries))])  # (P, S, c)
        return ranking, np.full(ranking.shape, 0.5)

    part = retrieve.QueryVectors(np.ones(4), np.ones((2, 2)))
    scales = {"heads": np.array([1.0, 0.5]), "standard": np.ones(1), "split": np.ones(2)}
    [result] = retrieve.vote_many("segment+mrag-paper", [(part, [part, part])], 2, 2, scales, ranker, 2)
    assert result.rows.tolist() == [2, 3] and result.scores.tolist() == [1.5, 1.25]
    assert result.votes == [
        [{"space": "head:0", "rank": 0, "weight": 1.0, "part": 1},
         {"space": "head:1", "rank": 0, "weight": 0.5, "part": 1}],
        [{"space": "head:0", "rank": 0, "weight": 1.0, "part": 0},
         {"space": "head:1", "rank": 1, "weight": 0.25, "part": 0}],
    ]


def test_a_part_list_naming_a_row_twice_gives_it_one_vote():
    """One-list parts (standard, bm25): the kept row's vote is the one at its first place in its part."""
    def ranker(chosen, queries, c):
        ranking = np.array([[[4, 4, 1]], [[2, 3, 0]]])  # (P, S=1, c): part 0 names row 4 twice
        return ranking, np.array([[[0.9, 0.8, 0.1]], [[0.7, 0.6, 0.5]]])

    part = retrieve.QueryVectors(np.ones(4), np.ones((2, 2)))
    scales = {"heads": np.ones(2), "standard": np.ones(1), "split": np.ones(2)}
    [result] = retrieve.vote_many("segment+standard", [(part, [part, part])], 2, 3, scales, ranker, 2)
    assert result.rows.tolist() == [4, 2]
    assert result.votes == [[{"space": "standard", "rank": 0, "weight": 0.9, "part": 0}],
                            [{"space": "standard", "rank": 0, "weight": 0.7, "part": 1}]]


def test_each_kept_row_is_credited_to_the_part_that_ranked_it_best():
    """Row 7 is second in part 0 and first in part 1: part 1. Row 5 is first in parts 0 and 2: the earliest
    part, 0. Row 9 is third in part 1 alone. Row 8 is in no list: (0, 0, 0.0)."""
    lists = [retrieve.Result(np.array(rows), np.array(scores), []) for rows, scores in
             [([5, 7], [0.9, 0.8]), ([7, 3, 9], [0.7, 0.6, 0.5]), ([5], [0.4])]]
    best = retrieve._best_places(lists, np.array([7, 5, 9, 8]))
    assert best == [(1, 0, 0.7), (0, 0, 0.9), (1, 2, 0.5), (0, 0, 0.0)]
