"""The compiled loops of `mrag.retrieve.bm25_score` (numba, the `fast` extra), imported at the first
in-memory full-text search: a posting's weight is added into a float64 row array, then each row's total
taken once. Compiled once and kept on disk (`cache=True`, beside this file or in numba's cache folder)."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def accumulate(rows, impact, starts, ends, factors, totals):  # type: ignore[no-untyped-def]
    """totals[row] += impact x factors[j] (in float32, then added in float64) for every posting of every
    list j, in order."""
    for j in range(len(starts)):
        factor = factors[j]
        for p in range(starts[j], ends[j]):
            totals[rows[p]] += np.float64(impact[p] * factor)  # the weight in float32, as numpy's


@numba.njit(cache=True, nogil=True)
def collect(rows, starts, ends, totals, kept_rows, kept_scores, count, floor, j, p):  # type: ignore[no-untyped-def]
    """From posting p of list j on, each row's total once: read, then reset to 0 (every weight is > 0, so a
    row met again reads 0, below any floor), and kept in the buffer at `count` when >= floor. Returns
    (count, j, p) once the buffer is full, where to go on; j == len(starts) when done."""
    while j < len(starts):
        p = max(p, starts[j])
        while p < ends[j]:
            row = rows[p]
            score = totals[row]
            totals[row] = 0.0
            p += 1
            if score >= floor:
                kept_rows[count], kept_scores[count] = row, score
                count += 1
                if count == len(kept_rows):
                    return count, j, p
        j += 1
    return count, j, p
