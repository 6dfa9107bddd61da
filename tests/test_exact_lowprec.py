"""The bf16 scan of the heads (`mrag.retrieve.lowprec`) returns exactly what the fp32 scan returns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrag.retrieve import exact, lowprec
from mrag.retrieve import strategies as retrieve

SCALES = {"heads": np.linspace(0.5, 2, 3), "standard": np.ones(1), "split": np.ones(3)}


@pytest.fixture(autouse=True)
def _always_bf16(monkeypatch):
    """Small test indexes take the bf16 pass too (it is skipped where it would not pay)."""
    monkeypatch.setattr(lowprec, "MIN_ROWS", 0)
    monkeypatch.setattr(lowprec, "SPACE_ROWS_PER_PART", 0)
    monkeypatch.setattr(lowprec, "SPACE_ONE_PART_ROWS", 0)


def unit(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return retrieve.unit(rng.standard_normal(shape)).astype(np.float32)


def hard_index(n: int, h: int = 3, d: int = 8, dim: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors with exact duplicates, rows equal in bf16 but not in fp32, and rows a bf16 step apart."""
    rng = np.random.default_rng(seed)
    standard, heads = unit(rng, (n, dim)), unit(rng, (h, n, d))
    copies = rng.choice(n, size=(3, n // 10), replace=False)  # (from, to, near)
    heads[:, copies[1]] = heads[:, copies[0]]  # ties: the same vector twice
    nudge = rng.standard_normal((h, n // 10, d)).astype(np.float32) * 1e-5  # below bf16's resolution
    heads[:, copies[2]] = retrieve.unit(heads[:, copies[0]] + nudge).astype(np.float32)
    standard[copies[1]] = standard[copies[0]]
    return standard, heads


def queries_near(rng: np.random.Generator, heads: np.ndarray, dim: int, count: int) -> list[retrieve.QueryVectors]:
    """Queries that point at a row (many near-ties at the top) or anywhere."""
    out = []
    for i in range(count):
        near = heads[:, rng.integers(heads.shape[1])] if i % 2 else unit(rng, heads[:, 0].shape)
        out.append(retrieve.QueryVectors(unit(rng, (dim,)), retrieve.unit(near + 0.05 * unit(rng, near.shape))))
    return out


def both(standard: np.ndarray, heads: np.ndarray, chosen: list, parts: list, c: int) -> None:
    """bf16 and fp32 scans agree bit for bit. One part of a space from SPACE_RESCORE_ROWS rows scans
    in bf16 as two equal columns: it matches the fp32 scan of the part twice (a product of two columns)
    bit for bit, and the fp32 scan of the part alone (a matrix-vector product) in rows and up to the
    last bit of its scores."""
    bf16 = exact.Exact(standard, heads, precision="bf16")(chosen, parts, c)
    doubled = len(parts) == 1 and len(standard) >= lowprec.SPACE_RESCORE_ROWS
    fp32 = exact.Exact(standard, heads, precision="fp32")(chosen, parts * 2 if doubled else parts, c)
    if doubled:
        alone = exact.Exact(standard, heads, precision="fp32")(chosen, parts, c)
        np.testing.assert_array_equal(bf16[0], alone[0])  # these tests' indexes hold no rows an ulp apart
        np.testing.assert_allclose(bf16[1], alone[1], rtol=0, atol=1e-6)
    if doubled:  # the same kernel's sums on some CPUs, not all: rows and scores up to the last bits
        same_up_to_last_bits((bf16[0], bf16[1]), (fp32[0][:1], fp32[1][:1]))
        return
    np.testing.assert_array_equal(bf16[0], fp32[0])
    np.testing.assert_array_equal(bf16[1], fp32[1])  # bit for bit


def same_up_to_last_bits(found: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray]) -> None:
    """Scores within 1e-6 and the same rows, in the same places but within a run of places whose wanted
    scores lie within 1e-6 of each other (those rows may come in any order). One part of a space is
    re-scored by a product of two columns like the scan's: on the CPUs these tests were written on its sums
    were the scan's bit for bit; on an AVX2-only AMD EPYC (2026-12) BLAS rounds some an ulp or two apart."""
    np.testing.assert_allclose(found[1], want[1], rtol=0, atol=1e-6)
    c = want[0].shape[-1]
    for got, rows, scores in zip(found[0].reshape(-1, c), want[0].reshape(-1, c), want[1].reshape(-1, c)):
        start = 0
        for end in range(1, c + 1):
            if end == c or abs(scores[end] - scores[end - 1]) > 1e-6:  # a run of near-equal places ends
                assert sorted(got[start:end]) == sorted(rows[start:end]), (got, rows, scores)
                start = end


@pytest.fixture(params=["block-diagonal", "per head"])
def layout(request, monkeypatch):
    """Both products of the scan: one against the parts laid block-diagonally, or one per head."""
    monkeypatch.setattr(lowprec, "BLOCK_DIAGONAL_WORK", 10**6 if request.param == "block-diagonal" else 0)
    return request.param


@pytest.mark.parametrize("strategy", ["mrag-paper", "mrag-std", "mrag"])
@pytest.mark.parametrize("n_parts, c", [(1, 5), (6, 20), (40, 33)])
def test_bf16_scan_returns_the_fp32_ranking_and_scores(monkeypatch, layout, strategy, n_parts, c):
    monkeypatch.setattr(lowprec, "BLOCK_BYTES", 1)  # blocks of SMALL_ROWS rows: many blocks and floor raises
    raised = []
    real = lowprec.HeadScan.raise_floor
    monkeypatch.setattr(lowprec.HeadScan, "raise_floor", lambda self: (raised.append(1), real(self))[1])
    standard, heads = hard_index(3000)
    rng = np.random.default_rng(1)
    chosen = retrieve.voters(retrieve.parse_strategy(strategy).base, 3, SCALES)
    both(standard, heads, chosen, queries_near(rng, heads, 24, n_parts), c)
    assert len(raised) > 1  # raised while scanning, not only at the end


@pytest.mark.parametrize("spread", [0.02, 0.05, 0.1])
def test_a_cluster_finer_than_bf16_ranks_as_in_fp32(monkeypatch, layout, spread):
    """300 rows around the query score 0.99-1.0: bf16 (steps of 2^-8 there) reorders them, so rows of
    the fp32 top c score below the bf16 c-th best: only the error margin keeps them."""
    monkeypatch.setattr(lowprec, "BLOCK_BYTES", 2 * 128 * 6)  # blocks of 128 rows
    rng = np.random.default_rng(11)
    standard, heads = hard_index(4000)
    centre = unit(rng, (3, 8))
    rows = rng.choice(4000, 300, replace=False)
    heads[:, rows] = retrieve.unit(centre[:, None] + spread * rng.standard_normal((3, 300, 8))).astype(np.float32)
    q = retrieve.QueryVectors(unit(rng, (24,)), centre)
    both(standard, heads, retrieve.voters("mrag-paper", 3, SCALES), [q, q], 33)


def test_a_query_equal_to_duplicated_rows_ties_at_the_cut(layout):
    standard, heads = hard_index(700, seed=3)
    heads[:, 100:140] = heads[:, 7:8]  # 41 copies of row 7: the tie runs past c
    q = retrieve.QueryVectors(unit(np.random.default_rng(2), (24,)), heads[:, 7].copy())
    chosen = retrieve.voters("mrag-paper", 3, SCALES)
    both(standard, heads, chosen, [q, q], 33)


def test_a_selection_of_heads_and_a_last_block_that_ends_inside_a_segment(monkeypatch, layout):
    monkeypatch.setattr(lowprec, "BLOCK_BYTES", 1)  # blocks of SMALL_ROWS rows
    standard, heads = hard_index(1001, h=4)
    rng = np.random.default_rng(4)
    scales = {"heads": np.ones(4), "standard": np.ones(1), "split": np.ones(4)}
    chosen = retrieve.voters("mrag-std", 4, scales, select=["head:1", "head:3", "standard"])
    both(standard, heads, chosen, queries_near(rng, heads, 24, 3), 10)


def test_fewer_rows_than_c_and_negative_scores(layout):
    rng = np.random.default_rng(5)
    standard, heads = unit(rng, (70, 24)), unit(rng, (3, 70, 8))  # 70 rows: the bf16 pass runs (>= SMALL_ROWS)
    chosen = retrieve.voters("mrag-paper", 3, SCALES)
    q = retrieve.QueryVectors(unit(rng, (24,)), -heads[:, 3])  # every score of row 3 is -1: most are < 0
    ranker = exact.Exact(standard, heads, precision="bf16")
    assert ranker.heads_bf16(chosen, ranker.query_matrix("heads", chosen, [q]), 81) is not None
    both(standard, heads, chosen, [q], 80)


def test_heads_out_of_order_and_a_short_last_block(monkeypatch, layout):
    """Heads 3 and 1 of four, in that order; 1001 rows padded to 1024, blocks of 96 rows: the last has 64."""
    standard, heads = hard_index(1001, h=4)
    monkeypatch.setattr(lowprec, "BLOCK_BYTES", 2 * 6 * 96)  # 2 heads x 3 parts = 6 lines
    chosen = [retrieve.Voter("head:3", "heads", 1.0), retrieve.Voter("head:1", "heads", 0.5)]
    both(standard, heads, chosen, queries_near(np.random.default_rng(13), heads, 24, 3), 12)


def test_a_value_past_bf16s_range_in_a_head_not_searched_scans_in_fp32(layout):
    """3.4e38 is a finite fp32 but rounds to bf16 inf: in the block-diagonal product the zero set against
    that head would make NaN of its rows' scores in every head."""
    standard, heads = hard_index(500)
    heads[2, :40, 0] = 3.4e38
    chosen = retrieve.voters("mrag-paper", 3, SCALES, select=["head:0", "head:1"])
    ranker = exact.Exact(standard, heads, precision="bf16")
    parts = queries_near(np.random.default_rng(14), heads, 24, 2)
    assert ranker.heads_bf16(chosen, ranker.query_matrix("heads", chosen, parts), 6) is None
    both(standard, heads, chosen, parts, 5)


def test_too_many_ties_fall_back_to_the_fp32_scan(monkeypatch):
    monkeypatch.setattr(lowprec, "KEPT_BYTES", 1)
    standard, heads = hard_index(2000)
    chosen = retrieve.voters("mrag-paper", 3, SCALES)
    ranker = exact.Exact(standard, heads, precision="bf16")
    assert ranker.heads_bf16(chosen, ranker.query_matrix("heads", chosen, queries_near(np.random.default_rng(6), heads,
                                                                                       24, 2)), 6) is None
    both(standard, heads, chosen, queries_near(np.random.default_rng(6), heads, 24, 2), 5)


def test_heads_with_nan_scan_in_fp32():
    standard, heads = hard_index(500)
    heads[1, 17] = np.nan
    chosen = retrieve.voters("mrag-paper", 3, SCALES)
    ranker = exact.Exact(standard, heads, precision="bf16")
    parts = queries_near(np.random.default_rng(7), heads, 24, 2)
    assert ranker.heads_bf16(chosen, ranker.query_matrix("heads", chosen, parts), 6) is None
    assert lowprec.bf16_copy(heads).rows.numel() == 0  # the copy it will never scan is not kept
    both(standard, heads, chosen, parts, 5)


def test_the_bf16_pass_is_skipped_where_it_would_not_pay(monkeypatch):
    monkeypatch.setattr(lowprec, "MIN_ROWS", 20_000)
    assert lowprec.worth_it(20_000, 1) and lowprec.worth_it(10_000, 2304) and not lowprec.worth_it(10_000, 72)
    standard, heads = hard_index(500)
    ranker = exact.Exact(standard, heads, precision="bf16")
    chosen = retrieve.voters("mrag-paper", 3, SCALES)
    parts = queries_near(np.random.default_rng(12), heads, 24, 2)
    assert ranker.heads_bf16(chosen, ranker.query_matrix("heads", chosen, parts), 6) is None


def test_unknown_precision():
    with pytest.raises(ValueError, match="precision"):
        exact.Exact(np.zeros((1, 2), np.float32), np.zeros((1, 1, 2), np.float32), precision="int4")


def test_the_environment_picks_the_precision(monkeypatch):
    standard, heads = np.zeros((1, 2), np.float32), np.zeros((1, 1, 2), np.float32)
    # bf16 only where the CPU has bf16 kernels (the bf16 scan was up to 62x slower than fp32 on an AVX2-only CPU)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    assert exact.Exact(standard, heads).precision == "bf16"
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)  # oneDNN turned off: no kernels
    assert exact.Exact(standard, heads).precision == "fp32"
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", True)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False, raising=False)
    assert exact.Exact(standard, heads).precision == "fp32"
    monkeypatch.setenv("MRAG_EXACT_PRECISION", "bf16")  # asked for: bf16 all the same
    assert exact.Exact(standard, heads).precision == "bf16"

    def no_onednn() -> bool:
        raise RuntimeError("torch was built without oneDNN")

    monkeypatch.delenv("MRAG_EXACT_PRECISION")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", no_onednn, raising=False)
    assert exact.Exact(standard, heads).precision == "fp32"
    monkeypatch.setenv("MRAG_EXACT_PRECISION", "fp32")
    assert exact.Exact(standard, heads).precision == "fp32"
    assert exact.Exact(standard, heads, precision="bf16").precision == "bf16"  # an explicit one wins
    monkeypatch.setenv("MRAG_EXACT_PRECISION", "fp8")
    with pytest.raises(ValueError, match="MRAG_EXACT_PRECISION must be one of bf16, fp32, got 'fp8'"):
        exact.Exact(standard, heads)


def test_the_error_bound_worked_by_hand():
    """q = x = [v], v = 1 + 2^-8 + 2^-20: bf16 rounds each up to 1 + 2^-7 (just above the half step),
    an error e = 2^-8 - 2^-20. The product's fp32 sum (1 + 2^-7)^2 = 1 + 2^-6 + 2^-14 is off q.x = v^2
    by e (x~ + x) = 2.01172 e; the bound ||q|| e + e ||x|| (1 + u) = v e (2 + u) = 2.01177 e (plus
    gamma_1 and the norms' margin). Rounded to bf16 the product is 1 + 2^-6 = 1.015625."""
    v, e = 1 + 2**-8 + 2**-20, 2**-8 - 2**-20
    copy = lowprec.Bf16Copy(np.array([[v]], dtype=np.float32))
    assert copy.row_norm.item() == pytest.approx(v, rel=1e-7) and copy.row_error.item() == pytest.approx(e, rel=1e-6)
    q = torch.tensor([[v]])
    approx = torch.bmm(q[None].to(torch.bfloat16), q[None].to(torch.bfloat16).transpose(1, 2)).float().item()
    assert approx == 1.015625
    summed = (1 + 2**-7) ** 2  # exact in float64
    off = summed - v * v
    assert off == pytest.approx(e * (2 + 2**-7 + 2**-8 + 2**-20), rel=1e-12)
    bound = lowprec.error_bound(q, copy.row_norm, copy.row_error).item()
    assert off <= bound <= off * 1.002  # tight: the rows' and the query's own errors, not 2u


def test_the_error_bound_holds_on_random_vectors():
    rng = np.random.default_rng(8)
    x = unit(rng, (20000, 32))
    q = torch.from_numpy(unit(rng, (64, 32)))
    copy = lowprec.Bf16Copy(x)
    summed = q.to(torch.bfloat16).double() @ copy.rows[:20000].double().T  # q~.x~, (64, N)
    truth = q @ torch.from_numpy(x).T  # the fp32 scores
    bound = lowprec.error_bound(q, copy.row_norm.expand(64), copy.row_error.expand(64))
    assert bool(((summed - truth.double()).abs() <= bound[:, None]).all())
    assert float(bound.max()) < 1.5 * lowprec.BF16_UNIT  # the coordinate-wise bound, 2u + u^2, is looser


def test_a_row_at_the_threshold_is_never_skipped():
    """The keep rule on random rounded products: a row whose fp32 score reaches T has a rounded
    product at least bits_at_most(T - error)."""
    rng = np.random.default_rng(12)
    x = unit(rng, (5000, 32))
    q = torch.from_numpy(unit(rng, (8, 32)))
    copy = lowprec.Bf16Copy(x)
    products = (q.to(torch.bfloat16) @ copy.rows[:5000].T).view(torch.int16)  # (8, N) bf16 bits
    truth = (q @ torch.from_numpy(x).T).double()
    error = lowprec.error_bound(q, copy.row_norm.expand(8), copy.row_error.expand(8))
    for t in [-0.2, 0.0, 0.1, 0.3, 0.45, 0.6]:
        least = lowprec.bits_at_most(torch.full((8,), t) - error)
        reach = truth >= t
        assert bool((products[reach] >= least[:, None].expand_as(products)[reach]).all()), t


def test_peaks_on_int16_bits_never_skip_a_segment_that_may_reach_the_threshold():
    rng = np.random.default_rng(9)
    values = torch.from_numpy(rng.standard_normal((64, lowprec.SEGMENT_ROWS, 1, 1)).astype(np.float32))
    values[0, :, 0, 0] = -torch.rand(lowprec.SEGMENT_ROWS)  # a segment below 0
    values[1, 0, 0, 0] = 0.0
    products = values.to(torch.bfloat16)  # (S, seg, h, P)
    peaks = lowprec.segment_peaks(products).flatten()  # (S,) int16
    true_peaks = products.float().amax(1).flatten()
    grid = torch.arange(2**15 - 2**7, dtype=torch.int16).view(torch.bfloat16).double()  # every finite bf16 >= 0
    for threshold in [-1.0, -0.01, 0.0, 1e-30, 0.3, 0.5000001, 1.2, float(true_peaks.max())]:
        kept = peaks >= lowprec.bits_at_most(torch.tensor([threshold], dtype=torch.float64))
        assert bool(kept[true_peaks >= threshold].all()), threshold  # never skips one that reaches it
        if threshold > 0:  # above 0 exactly the peaks from the largest bf16 <= threshold up (a rounding of >= it)
            below = float(grid[grid <= threshold].max())
            assert torch.equal(kept[true_peaks >= 0], true_peaks[true_peaks >= 0] >= below), threshold
    lower = lowprec.bits_value(peaks)
    assert bool((lower <= true_peaks).all()) and bool((lower[true_peaks >= 0] == true_peaks[true_peaks >= 0]).all())


def test_the_rounding_error_of_tiny_rows_is_measured():
    """Scaling by a power of two changes no rounding: the measured norms and errors scale with it (up
    to the fp32 norms' rounding: tiny rows are measured in float64, where the squares of errors near
    2^-79 do not underflow to 0, as they did in fp32 and the margin lost them)."""
    rng = np.random.default_rng(13)
    x = unit(rng, (2, 500, 3))
    one, tiny = lowprec.Bf16Copy(x), lowprec.Bf16Copy(x * np.float32(2.0**-70))
    assert bool((one.row_error > 0).all())
    np.testing.assert_allclose(tiny.row_error.numpy(), one.row_error.numpy() * 2.0**-70, rtol=1e-6)
    np.testing.assert_allclose(tiny.row_norm.numpy(), one.row_norm.numpy() * 2.0**-70, rtol=1e-6)


def test_rows_scaled_near_the_smallest_normal_rank_as_in_fp32():
    """Products below 2^-126 are subnormal, and bf16 units may flush them to zero: the bound's absolute
    term covers what that loses (heads scaled by 2^-120 ranked otherwise without it)."""
    rng = np.random.default_rng(15)
    heads = unit(rng, (2, 4000, 32))
    standard = unit(rng, (4000, 16))
    chosen = [v for v in retrieve.voters("mrag-paper", 2, {"heads": np.ones(2), "standard": np.ones(1)})
              if v.group == "heads"]
    parts = [retrieve.QueryVectors(unit(rng, (16,)),
                                   retrieve.unit(heads[:, rng.integers(4000)] + 0.3 * rng.standard_normal((2, 32))))
             for _ in range(6)]
    for e in (-100, -120, -124):
        both(standard, (heads * np.float32(2.0**e)).astype(np.float32), chosen, parts, 10)


def test_a_1024_dimension_space_ranks_as_in_fp32():
    """At D = 1024, BLAS on 2 threads splits the sums of a product of fewer than about 384 rows: the
    re-score pads the rows it scores to SPACE_RESCORE_ROWS, as many as the scan's blocks hold at least."""
    rng = np.random.default_rng(14)
    standard, heads = unit(rng, (6000, 1024)), unit(rng, (1, 6000, 4))
    chosen = [retrieve.Voter("standard", "standard", 1.0)]
    for _ in range(3):
        centre = standard[rng.integers(6000)]
        parts = [retrieve.QueryVectors(retrieve.unit(centre + 0.8 * unit(rng, (1024,))).astype(np.float32),
                                       unit(rng, (1, 4))) for _ in range(4)]
        both(standard, heads, chosen, parts, 10)


def test_kth_best_peak_per_line_worked_by_hand():
    """Lines 0 and 1 hold peaks 0.5, 0.75, 0.625 and 0.25, 1.0; line 2 none: the 2nd best are 0.625, 0.25."""
    line = torch.tensor([0, 1, 0, 0, 1])
    peak = torch.tensor([0.5, 0.25, 0.75, 0.625, 1.0], dtype=torch.bfloat16).view(torch.int16)
    assert lowprec.kth_best(line, peak, 2, 3).tolist() == [0.625, 0.25, -np.inf]
    assert lowprec.kth_best(line, peak, 3, 3).tolist() == [0.5, -np.inf, -np.inf]
    assert lowprec.kth_best(line[:0], peak[:0], 1, 2).tolist() == [-np.inf, -np.inf]


def test_the_bf16_copy_is_made_once_per_array_and_row_major():
    rng = np.random.default_rng(10)
    heads = unit(rng, (2, 2500, 4))
    copy = lowprec.bf16_copy(heads)
    assert lowprec.bf16_copy(heads) is copy
    assert copy.rows.shape == (2528, 8)  # 2500 rows padded to whole segments of 32, heads side by side
    apart = copy.rows.view(-1, 2, 4).transpose(0, 1)  # (H, N', d)
    np.testing.assert_array_equal(apart[:, :2500].float().numpy(), torch.from_numpy(heads).to(torch.bfloat16).float())
    assert not apart[:, 2500:].any()


def test_the_block_diagonal_query_matrix_worked_by_hand():
    """Heads 2 and 0 of three (d = 2), two parts: line block j holds head index[j]'s parts."""
    q = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]])  # (h=2, P=2, d=2)
    laid = lowprec.block_diagonal(q, [2, 0], heads=3)
    expected = torch.tensor([
        [0.0, 0.0, 5.0, 7.0],  # head 0's coordinates meet line block 1
        [0.0, 0.0, 6.0, 8.0],
        [0.0, 0.0, 0.0, 0.0],  # head 1: not searched
        [0.0, 0.0, 0.0, 0.0],
        [1.0, 3.0, 0.0, 0.0],  # head 2's coordinates meet line block 0
        [2.0, 4.0, 0.0, 0.0],
    ])
    assert torch.equal(laid, expected)
    row = torch.arange(6.0)[None]  # one row, heads side by side: (0, 1 | 2, 3 | 4, 5)
    assert (row @ laid).tolist() == [[4 + 10, 12 + 20, 6, 8]]  # head 2 . parts, then head 0 . parts


