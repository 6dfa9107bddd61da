"""Approximate search through in-process HNSW graphs (faiss), index type "HNSW": one graph per
space over the in-memory matrix's rows, so a query part costs a walk of a few thousand rows instead of
LanceDB's per-call work. `mrag.retrieve.walk.GraphRanker` searches them.

A graph's nodes are rows of the matrix as it was when they were added, each saved with a key (its
chunk id and the first floats of its standard vector and of any external space graphed, `row_keys`).
Graphs live in the index folder, `graphs/<version>-<ns>-<random>/` (a new one per build, never
reused), written by `update` after a commit and read by every process; a folder is complete once its
`meta.json` is there.

A graph of an earlier version serves a matrix whose first rows are its surviving nodes in their order
(`placement`): LanceDB keeps the order of the rows a delete leaves, through compaction too, and
appends new rows, an upsert's included. A walk drops the removed nodes it meets; a part left with too
few live rows (near a deleted document or topic) walks again with them skipped and a breadth widened
by twice their number. The rows past the graph are scanned exactly and merged, so results are never
stale, and hits are fetched and ties broken as on the exact path. `update` extends graphs once the
appended rows pass STALE_SHARE and builds them anew once the removed nodes pass REMOVED_SHARE or
REMOVED_ROWS (searches scan exactly meanwhile). Graphs store 8-bit vectors; every candidate is
re-scored in fp32.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mrag.locking import is_local, local_path, write_lock
from mrag.matrix import Matrix
from mrag.retrieve.ann import drop_indexes
from mrag.retrieve.nodes import DEAD, NodeIndex, Placed, Placement, matrix_keys, place_in
from mrag.settings import DEFAULT_EF as DEFAULT_EF  # re-exported: the graphs' default ef
from mrag.settings import GRAPH_INDEX

INDEX_TYPE = GRAPH_INDEX
FOLDER = "graphs"
LINKS = 32  # HNSW's M: neighbours per row (twice as many on the bottom layer)
NARROW_LINKS, NARROW = 16, 64  # spaces of at most 64 dims (heads): half the links' bytes, the same recall
BUILD_DEPTH = 64  # efConstruction
STALE_SHARE = 0.02  # `update` extends the graphs once more than this share of the rows is past them
REMOVED_SHARE = 0.2  # ... and builds them anew once more than this share of their nodes was removed,
REMOVED_ROWS = 1024  # ... or more than this many; searches scan exactly past it
KEYS = "nodes.npy"  # a graph folder's node keys, in node order
ADD_ROWS = 65_536  # rows added to a graph at a time (bounds the float copy of the 8-bit build)


def require_faiss() -> Any:
    try:
        import faiss
    except ImportError as error:
        raise ImportError("the HNSW index type needs faiss: pip install 'mrag[graph]' (faiss-cpu)") from error
    return faiss


def space_vectors(matrix: Matrix, space: str) -> np.ndarray:
    """The vectors a space ranks rows by, in row order: "standard", "head:i" or an external space.  -> (N, d)"""
    if space == "standard":
        return matrix.standard
    if space.startswith("head:"):
        return matrix.heads[int(space.split(":")[1])]
    return matrix.extra[space]


def graph_spaces(matrix: Matrix, only: Sequence[str] | None = None, loaded_only: bool = True) -> list[str]:
    """The spaces a graph is built for: every space (the standard vector, each head, each external
    space), or those named in `only` ("heads": every head); of a matrix read without heads, none of
    its heads, unless `loaded_only` is False (naming them).  ["standard", "heads"] -> standard, head:0..H-1"""
    heads = [f"head:{i}" for i in range(matrix.heads.shape[0])]
    every = ["standard", *heads, *matrix.extra]
    loaded = every if matrix.heads.shape[2] > 0 or not loaded_only else ["standard", *matrix.extra]
    if only is None:
        return loaded
    wanted = {h for name in only for h in (heads if name == "heads" else [name])}
    unknown = sorted(wanted - set(every))
    if unknown or not wanted:
        raise ValueError(f"no space {unknown[0]!r} to build a graph for; choose among standard, heads, "
                         f"{', '.join(every[1:])}" if unknown else "name at least one space to build a graph for")
    if wanted - set(loaded):
        raise ValueError("graphs of heads need the matrix with its heads (Store.matrix(heads=True))")
    return [name for name in loaded if name in wanted]


def needs_heads(only: Sequence[str] | None) -> bool:
    """Whether graphs of these spaces (None: every one) need the matrix's heads."""
    return only is None or any(name == "heads" or name.startswith("head:") for name in only)


