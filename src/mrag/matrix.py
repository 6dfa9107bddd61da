"""The in-memory matrix that exact search scans: every committed row's vectors, head-major, loaded
once per committed version (`Store.matrix` keeps the last one).

The arrays are allocated with room for more rows than they hold (`Rows`; memory the OS gives only
once written), and a later version whose first rows are the same Lance rows, in order (a write that
only appended), is read by its new rows alone into that room (`grown`): a server's first search after
another process added documents reads what was added, not the whole table again."""

from __future__ import annotations

import ctypes
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa

from mrag.rows import fixed, head_column, space_column
from mrag.scales import split_unit

LOAD_ROWS = 16_384  # rows per read while loading: the only transient copy of the vectors
ROOM_SHARE = 0.25  # room for appended rows: a quarter of the rows loaded (at least LOAD_ROWS)
_growing: weakref.WeakValueDictionary[int, np.ndarray] = weakref.WeakValueDictionary()  # id -> `Rows` array


def growing(array: np.ndarray) -> bool:
    """Whether `array` is a view of the first rows of a `Rows` array, whose written rows never change."""
    base = array.base
    return base is not None and _growing.get(id(base)) is base


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
    rows: Rows | None = field(default=None, repr=False, compare=False)  # the arrays these are the first rows of
    stamp: Any = None  # when `version` was committed, as LanceDB records it (`stamps`): which table it is of

    @property
    def has_heads(self) -> bool:
        return self.heads.shape[2] > 0 or self.heads.shape[1] == 0


@dataclass(repr=False)
class Rows:
    """Arrays with room for `capacity` rows, of which the first `filled` are written. A written row is
    never written again, so every matrix is a view of the first rows (its own n <= filled) and stays
    valid while later versions append after it. `columns`: the table columns read into them."""

    columns: tuple[str, ...]
    ids: np.ndarray  # (C,) chunk ids
    row_ids: np.ndarray  # (C,) Lance row ids
    standard: np.ndarray  # (C, D)
    heads: np.ndarray  # (H, C, d), or (H, C, 0) without the heads
    extra: dict[str, np.ndarray]  # external space -> (C, D_s)
    packed: bool
    filled: int = 0
    filled_by: tuple[int, Any] = (-1, None)  # the version (and stamp) whose rows were written last
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def allocate(cls, columns: list[str], capacity: int, dim: int, n_heads: int, head_dim: int, packed: bool,
                 spaces: dict[str, int], with_heads: bool) -> Rows:
        rows = cls(columns=tuple(columns), ids=np.empty(capacity, dtype=object),
                   row_ids=np.empty(capacity, dtype=np.uint64), standard=np.empty((capacity, dim), dtype=np.float32),
                   heads=np.empty((n_heads, capacity, head_dim if with_heads else 0), dtype=np.float32),
                   extra={name: np.empty((capacity, d), dtype=np.float32) for name, d in spaces.items()},
                   packed=packed)
        for array in (rows.ids, rows.standard, rows.heads, *rows.extra.values()):
            _growing[id(array)] = array
        return rows

    @property
    def capacity(self) -> int:
        return len(self.ids)

    def write(self, batches: Iterable[pa.RecordBatch], start: int, n: int) -> None:
        """Rows start..n from `batches` (each column of `columns`, with `_rowid`), one batch at a time.
        The caller holds `lock` where other matrices share these arrays; `filled` moves only once all
        are written (a failed read leaves nothing any matrix sees)."""
        at = start
        for batch in batches:
            rows, m = pa.Table.from_batches([batch]), batch.num_rows  # zero-copy: the row decoders take tables
            if at + m > n:
                raise ValueError(f"the table holds more rows than the {n} counted at its version")
            self.ids[at:at + m] = rows["id"].to_pylist()
            self.row_ids[at:at + m] = rows["_rowid"].to_numpy()
            self.standard[at:at + m] = fixed(rows["vector"], m, self.standard.shape[1])
            if self.heads.shape[2]:
                head_units(rows, len(self.heads), self.heads.shape[2], self.packed, out=self.heads[:, at:at + m])
            for name, out in self.extra.items():  # stored raw; search compares directions
                out[at:at + m] = split_unit(fixed(rows[space_column(name)], m, out.shape[1]))[1]
            at += m
        if at != n:
            raise ValueError(f"read {at - start} rows of the {n - start} counted at the table's version")
        self.filled = max(self.filled, n)

    def matrix(self, snapshot: Any, n: int, stamp: Any) -> Matrix:
        """The first n rows, as the matrix of `snapshot` (views: no copy) committed at `stamp`."""
        return Matrix(version=snapshot.version, table=snapshot, ids=self.ids[:n], standard=self.standard[:n],
                      heads=self.heads[:, :n], extra={name: a[:n] for name, a in self.extra.items()},
                      row_ids=self.row_ids[:n], rows=self, stamp=stamp)


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