def test_a_small_real_index_ranks_the_same_in_bf16(index):
    texts = [f"Chunk {i} about topic {i % 7}: sailors, spices and storms, part {i}." for i in range(300)]
    index.add([{"id": f"d{i}", "text": t} for i, t in enumerate(texts)])
    matrix = index.store.matrix()
    emb = index.embedder.embed(["storms at sea", "spices and silk", "topic 3"], kind="query")
    parts = [retrieve.QueryVectors(retrieve.unit(s), retrieve.unit(h)) for s, h in zip(emb.standard, emb.heads)]
    n_heads = matrix.heads.shape[0]
    scales = {"heads": np.ones(n_heads), "standard": np.ones(1), "split": np.ones(n_heads)}
    both(matrix.standard, matrix.heads, retrieve.voters("mrag-std", n_heads, scales), parts, 10)


@pytest.mark.parametrize("strategy", ["segment+standard", "spaces", "mrag-std"])
@pytest.mark.parametrize("n_parts, c", [(1, 5), (2, 5), (6, 20), (40, 33)])
def test_one_spaces_bf16_scan_returns_the_fp32_ranking_and_scores(monkeypatch, layout, strategy, n_parts, c):
    """The standard vector and an external space scan in bf16 too: rows equal in bf16 but not in fp32,
    exact copies, and a cluster around the first part finer than bf16's step. (One part: the fp32
    scan's matrix-vector sums may differ from the re-score's in the last bit.)"""
    monkeypatch.setattr(lowprec, "BLOCK_BYTES", 1)  # blocks of SMALL_ROWS rows: many blocks and floor raises
    standard, heads = hard_index(3000, dim=96)
    rng = np.random.default_rng(15)
    centre = unit(rng, (96,))
    cluster = rng.choice(3000, 200, replace=False)
    standard[cluster] = retrieve.unit(centre + 0.03 * rng.standard_normal((200, 96))).astype(np.float32)
    extra = {"e5": unit(rng, (3000, 40))}
    extra["e5"][cluster[:50]] = extra["e5"][cluster[50:100]]  # ties in the external space
    parts = [retrieve.QueryVectors(centre if i == 0 else unit(rng, (96,)), unit(rng, (3, 8)), {"e5": unit(rng, (40,))})
             for i in range(n_parts)]
    scales = {**SCALES, "space:e5": np.ones(1)}
    chosen = retrieve.voters(retrieve.parse_strategy(strategy).base, 3, scales, extra=["e5"])
    fp32 = exact.Exact(standard, heads, extra, precision="fp32")(chosen, parts, c)
    bf16 = exact.Exact(standard, heads, extra, precision="bf16")
    assert bf16.space_bf16("standard", bf16.query_matrix("standard", [], parts), c + 1) is not None
    found = bf16(chosen, parts, c)
    # bit for bit on 2 threads here; elsewhere BLAS may split a sum between threads by the number of
    # rows multiplied at once (seen from D = 1024), so: the same scores up to the last bits, and the
    # same rows wherever no other row scores within those bits
    np.testing.assert_allclose(found[1], fp32[1], rtol=0, atol=1e-6)
    near = np.abs(fp32[1][..., :, None] - fp32[1][..., None, :]) <= 2e-6  # (P, S, c, c): rows that may swap
    alone = near.sum(-1) == 1
    np.testing.assert_array_equal(found[0][alone], fp32[0][alone])
    assert alone.mean() > 0.5  # most rows stand apart: the comparison says something