def new_graph(dim: int) -> Any:
    faiss = require_faiss()
    # a head's links outweigh its 8-bit vector (64 x 4 B against 32 B a row): M 16 kept a 32-dim head's
    # recall@32 (0.960 against 0.961 at ef 128, 141k real rows, one-off) at 176 bytes a row against 304
    links = NARROW_LINKS if dim <= NARROW else LINKS
    graph = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, links, faiss.METRIC_INNER_PRODUCT)
    graph.hnsw.efConstruction = BUILD_DEPTH
    return graph


def extend(graph: Any, vectors: np.ndarray) -> None:
    """Add rows (the next row numbers, in order) to a graph; an empty one is first trained on them:
    the 8-bit codes span each dimension's range over these rows, widened by a tenth for later ones."""
    if not graph.is_trained:
        low, high = vectors.min(axis=0), vectors.max(axis=0)
        margin = 0.1 * (high - low) + 1e-6
        graph.train(np.stack([low - margin, high + margin]).astype(np.float32))
    for start in range(0, len(vectors), ADD_ROWS):
        graph.add(np.ascontiguousarray(vectors[start:start + ADD_ROWS], dtype=np.float32))


@dataclass
class Graphs:
    """The graphs of one folder, whose nodes have the keys `nodes` (node order). A space's graph is
    read on its first search (`graph`): the default strategy reads the standard vector's alone."""

    version: int
    nodes: np.ndarray  # (M,) uint64 each node's row key
    files: dict[str, Path]  # space -> its graph's file
    loaded: dict[str, Any] = field(default_factory=dict)  # space -> faiss index, once read
    placed: Placed | None = None  # the last matrix placed, and where
    broken: set[str] = field(default_factory=set)  # spaces whose graph could not be read: scanned instead
    path: Path | None = None  # the folder: never reused for other graphs, so its keys stay those of its files
    index: NodeIndex | None = None  # the nodes sorted by key, made on the first placement

    def place(self, matrix: Matrix) -> Placement | None:
        """Where the nodes are in `matrix` (`placement`), worked out once per matrix version; for a
        matrix grown from the one placed before (`mrag.matrix.grown`), from its new rows alone."""
        placed = self.placed  # one read: another thread may place another version meanwhile
        if placed is None or placed.version != matrix.version:
            if self.index is None:
                self.index = NodeIndex.of(self.nodes)
            placed = self.placed = place_in(matrix, self.files, self.nodes, self.index, placed)
        return placed.place

    def fits(self, matrix: Matrix) -> bool:
        return self.place(matrix) is not None

    def graph(self, space: str) -> Any:
        if space not in self.loaded:
            graph = require_faiss().read_index(str(self.files[space]))
            if graph.ntotal != len(self.nodes):
                raise RuntimeError(f"{self.files[space]} holds {graph.ntotal} nodes, its folder {len(self.nodes)} keys")
            self.loaded[space] = graph
        return self.loaded[space]

    def usable(self, space: str) -> bool:
        """Whether the space has a graph that reads. One that does not (removed by a newer update, cut
        short, or no faiss here) is scanned exactly from then on, with one warning."""
        if space not in self.files or space in self.broken:
            return False
        try:
            self.graph(space)
        except (OSError, RuntimeError, ImportError) as error:
            self.broken.add(space)
            warnings.warn(f"the HNSW graph of {space!r} ({self.files[space]}) cannot be read, so that space is "
                          f"scanned exactly: {error}", RuntimeWarning, stacklevel=2)
            return False
        return True


def folder(uri: str) -> Path:
    """Where a local index's graphs live."""
    return local_path(uri) / FOLDER


def _complete_folders(root: Path) -> list[tuple[int, Path]]:
    """The complete graph folders under root, newest first: (version, path). A folder is named
    <version>-<nanoseconds>-<random> (`write`), so a build at a version that has graphs adds a newer
    folder instead of replacing one that readers may hold."""
    found = []
    try:
        entries = list(root.iterdir())
    except (FileNotFoundError, NotADirectoryError):  # none yet, or dropped meanwhile (`drop_graphs`)
        entries = []
    for path in entries:
        version, _, written = path.name.partition("-")
        if version.isdigit() and (path / "meta.json").is_file():
            stamp = written.partition("-")[0]
            found.append(((int(version), int(stamp) if stamp.isdigit() else 0), path))
    return [(key[0], path) for key, path in sorted(found, reverse=True)]


def on_disk(uri: str) -> dict[str, int] | None:
    """What the newest complete graphs cover: {"graph_version", "graph_nodes"} (their nodes count the rows
    removed since until a rebuild), or None when there are none (`mrag info`)."""
    for _, path in _complete_folders(folder(uri)):
        try:
            meta = json.loads((path / "meta.json").read_text())
            return {"graph_version": int(meta["version"]), "graph_nodes": int(meta["nodes"])}
        except (OSError, ValueError, KeyError):
            continue  # removed meanwhile by a newer update
    return None


