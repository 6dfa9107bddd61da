"""Graph nodes and matrix rows: each row's key, and where a graph's nodes are among a matrix's rows.

An HNSW graph (`mrag.retrieve.graph`) numbers its nodes in the order they were added, each a row of
the matrix as it was then, saved with the row's key. LanceDB keeps the order of the rows a delete
leaves, through compaction too, and appends new rows (an upsert's included), so a graph's surviving
nodes are the first rows of a later matrix, in node order (`placement`). Pure functions on arrays.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

FINGERPRINT = 8  # floats of each row's standard vector in its key
DEAD = np.uint64(0)  # the key of a node removed before the graph was extended (row keys are odd)


def row_keys(ids: np.ndarray, standard: np.ndarray) -> np.ndarray:
    """Each row's key: a 64-bit hash of its chunk id mixed with the first FINGERPRINT floats of its
    standard vector (an upsert keeps a chunk's id, not its vector); odd, never DEAD. Chunks of the
    same text share their floats, so the ids alone must tell them apart: 64 bits, not 32 (a CRC-32
    collides among 10k copies of a footer about once in a hundred indexes).
    (N,) ids, (>= N, D) -> (N,) uint64"""
    hashed = b"".join(hashlib.blake2b(str(i).encode(), digest_size=8).digest() for i in ids)
    key = np.frombuffer(hashed, dtype=np.uint64).copy()
    words = np.ascontiguousarray(standard[: len(ids), :FINGERPRINT], dtype=np.float32).view(np.uint32)
    for word in words.T.astype(np.uint64):
        key = _mix(key ^ word)
    return key | np.uint64(1)


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


def placement(nodes: np.ndarray, keys: np.ndarray) -> Placement | None:
    """Where a graph's nodes (their keys, in node order) are among a matrix's rows (their keys): the
    graph covers the longest run of first rows that are nodes in node order, and the rows after it are
    scanned (appended ones, and any that came back with a removed node's key: a chunk deleted and
    written again; `update` makes them new nodes). Nodes not among the covered rows were removed, and
    so are nodes that share a key (they cannot be told apart). None when no first row is a node.
    nodes [a b c d], rows [a c d e] -> rows of the nodes [0 -1 1 2], covered 3 (e is scanned)"""
    live = np.flatnonzero(nodes != DEAD)
    order = live[np.argsort(nodes[live], kind="stable")]  # node numbers by key
    ranked = nodes[order]
    shared = np.zeros(len(ranked), dtype=bool)
    shared[1:] = ranked[1:] == ranked[:-1]
    shared[:-1] |= shared[1:]
    order, ranked = order[~shared], ranked[~shared]
    if len(ranked) == 0 or len(keys) == 0:
        return None
    at = np.minimum(np.searchsorted(ranked, keys), len(ranked) - 1)
    node = np.where(ranked[at] == keys, order[at], -1)  # (N,) each row's node, -1 for none
    past = node < 0
    past[1:] |= node[1:] <= node[:-1]  # out of node order
    covered = int(np.argmax(past)) if past.any() else len(keys)
    if covered == 0:
        return None
    rows = np.full(len(nodes), -1, dtype=np.int64)
    rows[node[:covered]] = np.arange(covered)
    bitmap = None if covered == len(nodes) else np.packbits(rows >= 0, bitorder="little")  # bit i: byte i // 8
    return Placement(rows, covered, bitmap)