def test_one_part_of_few_rows_scans_in_fp32_and_so_do_many_parts_of_few_rows(monkeypatch):
    """One part below SPACE_ONE_PART_ROWS rows is a matrix-vector product in fp32, as fast there;
    with fewer than SPACE_ROWS_PER_PART rows a part, the fp32 product is the faster; below
    SPACE_RESCORE_ROWS rows the re-score could not repeat the scan's product."""
    standard, heads = hard_index(600)
    ranker = exact.Exact(standard, heads, precision="bf16")
    parts = queries_near(np.random.default_rng(16), heads, 24, 5)
    monkeypatch.setattr(lowprec, "SPACE_ONE_PART_ROWS", 600)  # from this many rows
    assert ranker.space_bf16("standard", ranker.query_matrix("standard", [], parts[:1]), 6) is not None
    monkeypatch.setattr(lowprec, "SPACE_ONE_PART_ROWS", 601)
    assert ranker.space_bf16("standard", ranker.query_matrix("standard", [], parts[:1]), 6) is None
    assert ranker.space_bf16("standard", ranker.query_matrix("standard", [], parts), 6) is not None
    small = exact.Exact(standard[:500], heads[:, :500], precision="bf16")
    assert small.space_bf16("standard", small.query_matrix("standard", [], parts), 6) is None
    monkeypatch.setattr(lowprec, "SPACE_ROWS_PER_PART", 121)  # 5 parts x 121 > 600 rows
    assert ranker.space_bf16("standard", ranker.query_matrix("standard", [], parts), 6) is None