def read(path: Path) -> Graphs:
    """A complete folder's graphs (read lazily); ValueError or KeyError where the folder is of another
    format or its node keys do not match its record."""
    meta = json.loads((path / "meta.json").read_text())
    files = {space: path / name for space, name in meta["files"].items()}
    nodes = np.load(path / KEYS)
    if nodes.dtype != np.uint64 or len(nodes) != int(meta["nodes"]):
        raise ValueError(f"{path}: {len(nodes)} node keys, {meta['nodes']} nodes recorded")
    return Graphs(int(meta["version"]), nodes, files, path=path)


def latest(root: Path, matrix: Matrix, cached: Graphs | None = None) -> Graphs | None:
    """The newest graphs that fit `matrix` (no newer than it: their first node is its first row),
    reusing `cached` when that is the one; None when the newest readable folder does not fit (the matrix
    is then scanned exactly until `update` writes one that does)."""
    for version, path in _complete_folders(root):
        if version > matrix.version:
            continue  # written for a commit this reader has not seen yet
        if cached is not None and cached.path == path:
            return cached if cached.fits(matrix) else None
        try:
            graphs = read(path)
        except (OSError, RuntimeError, ValueError, KeyError):
            continue  # removed meanwhile by a newer update, cut short, or of an older format
        return graphs if graphs.fits(matrix) else None
    return None


def write(root: Path, version: int, graphs: dict[str, Any], nodes: np.ndarray) -> Graphs:
    """Save graphs with their node keys in a new folder of root, atomically: a staging folder renamed
    into place, named after `version` and the time (`_complete_folders`). Older folders but the newest
    one before go."""
    faiss = require_faiss()
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    files = {space: f"{i}.faiss" for i, space in enumerate(graphs)}
    target = root / f"{version}-{time.time_ns()}-{os.urandom(3).hex()}"
    try:
        staging.chmod(0o755)  # mkdtemp's 0700 would hide the graphs from readers running as another user
        for space, graph in graphs.items():
            faiss.write_index(graph, str(staging / files[space]))
        np.save(staging / KEYS, nodes)
        meta = {"version": version, "nodes": len(nodes), "files": files, "build_depth": BUILD_DEPTH}
        (staging / "meta.json").write_text(json.dumps(meta))
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a full disk keeps no half-written graphs
        raise
    for _, old in _complete_folders(root)[2:]:  # a reader of one sees its graphs vanish: scanned, warned once
        shutil.rmtree(old, ignore_errors=True)
    for left in root.glob(".staging-*"):  # cut short by a crash over an hour ago
        try:
            if time.time() - left.stat().st_mtime > 3600:
                shutil.rmtree(left, ignore_errors=True)
        except FileNotFoundError:
            pass  # another writer's, renamed meanwhile
    return Graphs(version, nodes, {s: target / f for s, f in files.items()}, dict(graphs), path=target)


def reusable(
    root: Path, matrix: Matrix, spaces: Sequence[str], cached: Graphs | None = None
) -> tuple[Graphs, Placement] | None:
    """The newest graphs that fit `matrix`, of these spaces, that lost few enough nodes (`walkable`),
    and where their nodes are (`cached`: as `latest`); None: `update` builds them anew."""
    current = latest(root, matrix, cached)
    place = None if current is None else current.place(matrix)
    if current is None or place is None or set(current.files) != set(spaces) or not walkable(current, place):
        return None
    return current, place


def walkable(graphs: Graphs, place: Placement) -> bool:
    """Whether graphs with these removed nodes are walked (searches) and kept (writes): at most
    REMOVED_ROWS of them, and at most REMOVED_SHARE of the nodes."""
    return place.removed <= min(REMOVED_ROWS, REMOVED_SHARE * len(graphs.nodes))


def stale(matrix: Matrix, place: Placement) -> bool:
    """Whether more than STALE_SHARE of the rows are past the graphs: `update` extends them."""
    return len(matrix.ids) - place.covered > STALE_SHARE * len(matrix.ids)