def read_ranges(
    table: Any, columns: list[str], n: int, step: int = LOAD_ROWS, start: int = 0
) -> Iterator[pa.RecordBatch]:
    """The table's rows start..n in scan order, with their Lance row ids (`_rowid`), `step` rows per
    read. One whole scan would read ahead up to gigabytes; a range at a time holds one range, and what
    Lance's threads freed is handed back to the OS after each (their allocator arenas keep it
    otherwise: +40% RSS at 300k rows, measured)."""
    for first in range(start, n, step):
        yield from table.search().select(columns).with_row_id(True).offset(first).limit(min(step, n - first)) \
            .to_arrow().to_batches()
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


def room(n: int) -> int:
    """Rows to allocate for n rows: n and room for appended ones."""
    return n + max(LOAD_ROWS, int(ROOM_SHARE * n))


def load_matrix(snapshot: Any, columns: list[str], n: int, dim: int, n_heads: int, head_dim: int, packed: bool,
                spaces: dict[str, int], with_heads: bool = True, step: int = LOAD_ROWS, stamp: Any = None) -> Matrix:
    """A matrix of the `n` rows of `snapshot` (`columns`: id and every vector column; no head column
    without `with_heads`); `spaces`: name -> dim; `stamp`: the snapshot version's (`stamps`; None: a
    matrix that never grows). Each range read (`step` rows) is copied into arrays allocated once, so
    loading needs the matrix's own bytes plus one range, never a second copy of the whole (issue 17's
    memory target); the room for appended rows is allocated, not written."""
    rows = Rows.allocate(columns, room(n), dim, n_heads, head_dim, packed, spaces, with_heads)
    rows.write(read_ranges(snapshot, columns, n, step), 0, n)
    rows.filled_by = snapshot.version, stamp
    return rows.matrix(snapshot, n, stamp)


def stamps(table: Any) -> dict[int, Any]:
    """Each version of the table that LanceDB still keeps -> when it was committed. Two tables with the
    same stamp at a version hold the same rows there: one is a copy of the other made after it (copies
    keep the stamps), or they are the same table. (10 ms for 40 versions, local.) Empty where a writer
    pruned versions while they were listed: nothing to compare with, and the matrix is read whole."""
    try:
        return {int(v["version"]): v["timestamp"] for v in table.list_versions()}
    except (RuntimeError, OSError, ValueError):  # lance: "Not found: .../N.manifest"
        return {}


def grown(
    old: Matrix, snapshot: Any, columns: list[str], n: int, spaces: dict[str, int], history: dict[int, Any]
) -> Matrix | None:
    """The matrix of `snapshot` (n rows) made from `old` when `old`'s rows are still the first rows of
    the table, in order, reading only the rows after them into the room `old`'s arrays have. The check
    is by Lance row id, (fragment, offset): LanceDB appends after the rows it keeps, never gives a
    fragment id twice (not even after a restore), and writes the rows of an update, an upsert or a
    compaction into new fragments (lancedb 0.40), so equal row ids are the same stored rows, within
    one table: `old`'s version must still be in the table's history with the stamp it was read at
    (`history`: the table's `stamps`), or the table is another one (a copy that diverged, a folder made
    again). `columns`: what the caller needs; `old`'s arrays must hold exactly these, or these and the heads;
    `spaces`: name -> dim at this version. None where it cannot, and the caller reads the whole table
    again: deletes, upserts and compaction move or drop rows; no room left; other columns; `old`'s
    version pruned from the history; rows another matrix wrote past `old`'s that are not this
    version's."""
    rows, m = old.rows, len(old.ids)
    if rows is None or old.row_ids is None or old.stamp is None:
        return None
    if history.get(old.version) != old.stamp:
        return None
    stamp = history.get(snapshot.version)
    needed, held = set(columns), set(rows.columns)
    if not needed <= held or any(not c.startswith("head") for c in held - needed):
        return None  # the heads may come along; any other column differs from what the arrays hold
    if {name: a.shape[1] for name, a in rows.extra.items()} != spaces:
        return None
    scan = snapshot.search().select(["id"]).with_row_id(True).limit(n).to_arrow()  # 0.25 s at 1M rows
    row_ids = scan["_rowid"].to_numpy()
    if len(row_ids) != n:
        return None
    if not (m <= n <= rows.capacity and np.array_equal(row_ids[:m], old.row_ids)):
        return None
    with rows.lock:  # other versions' matrices may be growing from the same arrays
        done = min(rows.filled, n)  # rows past m that another matrix has written: ours only if the same rows
        by, by_stamp = rows.filled_by
        ours = done == m or (history.get(by) == by_stamp and np.array_equal(rows.row_ids[m:done], row_ids[m:done]))
        if ours and n > done:
            rows.write(read_ranges(snapshot, list(rows.columns), n, start=done), done, n)
            rows.filled_by = snapshot.version, stamp
    return rows.matrix(snapshot, n, stamp) if ours else None