def test_one_part_of_one_space_gives_the_two_column_fp32_scans_rows_and_scores(monkeypatch):
    """One part scans and re-scores as two equal columns: what the fp32 scan gives for the part twice, up
    to the last bits (`same_up_to_last_bits`; ties at the cut, copies, a cluster finer than bf16's step), over
    many blocks."""
    monkeypatch.setattr(lowprec, "BLOCK_BYTES", 2**14)  # many blocks and floor raises
    standard, heads = hard_index(5000, dim=384)
    rng = np.random.default_rng(18)
    centre = unit(rng, (384,))
    cluster = rng.choice(5000, 300, replace=False)
    standard[cluster] = retrieve.unit(centre + 0.03 * rng.standard_normal((300, 384))).astype(np.float32)
    chosen = retrieve.voters("standard", 3, SCALES)
    for q in [centre, standard[cluster[0]], unit(rng, (384,))]:
        part = retrieve.QueryVectors(q, unit(rng, (3, 8)))
        for c in (1, 5, 40):
            twice = exact.Exact(standard, heads, precision="fp32")(chosen, [part, part], c + 1)  # one more: the cut
            found = exact.Exact(standard, heads, precision="bf16")(chosen, [part], c)
            rows, scores = same_last_place(found, twice, c)
            same_up_to_last_bits((found[0][0], found[1][0]), (rows, scores))


