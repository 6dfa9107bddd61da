"""The in-memory matrix that exact search scans: every committed row's vectors, head-major, loaded
once per committed version (`Store.matrix` keeps the last one)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from mrag.rows import fixed, head_column, space_column
from mrag.scales import split_unit


@dataclass
class Matrix:
    """The vectors of every row, in memory, for exact search.  ids (N,), standard (N, D), heads (H, N, d):
    head-major, so each head's vectors are one contiguous matrix."""

    version: int
    table: Any  # the chunks table checked out at `version`, for reading the hits' text
    ids: np.ndarray
    standard: np.ndarray
    heads: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # external space -> (N, D_s) unit vectors


def head_units(rows: pa.Table, n_heads: int, head_dim: int, packed: bool) -> np.ndarray:
    """The rows' unit heads, head-major.  -> (H, N, d)"""
    n, h, d = rows.num_rows, n_heads, head_dim
    if packed:  # format 1: (N, H*d) in one column
        return np.ascontiguousarray(fixed(rows["heads"], n, h * d).reshape(n, h, d).transpose(1, 0, 2))
    heads = np.empty((h, n, d), dtype=np.float32)
    for i in range(h):
        heads[i] = fixed(rows[head_column(i)], n, d)
    return heads


def load_matrix(snapshot: Any, rows: pa.Table, dim: int, n_heads: int, head_dim: int, packed: bool,
                spaces: dict[str, int]) -> Matrix:
    """A matrix of `rows` (id and every vector column) read from `snapshot`; `spaces`: name -> dim."""
    n = rows.num_rows
    return Matrix(
        version=snapshot.version,
        table=snapshot,
        ids=np.asarray(rows["id"].to_pylist(), dtype=object),
        standard=fixed(rows["vector"], n, dim),
        heads=head_units(rows, n_heads, head_dim, packed),
        extra={name: split_unit(fixed(rows[space_column(name)], n, d))[1] for name, d in spaces.items()},
    )
