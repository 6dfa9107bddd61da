import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mrag.scales import HeadStats, brute_force_scales, split_unit


def stats_of(heads: np.ndarray) -> HeadStats:
    stats = HeadStats(heads.shape[1], heads.shape[2])
    stats.add(*split_unit(heads))
    return stats


def test_scales_by_hand():
    # one head, d = 2
    #   orthogonal unit vectors: a = 1, b = 1 - |(1, 1)|^2 / 2^2 = 1 - 2/4 = 0.5      -> 0.5
    #   (3, 4) and (-6, -8): a = (5 + 10) / 2 = 7.5, the units cancel: b = 1 - 0 = 1 -> 7.5
    #   (2, 0) twice: a = 2, b = 1 - |(2, 0)|^2 / 4 = 0                                -> 0
    #   (3, 4) and a zero row (u = 0): a = 2.5, b = 1 - 1/4 = 0.75                      -> 1.875
    cases = {
        0.5: [[1.0, 0.0], [0.0, 1.0]],
        7.5: [[3.0, 4.0], [-6.0, -8.0]],
        0.0: [[2.0, 0.0], [2.0, 0.0]],
        1.875: [[3.0, 4.0], [0.0, 0.0]],
    }
    for expected, rows in cases.items():
        heads = np.array(rows)[:, None, :]  # (N=2, H=1, d=2)
        assert stats_of(heads).scales() == pytest.approx([expected], abs=1e-6)
        assert brute_force_scales(heads) == pytest.approx([expected], abs=1e-6)


def test_empty_stats_give_zero_scales():
    assert HeadStats(3, 4).scales().tolist() == [0.0, 0.0, 0.0]


def test_removing_more_than_held_is_an_error():
    stats = stats_of(np.ones((2, 1, 3)))
    with pytest.raises(ValueError, match="removed more rows"):
        stats.remove(*split_unit(np.ones((3, 1, 3))))


values = st.floats(-10, 10, allow_nan=False, allow_subnormal=False).map(lambda x: 0.0 if abs(x) < 1e-3 else x)


@st.composite
def corpora(draw, batches=1):
    h = draw(st.integers(1, 4))
    d = draw(st.integers(1, 6))
    out = []
    for _ in range(batches):
        n = draw(st.integers(1, 12))
        heads = draw(arrays(np.float64, (n, h, d), elements=values))
        zero_rows = draw(st.lists(st.integers(0, n - 1), max_size=2))
        heads[zero_rows] = 0.0
        out.append(heads)
    return out


def assert_scales(stats: HeadStats, heads: np.ndarray) -> None:
    # unit vectors are float32 (as stored), so compare up to float32 rounding of the norms
    atol = 1e-6 * (1.0 + np.linalg.norm(heads, axis=-1).max())
    np.testing.assert_allclose(stats.scales(), brute_force_scales(heads), rtol=1e-5, atol=atol)


@given(corpora())
@settings(max_examples=150, deadline=None)
def test_running_scales_equal_brute_force(batches):
    (heads,) = batches
    assert_scales(stats_of(heads), heads)


@given(corpora(batches=2), st.booleans())
@settings(max_examples=150, deadline=None)
def test_add_two_batches_remove_one(batches, remove_first):
    a, b = batches
    stats = stats_of(a)
    stats.add(*split_unit(b))
    assert stats.count == len(a) + len(b)
    assert_scales(stats, np.concatenate([a, b]))
    gone, kept = (a, b) if remove_first else (b, a)
    stats.remove(*split_unit(gone))
    assert stats.count == len(kept)
    assert_scales(stats, kept)


@given(corpora(batches=2))
@settings(max_examples=50, deadline=None)
def test_json_roundtrip(batches):
    a, b = batches
    stats = stats_of(a)
    back = HeadStats.from_json(json.loads(json.dumps(stats.to_json())))
    assert (back.n_heads, back.head_dim, back.count) == (stats.n_heads, stats.head_dim, stats.count)
    np.testing.assert_array_equal(back.norm_sum, stats.norm_sum)
    np.testing.assert_array_equal(back.unit_sum, stats.unit_sum)
    np.testing.assert_array_equal(back.scales(), stats.scales())
    # the restored sums keep working
    back.add(*split_unit(b))
    assert_scales(back, np.concatenate([a, b]))


def test_split_unit_zero_rows():
    norms, units = split_unit(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert norms.tolist() == [5.0, 0.0]
    np.testing.assert_allclose(units, [[0.6, 0.8], [0.0, 0.0]])