def same_last_place(found: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray],
                    c: int) -> tuple[np.ndarray, np.ndarray]:
    """`want`'s first c places (of c + 1); where its c-th and (c+1)-th scores lie within 1e-6, the c-th row
    may be either: it is taken as found."""
    rows, scores = want[0][0][:, :c].copy(), want[1][0][:, :c].copy()
    tied = np.abs(want[1][0][:, c - 1] - want[1][0][:, c]) <= 1e-6
    rows[tied, c - 1] = np.where(np.isin(found[0][0][tied, c - 1], want[0][0][tied, c - 1:c + 1]),
                                 found[0][0][tied, c - 1], rows[tied, c - 1])
    return rows, scores


def test_one_part_with_a_row_bf16_cannot_hold_scans_in_fp32():
    """A row past bf16's range (or NaN) leaves no copy to scan: one part takes the fp32 matrix-vector
    scan, as in fp32."""
    standard, heads = hard_index(2000, dim=48)
    standard[7] = np.float32(3.4e38)  # finite in fp32, past bf16's largest (3.39e38): inf in the copy
    part = retrieve.QueryVectors(unit(np.random.default_rng(19), (48,)), unit(np.random.default_rng(20), (3, 8)))
    chosen = retrieve.voters("standard", 3, SCALES)
    alone = exact.Exact(standard, heads, precision="fp32")(chosen, [part], 5)
    found = exact.Exact(standard, heads, precision="bf16")(chosen, [part], 5)
    np.testing.assert_array_equal(found[0], alone[0])
    np.testing.assert_array_equal(found[1], alone[1])


