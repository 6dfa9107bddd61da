"""The chunks table's row layout, in one place: the columns, the vector columns every space lives
in, and the encoding of embedded chunks into rows.

Row layout: id, doc_id, source, title, position, text, metadata (JSON), doc_hash, and the vectors:
`vector` (D, unit standard embedding), one column per head `head_0` ... `head_{H-1}` (d each, scaled
to unit length; one column per space, so LanceDB can build an ANN index on each), `head_norms`
(H, the heads' original lengths, needed to take a row back out of the head-scale sums on delete)
and `space_NAME` per external space (its raw vectors). Format 1 indexes kept all heads in one packed
`heads` column: they can be searched, not written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from mrag.embed.base import Embeddings
from mrag.errors import StoreError
from mrag.scales import split_unit


def space_column(name: str) -> str:
    """The column holding an external space's raw vectors (see `mrag.spaces`)."""
    return f"space_{name}"


def head_column(i: int) -> str:
    """The column holding head i's unit vectors."""
    return f"head_{i}"


@dataclass(frozen=True)
class VectorColumn:
    """A space that has a column of its own: its voter name, the column, and the vectors' width."""

    space: str  # "standard", "head:i" or an external space's label
    column: str
    width: int


def vector_columns(dim: int, n_heads: int, head_dim: int, spaces: dict[str, int] | None = None) -> list[VectorColumn]:
    """Every vector column of the row layout: the standard vector, each head, each external space
    (name -> dimension). What the schema, the matrix, the ANN indexes and the sums all enumerate."""
    return [VectorColumn("standard", "vector", dim),
            *(VectorColumn(f"head:{i}", head_column(i), head_dim) for i in range(n_heads)),
            *(VectorColumn(name, space_column(name), d) for name, d in (spaces or {}).items())]


def chunk_schema(dim: int, n_heads: int, head_dim: int, spaces: dict[str, int] | None = None) -> pa.Schema:
    """The chunks table's columns; `spaces` maps each external space to its dimension."""
    columns = vector_columns(dim, n_heads, head_dim, spaces)
    vectors = [pa.field(c.column, pa.list_(pa.float32(), c.width)) for c in columns]
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("doc_id", pa.string(), nullable=False),
            pa.field("source", pa.string()),
            pa.field("title", pa.string()),
            pa.field("position", pa.int32()),
            pa.field("text", pa.string()),
            pa.field("metadata", pa.string()),
            pa.field("doc_hash", pa.string()),
            *vectors[: 1 + n_heads],
            pa.field("head_norms", pa.list_(pa.float32(), n_heads)),
            *vectors[1 + n_heads :],
        ]
    )


def quote(values: list[str]) -> str:
    """A SQL IN-list of string literals."""
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


def fixed(column: pa.ChunkedArray, n: int, width: int) -> np.ndarray:
    """A fixed-size-list column as a float32 matrix (n, width) without a Python loop."""
    if n == 0:
        return np.zeros((0, width), dtype=np.float32)
    chunks = [c.flatten() for c in column.chunks]
    flat = chunks[0] if len(chunks) == 1 else pa.concat_arrays(chunks) if chunks else pa.array([])  # one chunk: no copy
    return np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(n, width)


def build_rows(
    ids: list[str],
    doc_ids: list[str],
    sources: list[str],
    titles: list[str],
    positions: list[int],
    texts: list[str],
    metadata: list[dict[str, Any]],
    doc_hashes: list[str],
    standard: np.ndarray,
    heads: np.ndarray,
    schema: pa.Schema,
    extra: dict[str, np.ndarray] | None = None,
) -> pa.Table:
    """Rows for `Store.add`.  standard (N, D) raw, heads (N, H, d) raw; stored as unit vectors.
    extra: external space -> (N, D_s) raw vectors, stored as they are (their norms feed the scales)."""
    n, h, d = heads.shape
    bad = Embeddings(standard, heads).non_finite()
    if len(bad):  # a NaN would rank anywhere and poison the head scales: refuse the batch
        raise StoreError(
            f"the embedder returned NaN or infinite values for {len(bad)} chunk(s), first {ids[bad[0]]!r}; "
            "nothing was written"
        )
    _, std_units = split_unit(standard)
    head_norms, head_units = split_unit(heads)  # (N, H), (N, H, d)

    def vectors(values: np.ndarray, width: int) -> pa.Array:
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1).astype(np.float32)), width)

    return pa.table(
        {
            "id": ids,
            "doc_id": doc_ids,
            "source": sources,
            "title": titles,
            "position": pa.array(positions, pa.int32()),
            "text": texts,
            "metadata": [json.dumps(m, ensure_ascii=False, default=str) for m in metadata],
            "doc_hash": doc_hashes,
            "vector": vectors(std_units, standard.shape[1]),
            **{head_column(i): vectors(head_units[:, i], d) for i in range(h)},
            "head_norms": vectors(head_norms, h),
            **{space_column(name): vectors(v, v.shape[1]) for name, v in (extra or {}).items()},
        },
        schema=schema,
    )