def update(
    root: Path, matrix: Matrix, force: bool = False, progress: Any = None, only: Sequence[str] | None = None,
    cached: Graphs | None = None,
) -> Graphs | None:
    """Bring the graphs of the spaces in `only` (None: every space) up to `matrix`: extend the newest
    that fits by the rows past it (when they are more than STALE_SHARE of the rows), or build them anew
    (with `force`, when none fits, or when it lost too many nodes: `walkable`).
    `cached`: graphs already placed in a matrix of the same version (`latest`). -> the graphs written,
    or None when the newest already serves."""
    n = len(matrix.ids)
    if n == 0:
        return None  # nothing to walk: the old graphs fit no more, and an empty matrix is scanned at once
    spaces = graph_spaces(matrix, only)
    found = None if force else reusable(root, matrix, spaces, cached)
    if found is not None and not stale(matrix, found[1]):
        return None
    graphs, start, kept = None, 0, np.zeros(0, dtype=np.uint64)
    if found is not None:
        current, place = found
        try:
            graphs, start = {space: current.graph(space) for space in spaces}, place.covered
            # removed nodes' keys are cleared: such a chunk written again is one of the rows past the
            # graphs (`placement`), added below as a new node
            kept = np.where(place.rows >= 0, current.nodes, DEAD)
        except (OSError, RuntimeError):
            graphs = None  # removed meanwhile by another writer's update: built anew below
    if graphs is None:
        graphs = {space: new_graph(space_vectors(matrix, space).shape[1]) for space in spaces}
    for space, graph in graphs.items():
        extend(graph, space_vectors(matrix, space)[start:])
        if progress:
            progress(space)
    nodes = np.concatenate([kept, matrix_keys(matrix, spaces, start)])
    return write(root, matrix.version, graphs, nodes)


def build(store: Any, ef: int, progress: Any = None, only: Sequence[str] | None = None) -> dict[str, Any]:
    """The graphs of every space, or of those in `only` (the others are scanned exactly), built anew for
    a local index's committed rows, then recorded as its ANN type in one committed write; -> the
    record. (`Index.build_ann("HNSW")`.)"""
    if not is_local(store.uri):
        raise ValueError("HNSW graphs live in a local index folder; on object storage use an IVF index")
    if store.packed:
        raise ValueError("HNSW graphs need an index of mrag format 2 or later (one column per head)")
    require_faiss()
    store.refresh()
    matrix = store.matrix(refresh=False, heads=needs_heads(only), keep=False)
    spaces = graph_spaces(matrix, only)  # checked before anything is built
    update(folder(store.uri), matrix, True, progress, spaces)  # outside the write lock: reads only
    del matrix
    with store.writing(maintain=False):
        built = {"index_type": INDEX_TYPE, "rows": store.chunks.count_rows(), "nprobes": ef}
        store.stage(ann=built if only is None else {**built, "spaces": spaces})
        # LanceDB's vector indexes of another type are replaced: no search reads them, and each optimize
        # would fold new rows into them
        drop_indexes(store.chunks, {c.column for c in store.vector_columns()})
    maintain(store)  # rows another writer committed meanwhile
    return store.manifest.ann  # type: ignore[no-any-return]


def maintain(store: Any, force: bool = False, progress: Any = None) -> Graphs | None:
    """Bring a local index's graphs (of the spaces its ANN record names; all when it names none) up to
    its committed rows (`update`; `force`: anew). After a write a failure (no faiss in this process, a
    full disk) leaves the committed rows as they are: it is warned, and searches scan exactly what no
    graph covers."""
    store.refresh()
    only, root = (store.manifest.ann or {}).get("spaces"), folder(store.uri)
    try:
        found = None
        if not force:
            # most writes leave the graphs as they are, which the rows' ids and standard vectors tell
            # alone. Matrices are read without keeping them: a server that searches without heads keeps its own
            lean = store.matrix(refresh=False, heads=False, keep=False)
            found = reusable(root, lean, graph_spaces(lean, only, loaded_only=False)) if len(lean.ids) else None
            if not len(lean.ids) or (found is not None and not stale(lean, found[1])):
                return None
        matrix = store.matrix(refresh=False, heads=needs_heads(only), keep=False)
        written = update(root, matrix, force, progress, only, None if found is None else found[0])
        if written is None or written.path is None:
            return written
        with write_lock(store.uri, storage_options=store.storage_options):  # a drop removes graphs under it
            store.refresh()
            if (store.manifest.ann or {}).get("index_type") != INDEX_TYPE:
                shutil.rmtree(written.path, ignore_errors=True)  # dropped (or replaced) while these were built
                with contextlib.suppress(OSError):
                    root.rmdir()  # the folder `write` made again, when it holds nothing else
                return None
        return written
    except (ImportError, OSError, RuntimeError, ValueError) as error:
        if force:
            raise
        warnings.warn(f"the HNSW graphs of {store.uri} were not updated ({error}); searches scan the rows they do "
                      "not cover exactly until `mrag index --build-ann --ann-index HNSW`", RuntimeWarning,
                      stacklevel=2)
        return None