def test_the_re_score_of_one_part_repeats_the_two_column_product_bit_for_bit():
    """One part's re-score multiplies the part twice as a stride-0 view: each row's sum is the scan's
    product of two columns, bit for bit, whatever rows are gathered with it (D = 384)."""
    rng = np.random.default_rng(21)
    vectors = torch.from_numpy(unit(rng, (6000, 384)))
    q = torch.from_numpy(unit(rng, (1, 384)))
    columns = q.expand(2, -1)
    scan = torch.cat([torch.mm(vectors[i : i + 1024], columns.T) for i in range(0, 6000, 1024)])[:, 0]  # (N,)
    for size in (1, 37, 600, 3000):
        rows = torch.from_numpy(rng.choice(6000, size, replace=False))
        found = lowprec.rescore_rows(columns, vectors, torch.zeros(size, dtype=torch.long), rows)
        assert torch.equal(found, scan[rows])


def test_the_re_score_of_one_space_repeats_the_scans_product():
    """A row's fp32 score in a product of P >= 2 columns: the same, up to the last bits, whatever rows
    are multiplied with it (bit for bit on 2 threads at D = 384; BLAS may split sums from D = 1024)."""
    rng = np.random.default_rng(17)
    vectors = torch.from_numpy(unit(rng, (5000, 384)))
    for p in (2, 6, 33):
        q = torch.from_numpy(unit(rng, (p, 384)))
        scan = torch.cat([torch.mm(vectors[i : i + 1024], q.T) for i in range(0, 5000, 1024)])  # (N, P)
        rows = torch.from_numpy(rng.choice(5000, 300, replace=False))
        parts = torch.from_numpy(rng.integers(0, p, 300))
        torch.testing.assert_close(lowprec.rescore_rows(q, vectors, parts, rows), scan[rows, parts], rtol=0, atol=1e-6)


@pytest.mark.parametrize("bad", [np.float32(3.4e38), np.float32(np.nan)])
def test_a_copy_checks_every_block_for_values_bf16_cannot_hold(bad):
    """The check runs block by block as the copy is rounded (2**22 // d rows a block): a bad value in
    a later block, or in rows a grown copy adds to its prefix, leaves no copy to scan."""
    rng = np.random.default_rng(21)
    vectors = rng.standard_normal((12_000, 384)).astype(np.float32)  # 10,922 rows a block at d = 384
    assert lowprec.Bf16Copy(vectors).finite
    vectors[11_500, 3] = bad  # in the second block
    late = lowprec.Bf16Copy(vectors)
    assert not late.finite and late.rows.numel() == 0
    vectors[11_500, 3] = 0.0
    prefix = lowprec.Bf16Copy(vectors[:6_000])
    assert prefix.finite
    vectors[9_000, 0] = bad  # a row the grown copy adds
    grown = lowprec.Bf16Copy(vectors, prefix, 6_000)
    assert not grown.finite and grown.rows.numel() == 0
    vectors[9_000, 0] = 0.0
    assert lowprec.Bf16Copy(vectors, prefix, 6_000).finite
