"""Graph nodes and matrix rows: each row's key, and where a graph's nodes are among a matrix's rows.

An HNSW graph (`mrag.retrieve.graph`) numbers its nodes in the order they were added, each a row of
the matrix as it was then, saved with the row's key. LanceDB keeps the order of the rows a delete
leaves, through compaction too, and appends new rows (an upsert's included), so a graph's surviving
nodes are the first rows of a later matrix, in node order (`placement`). Pure functions on arrays.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mrag.matrix import Matrix

FINGERPRINT = 8  # floats of each row's standard vector in its key
DEAD = np.uint64(0)  # the key of a node removed before the graph was extended (row keys are odd)


def row_keys(ids: np.ndarray, standard: np.ndarray, *external: np.ndarray) -> np.ndarray:
    """Each row's key: a 64-bit hash of its chunk id mixed with the first FINGERPRINT floats of its
    standard vector and of each `external` space's vector (an upsert keeps a chunk's id, not its
    vectors; the model's heads change with its standard vector, while an external space's may change
    alone: text past the model's window); odd, never DEAD. Chunks of the same text share their floats,
    so the ids alone must tell them apart: 64 bits, not 32 (a CRC-32 collides among 10k copies of a
    footer about once in a hundred indexes).
    (N,) ids, (>= N, D), each (>= N, D_s) -> (N,) uint64"""
    hashed = b"".join(hashlib.blake2b(str(i).encode(), digest_size=8).digest() for i in ids)
    key = np.frombuffer(hashed, dtype=np.uint64).copy()
    for vectors in (standard, *external):
        words = np.ascontiguousarray(vectors[: len(ids), :FINGERPRINT], dtype=np.float32).view(np.uint32)
        for word in words.T.astype(np.uint64):
            key = _mix(key ^ word)
    return key | np.uint64(1)


def matrix_keys(matrix: Matrix, spaces: Iterable[str], start: int = 0) -> np.ndarray:
    """The keys of a matrix's rows from `start` on, for graphs of `spaces`: the external ones among them
    (sorted) are mixed in. (N - start,) uint64"""
    external = [matrix.extra[space][start:] for space in sorted(set(spaces) & set(matrix.extra))]
    return row_keys(matrix.ids[start:], matrix.standard[start:], *external)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit moves about half the output bits (uint64 wraps)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@dataclass
class Placement:
    """A graph's nodes in a matrix: `rows` (M,) the row of each node, -1 for a removed one; the first
    `covered` rows are nodes, the rows past them are scanned. `bitmap`: the surviving nodes, bit i of
    byte i // 8 (faiss's IDSelectorBitmap); None when all survive."""

    rows: np.ndarray
    covered: int
    bitmap: np.ndarray | None = None

    @property
    def removed(self) -> int:
        return len(self.rows) - self.covered  # each covered row is one node: the other nodes were removed


@dataclass(frozen=True)
class NodeIndex:
    """A graph's nodes sorted by key, for looking rows up: `ranked` (L,) the keys of the nodes that
    can be placed (not DEAD, no key shared with another node), `order` (L,) their node numbers."""

    order: np.ndarray
    ranked: np.ndarray

    @classmethod
    def of(cls, nodes: np.ndarray) -> NodeIndex:
        live = np.flatnonzero(nodes != DEAD)
        order = live[np.argsort(nodes[live], kind="stable")]  # node numbers by key
        ranked = nodes[order]
        shared = np.zeros(len(ranked), dtype=bool)
        shared[1:] = ranked[1:] == ranked[:-1]
        shared[:-1] |= shared[1:]
        return cls(order[~shared], ranked[~shared])

    def node_of(self, keys: np.ndarray) -> np.ndarray:
        """(N,) keys -> (N,) each one's node, -1 for none."""
        if len(self.ranked) == 0:
            return np.full(len(keys), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.ranked, keys), len(self.ranked) - 1)
        return np.where(self.ranked[at] == keys, self.order[at], -1)


def placement(nodes: np.ndarray, keys: np.ndarray, index: NodeIndex | None = None) -> Placement | None:
    """Where a graph's nodes (their keys, in node order) are among a matrix's rows (their keys): the
    graph covers the longest run of first rows that are nodes in node order, and the rows after it are
    scanned (appended ones, and any that came back with a removed node's key: a chunk deleted and
    written again; `update` makes them new nodes). Nodes not among the covered rows were removed, and
    so are nodes that share a key (they cannot be told apart). None when no first row is a node.
    `index`: `NodeIndex.of(nodes)`, when the caller keeps it.
    nodes [a b c d], rows [a c d e] -> rows of the nodes [0 -1 1 2], covered 3 (e is scanned)"""
    if len(keys) == 0:
        return None
    return _run(nodes, (index or NodeIndex.of(nodes)).node_of(keys), 0, np.full(len(nodes), -1, dtype=np.int64))


def placement_after(nodes: np.ndarray, index: NodeIndex, place: Placement | None, m: int,
                    keys: np.ndarray) -> Placement | None:
    """`placement` of a matrix whose first m rows are those `place` was worked out for, and whose
    rows after them have the keys `keys` (rows appended since): only the new rows are looked up.
    The covered run ended inside the first m rows (the same placement), or it goes on into the new rows."""
    if m == 0:
        return placement(nodes, keys, index)
    if place is None or place.covered < m:
        return place  # no first row is a node, or the run broke before the new rows: unchanged
    return _run(nodes, index.node_of(keys), m, place.rows)


def _run(nodes: np.ndarray, node: np.ndarray, m: int, rows: np.ndarray) -> Placement | None:
    """The placement whose first m rows are covered (the nodes `rows` maps to rows < m) and whose next
    rows are the nodes `node` (-1: none), covering them while they follow in node order."""
    last = np.flatnonzero(rows == m - 1)[:1] if m else np.zeros(0, dtype=np.int64)  # row m - 1's node
    past = node < 0
    past[1:] |= node[1:] <= node[:-1]  # out of node order
    if len(last) and len(node):
        past[0] |= node[0] <= last[0]
    more = int(np.argmax(past)) if past.any() else len(node)
    covered = m + more
    if covered == 0:
        return None
    if more:
        rows = rows.copy()
        rows[node[:more]] = np.arange(m, covered)
    bitmap = None if covered == len(nodes) else np.packbits(rows >= 0, bitorder="little")  # bit i: byte i // 8
    return Placement(rows, covered, bitmap)


@dataclass(frozen=True)
class Placed:
    """A matrix a graph's nodes were placed in: its version, where (`placement`), its arrays
    (`Matrix.rows`, held weakly: they may be dropped meanwhile) and its number of rows."""

    version: int
    place: Placement | None
    rows: Callable[[], Any]
    m: int


def place_in(matrix: Matrix, spaces: Iterable[str], nodes: np.ndarray, index: NodeIndex,
             before: Placed | None) -> Placed:
    """Where the nodes of graphs of `spaces` are in `matrix`; when it grew from the matrix placed
    `before` (the same arrays, `mrag.matrix.grown`), from the keys of its new rows alone."""
    n = len(matrix.ids)
    if before is not None and matrix.rows is not None and before.rows() is matrix.rows and before.m <= n:
        found = placement_after(nodes, index, before.place, before.m, matrix_keys(matrix, spaces, before.m))
    else:
        found = placement(nodes, matrix_keys(matrix, spaces), index)
    return Placed(matrix.version, found, weakref.ref(matrix.rows) if matrix.rows is not None else lambda: None, n)
