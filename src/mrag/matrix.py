"""The in-memory matrix that exact search scans: every committed row's vectors, head-major, loaded
once per committed version (`Store.matrix` keeps the last one)."""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa

from mrag.rows import fixed, head_column, space_column
from mrag.scales import split_unit


@dataclass
class Matrix:
    """The vectors of every row, in memory, for exact search.  ids (N,), standard (N, D), heads (H, N, d):
    head-major, so each head's vectors are one contiguous matrix; (H, N, 0) when loaded without them."""

    version: int
    table: Any  # the chunks table checked out at `version`, for reading the hits' text
    ids: np.ndarray
    standard: np.ndarray
    heads: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # external space -> (N, D_s) unit vectors
    row_ids: np.ndarray | None = None  # (N,) each row's Lance row id in `table`, to fetch hits by (None: by position)

    @property
    def has_heads(self) -> bool:
        return self.heads.shape[2] > 0 or self.heads.shape[1] == 0


def head_units(rows: pa.Table, n_heads: int, head_dim: int, packed: bool, out: np.ndarray | None = None) -> np.ndarray:
    """The rows' unit heads, head-major, written into `out` when given (a view of a larger matrix).
    -> (H, N, d)"""
    n, h, d = rows.num_rows, n_heads, head_dim
    heads = np.empty((h, n, d), dtype=np.float32) if out is None else out
    if packed:  # format 1: (N, H*d) in one column
        heads[:] = fixed(rows["heads"], n, h * d).reshape(n, h, d).transpose(1, 0, 2)
        return heads
    for i in range(h):
        heads[i] = fixed(rows[head_column(i)], n, d)
    return heads


LOAD_ROWS = 16_384  # rows per read while loading: the only transient copy of the vectors


def read_ranges(table: Any, columns: list[str], n: int, step: int = LOAD_ROWS) -> Iterator[pa.RecordBatch]:
    """The table's n rows in scan order, with their Lance row ids (`_rowid`), `step` rows per read. One
    whole scan would read ahead up to gigabytes; a range at a time holds one range, and what Lance's
    threads freed is handed back to the OS after each (their allocator arenas keep it otherwise: +40%
    RSS at 300k rows, measured)."""
    for start in range(0, n, step):
        yield from table.search().select(columns).with_row_id(True).offset(start).limit(step).to_arrow().to_batches()
        release_free_memory()


@lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim  # type: ignore[no-any-return]  # glibc; absent on musl
    except (OSError, AttributeError):
        return None


def release_free_memory() -> None:
    """Return freed heap memory of every allocator arena to the OS (glibc's malloc_trim; elsewhere a no-op)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def load_matrix(snapshot: Any, batches: Iterable[pa.RecordBatch], n: int, dim: int, n_heads: int, head_dim: int,
                packed: bool, spaces: dict[str, int], with_heads: bool = True) -> Matrix:
    """A matrix of the `n` rows streamed in `batches` (id and every vector column; no head column
    without `with_heads`) from `snapshot`; `spaces`: name -> dim. Each batch is copied into arrays
    allocated once, so loading needs the matrix's own bytes plus one batch, never a second copy of the
    whole (issue 17's memory target)."""
    ids = np.empty(n, dtype=object)
    row_ids = np.empty(n, dtype=np.uint64)
    standard = np.empty((n, dim), dtype=np.float32)
    heads = np.empty((n_heads, n, head_dim if with_heads else 0), dtype=np.float32)
    extra = {name: np.empty((n, d), dtype=np.float32) for name, d in spaces.items()}
    start = 0
    for batch in batches:
        rows, m = pa.Table.from_batches([batch]), batch.num_rows  # zero-copy: the row decoders take tables
        if start + m > n:
            raise ValueError(f"the table holds more rows than the {n} counted at its version")
        ids[start:start + m] = rows["id"].to_pylist()
        row_ids[start:start + m] = rows["_rowid"].to_numpy()
        standard[start:start + m] = fixed(rows["vector"], m, dim)
        if with_heads:
            head_units(rows, n_heads, head_dim, packed, out=heads[:, start:start + m])
        for name, out in extra.items():  # stored raw; search compares directions
            out[start:start + m] = split_unit(fixed(rows[space_column(name)], m, out.shape[1]))[1]
        start += m
    if start != n:
        raise ValueError(f"read {start} rows of the {n} counted at the table's version")
    return Matrix(version=snapshot.version, table=snapshot, ids=ids, standard=standard, heads=heads, extra=extra,
                  row_ids=row_ids)
