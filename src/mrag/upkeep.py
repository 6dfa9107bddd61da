"""An index's ANN indexes: built when its `AnnPolicy` says so, built again like the ones before, and dropped.

Two kinds: LanceDB's IVF indexes on every space's column (`mrag.retrieve.ann`), or in-process HNSW graphs
beside the table (`mrag.retrieve.graph`), of every space or of some. `mrag.index.Index` runs `maintain_ann`
after every write, so CLI, Python and HTTP writes alike keep them up.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from typing import Any

from mrag.locking import is_local
from mrag.retrieve import ann, graph
from mrag.settings import AnnPolicy
from mrag.store import Store


def maintain_ann(store: Store, policy: AnnPolicy, force: bool = False) -> dict[str, Any] | None:
    """(Re)build the ANN indexes when `policy` says so (`ann.needs_ann`: past its threshold, or once a quarter
    of the rows are not indexed), or now (`force`); -> what was built, else None. HNSW graphs are kept up
    on every write instead (`graph.maintain`); another type replaces them only when forced."""
    built = store.manifest.ann or {}
    if built.get("index_type") == graph.INDEX_TYPE and not force:
        return built if graph.maintain(store) else None
    if not force:
        rows = store.count()
        if rows < policy.threshold and not built:  # indexes built before (by hand, or under a lower threshold)
            return None  # are kept up as the rows grow
        if not ann.needs_ann(rows, built or None, policy.threshold, ann.unindexed_rows(store.snapshot())):
            return None
    return build_like(store, policy, built, None if force else built)


def build_like(store: Store, policy: AnnPolicy, built: dict[str, Any],
               unless_rebuilt: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build the ANN indexes as `policy` asks, else as `built` (the indexes before) were; see `build_ann`
    for `unless_rebuilt`."""
    index_type = policy.index_type or built.get("index_type", ann.DEFAULT_INDEX)
    same = index_type == built.get("index_type")  # an IVF index's nprobes is no HNSW ef, and back
    return build_ann(store, index_type, policy.nprobes or (built.get("nprobes") if same else None),
                     spaces=policy.spaces or (built.get("spaces") if same else None), unless_rebuilt=unless_rebuilt)


def build_ann(store: Store, index_type: str = ann.DEFAULT_INDEX, nprobes: int | None = None,
              progress: Callable[[str], None] | None = None, spaces: Sequence[str] | None = None,
              unless_rebuilt: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build (or rebuild) an ANN index on every space's column, in one committed write; `nprobes` is
    recorded as the searches' default (IVF partitions, or HNSW's ef; None: the type's default). HNSW builds
    in-process graphs beside the table, of every space or of those in `spaces` ("standard", "heads",
    "head:I", a label); the others are scanned exactly (the default strategy needs the standard vector's
    graph alone). `unless_rebuilt`: the ANN record the caller decided on; where another writer changed it
    by the time this one holds the lock (writers that crossed the threshold together), nothing is built
    and the record now is returned."""
    if spaces is not None and index_type != graph.INDEX_TYPE:
        raise ValueError("choosing the spaces to index is for the HNSW type; LanceDB's indexes cover every space")
    if nprobes is None:
        nprobes = graph.DEFAULT_EF if index_type == graph.INDEX_TYPE else ann.DEFAULT_NPROBES
    if nprobes <= 0:
        raise ValueError(f"nprobes must be positive, got {nprobes}")
    columns = {c.column: c.width for c in store.vector_columns()}
    if store.count() == 0:
        raise ValueError("the index is empty: add documents before building ANN indexes")
    if index_type == graph.INDEX_TYPE:
        store.refresh()
        if unless_rebuilt is not None and (store.manifest.ann or {}) != unless_rebuilt:
            return store.manifest.ann or {}  # built meanwhile by another writer (graphs build outside the lock)
        return graph.build(store, nprobes, progress, spaces)
    with store.writing():
        before = store.manifest.ann or {}  # under the lock: what this build replaces
        if unless_rebuilt is not None and before != unless_rebuilt:
            return before
        ann.build(store.chunks, columns, index_type, progress)
        built = {"index_type": index_type, "rows": store.chunks.count_rows(), "nprobes": nprobes}
        store.stage(ann=built)
        if before.get("index_type") == graph.INDEX_TYPE:
            drop_graphs(store)  # replaced: no search reads them once this commits (13 graphs: 2.7 GB at 1M rows)
    return built


def drop_graphs(store: Store) -> None:
    """Remove a local index's HNSW graphs (under the write lock, so graphs a later build writes stay; a reader
    of these scans exactly instead, as do searches where the commit then fails: the next write's upkeep
    builds them again)."""
    if is_local(store.uri):
        shutil.rmtree(graph.folder(store.uri), ignore_errors=True)


def drop_ann(store: Store) -> dict[str, Any] | None:
    """Drop the ANN indexes (LanceDB's vector indexes, or the HNSW graphs) in one committed write, so
    searches scan exactly: below 1M chunks the faster path for queries of several sentences
    (`benchmarks/results/exact-or-ann-*.md`); the full-text index stays. -> what was dropped, else None.
    Writes build them again once the `AnnPolicy` threshold is reached."""
    store.refresh()
    if not store.manifest.ann:
        return None
    columns = {c.column for c in store.vector_columns()}
    with store.writing(maintain=False):
        built = store.manifest.ann  # read again under the lock: another writer may have dropped or rebuilt them
        ann.drop_indexes(store.chunks, columns)
        store.stage(ann=None)
        if built and built.get("index_type") == graph.INDEX_TYPE:
            drop_graphs(store)
    return dict(built) if built else None
