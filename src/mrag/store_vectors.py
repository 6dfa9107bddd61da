"""A store's vector columns beyond its rows: external spaces' columns added or removed (inside
`Store.writing()`, under the index's write lock, committed with the rest of the write), and the committed
head-scale sums checked against the rows (`verify`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from mrag.documents import partial
from mrag.errors import StoreError
from mrag.manifest import Manifest
from mrag.rows import space_column
from mrag.scales import split_unit
from mrag.settings import GRAPH_INDEX
from mrag.store import Store


def add_spaces(store: Store, entries: list[dict[str, Any]], ids: list[str], vectors: dict[str, np.ndarray]) -> None:
    """Add external spaces to every row: one rewrite of the chunks table.

    entries: manifest entries {name, function, options, dim, weight}; vectors: name -> (N, dim) raw,
    row i belonging to chunk ids[i]. The rows stay as they are; only the new columns are added.
    """
    table = store.chunks.to_arrow()
    position = {chunk_id: i for i, chunk_id in enumerate(ids)}
    if len(position) != table.num_rows or set(table["id"].to_pylist()) != set(position):
        raise StoreError("the rows changed while the new spaces were computed; nothing written")
    order = np.array([position[i] for i in table["id"].to_pylist()], dtype=np.int64)
    for entry in entries:
        name, dim = entry["name"], int(entry["dim"])
        if name in store.sums.spaces():
            raise StoreError(f"the index already holds a space {name!r}")
        values = np.asarray(vectors[name], dtype=np.float32).reshape(-1, dim)[order]
        column = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), dim)
        table = table.append_column(pa.field(space_column(name), pa.list_(pa.float32(), dim)), column)
        stats = store.sums.add_space(name, dim)
        norms, units = split_unit(values)
        stats.add(norms[:, None], units[:, None, :])
        store.spaces.append(dict(entry))
    store.chunks.add(table, mode="overwrite")  # a rewrite: LanceDB's vector indexes are gone with it
    if (store.manifest.ann or {}).get("index_type") != GRAPH_INDEX:  # HNSW graphs are rebuilt by maintenance
        store.stage(ann=None)


def drop_spaces(store: Store, names: list[str]) -> None:
    """Remove external spaces from every row: their columns (and LanceDB's indexes on them), sums and
    manifest entries, and their names from the HNSW graphs' record."""
    missing = sorted(set(names) - set(store.sums.spaces()))
    if missing:  # checked under the lock: another process may have dropped it meanwhile
        raise StoreError(f"the index at {store.uri} has no space {missing[0]!r}; it has: "
                         f"{', '.join(store.sums.spaces()) or 'none'}")
    store.chunks.drop_columns([space_column(name) for name in names])
    for name in names:
        del store.sums.groups[f"space:{name}"]
    store.spaces = [entry for entry in store.spaces if entry["name"] not in names]
    built = store.manifest.ann or {}
    graphed = built.get("spaces")
    if graphed and set(graphed) & set(names):
        kept = [space for space in graphed if space not in names]
        store.stage(ann={**built, "spaces": kept} if kept else None)


def verify(store: Store) -> dict[str, Any]:
    """Check the committed index: chunk ids unique, and the committed sums equal to sums recomputed from
    the committed rows (`sums_drift`: the largest relative error, about 1e-12 when sound); and count the
    documents some of whose chunks were deleted (`partial_documents`: their next write restores them)."""
    def committed_rows(snapshot: Any, manifest: Manifest) -> tuple[pa.Table, Manifest]:
        columns = [c.column for c in store.vector_columns(manifest=manifest)]
        return store.rows(columns=["id", "doc_id", "doc_hash", *columns, "head_norms"], table=snapshot), manifest

    store.refresh()
    rows, manifest = store.reading_with(committed_rows)  # the sums and the rows of one commit
    committed = manifest.sums
    ids = rows["id"].to_pylist()
    fresh = committed.zeros()
    for batch in rows.to_batches(max_chunksize=65536):
        store.fold(pa.Table.from_batches([batch]), 1, fresh)
    cut = {d for d, h in zip(rows["doc_id"].to_pylist(), rows["doc_hash"].to_pylist()) if partial(h)}
    return {"chunks": len(ids), "duplicate_ids": len(ids) - len(set(ids)), "sums_drift": committed.drift(fresh),
            "partial_documents": len(cut)}
