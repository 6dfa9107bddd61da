"""LanceDB storage: one `chunks` table (a row per chunk) and a one-row `manifest` table.

Row layout: id, doc_id, source, title, position, text, metadata (JSON), doc_hash, and the vectors:
`vector` (D, unit standard embedding), one column per head `head_0` ... `head_{H-1}` (d each, scaled
to unit length; one column per space, so LanceDB can build an ANN index on each) and `head_norms`
(H, the heads' original lengths, needed to take a row back out of the head-scale sums on delete).
Format 1 indexes kept all heads in one packed `heads` column: they can be searched, not written.

The manifest records the embedder (model, revision, layer, pooling, H, d_head, instructions), the
chunking settings, the running head-scale sums and the committed `chunks` version they belong to.
Saving the manifest is the commit point: readers see the table at the committed version only, so
a search never sees half of a write, and a write that died is rolled back by the next writer.

Writers in several processes take turns under the index's file lock (`mrag.locking`): each re-reads
the manifest under it and folds its rows onto the latest committed sums, so no write is lost and no
live writer's rows are mistaken for a dead write. Readers re-read the manifest when its version moves
(a cheap check), so every open index follows other processes' commits. Every `MAINTAIN_EVERY`
commits the writer prunes old versions, keeping only the committed one, and compacts small fragments
when due (`mrag.maintenance`); `optimize` does both at once. A reader whose version was pruned
meanwhile reads again at the latest committed one (`reading`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from mrag import maintenance
from mrag.embed.base import Embeddings
from mrag.locking import Lease, is_local, local_path, write_lock
from mrag.scales import HeadStats, drift, split_unit, split_width

CHUNKS = "chunks"
MANIFEST = "manifest"
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
READ_TRIES = 5  # a read whose version was pruned meanwhile goes again at the latest committed one
T = TypeVar("T")


class StoreError(ValueError):
    """The store cannot do what was asked (wrong model, missing index, ...)."""


def space_column(name: str) -> str:
    """The column holding an external space's raw vectors (see `mrag.spaces`)."""
    return f"space_{name}"


def head_column(i: int) -> str:
    """The column holding head i's unit vectors."""
    return f"head_{i}"


def chunk_schema(dim: int, n_heads: int, head_dim: int, spaces: dict[str, int] | None = None) -> pa.Schema:
    """The chunks table's columns; `spaces` maps each external space to its dimension."""
    extra = [pa.field(space_column(name), pa.list_(pa.float32(), d)) for name, d in (spaces or {}).items()]
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
            pa.field("vector", pa.list_(pa.float32(), dim)),
            *(pa.field(head_column(i), pa.list_(pa.float32(), head_dim)) for i in range(n_heads)),
            pa.field("head_norms", pa.list_(pa.float32(), n_heads)),
            *extra,
        ]
    )


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


def quote(values: list[str]) -> str:
    """A SQL IN-list of string literals."""
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


class Store:
    def __init__(self, uri: str, db: Any, chunks: Any, manifest: dict[str, Any],
                 storage_options: dict[str, str] | None = None) -> None:
        self.uri = uri
        self.storage_options = storage_options
        self.db = db
        self.chunks = chunks
        self._manifest_table = db.open_table(MANIFEST)
        self._manifest_version = -1  # the manifest table version `self.manifest` was read at
        self._load(manifest)
        self._matrix: Matrix | None = None
        self._write_lock = threading.Lock()
        self._changed = 0

    def _load(self, manifest: dict[str, Any]) -> None:
        self.manifest = manifest
        self.n_heads = int(manifest["embedder"]["n_heads"])
        self.head_dim = int(manifest["embedder"]["head_dim"])
        self.dim = int(manifest["embedder"]["dim"])
        self.packed = manifest.get("format") == 1  # all heads in one `heads` column
        # the writer's running sums; readers use the committed ones in the manifest
        self.stats = HeadStats.from_json(manifest["stats"]["heads"])
        self.split_stats = HeadStats.from_json(manifest["stats"]["split"])
        self.standard_stats = HeadStats.from_json(manifest["stats"]["standard"])
        # external spaces: manifest entries {name, function, options, dim, weight}, one stats group each
        self.spaces: list[dict[str, Any]] = list(manifest.get("spaces", []))
        groups = manifest["stats"]
        self.space_stats = {
            s["name"]: HeadStats.from_json(groups.get(f"space:{s['name']}") or HeadStats(1, s["dim"]).to_json())
            for s in self.spaces
        }

    def space_dims(self) -> dict[str, int]:
        return {s["name"]: int(s["dim"]) for s in self.spaces}

    def committed_space_dims(self) -> dict[str, int]:
        """External space -> dimension, as the committed manifest (what readers see) records them."""
        return {s["name"]: int(s["dim"]) for s in self.manifest.get("spaces", [])}

    def schema(self) -> pa.Schema:
        return chunk_schema(self.dim, self.n_heads, self.head_dim, self.space_dims())

    def committed_scales(self) -> dict[str, np.ndarray]:
        """Scales of the committed rows: "heads" (H,), "split" (S,), "standard" (1,) and "space:NAME" (1,)."""
        return {name: HeadStats.from_json(group).scales() for name, group in self.manifest["stats"].items()}

    @property
    def committed_version(self) -> int:
        """The chunks version of the last complete write: what readers see."""
        return int(self.manifest["chunks_version"])

    def refresh(self) -> None:
        """Pick up writes committed since (by this or another process): a version check, and a
        read of the manifest only when it moved."""
        for attempt in range(READ_TRIES):
            try:
                version = self._manifest_table.version  # read_consistency_interval=0: the latest version
                if version != self._manifest_version:
                    rows = self._manifest_table.to_arrow().to_pylist()
                    self.manifest, self._manifest_version = json.loads(rows[0]["json"]), version
                return
            except Exception:  # a writer committed and pruned the version between the check and the read
                if attempt == READ_TRIES - 1:
                    raise

    def reading(self, read: Callable[[Any], T]) -> T:
        """`read(snapshot)` at the committed version. When it fails and a newer commit exists (whose
        maintenance may have pruned the version being read), again at the latest committed one."""
        for attempt in range(READ_TRIES):
            seen = self.committed_version
            try:
                return read(self.snapshot())
            except Exception:
                self.refresh()
                if self.committed_version == seen or attempt == READ_TRIES - 1:
                    raise  # not a pruned version: the same read would fail again
        raise AssertionError("unreachable")

    @staticmethod
    def exists(uri: str, storage_options: dict[str, str] | None = None) -> bool:
        """Whether an index is at `uri`: a folder, or an object-store URI such as s3://bucket/path
        (`storage_options`: endpoint, keys, region, ... as Lance names them; or AWS_* variables)."""
        import lancedb

        if "://" not in uri and not Path(uri).expanduser().is_dir():
            return False  # connecting would create the folder
        return MANIFEST in lancedb.connect(uri, storage_options=storage_options).list_tables().tables

    @classmethod
    def open(cls, uri: str, storage_options: dict[str, str] | None = None) -> Store:
        import lancedb

        if not cls.exists(uri, storage_options):
            raise StoreError(f"no mrag index at {uri}: create one with `mrag index PATH --db {uri}`")
        db = lancedb.connect(uri, read_consistency_interval=timedelta(0), storage_options=storage_options)
        rows = db.open_table(MANIFEST).to_arrow().to_pylist()
        manifest = json.loads(rows[0]["json"])
        if manifest.get("format") not in READABLE_FORMATS:
            raise StoreError(f"{uri} was written by an incompatible mrag (format {manifest.get('format')})")
        return cls(uri, db, db.open_table(CHUNKS), manifest, storage_options)

    @classmethod
    def create(
        cls,
        uri: str,
        embedder_info: dict[str, Any],
        settings: dict[str, Any],
        storage_options: dict[str, str] | None = None,
        spaces: list[dict[str, Any]] | None = None,
    ) -> Store:
        """A new, empty index (or the one another process has just created there).
        `spaces`: external space entries {name, function, options, dim, weight}."""
        if is_local(uri):
            local_path(uri).mkdir(parents=True, exist_ok=True)  # the lock file lives in the folder
        with write_lock(uri, storage_options=storage_options):
            if cls.exists(uri, storage_options):  # another process created it first
                return cls.open(uri, storage_options)
            import lancedb

            db = lancedb.connect(uri, read_consistency_interval=timedelta(0), storage_options=storage_options)
            h, d, dim = embedder_info["n_heads"], embedder_info["head_dim"], embedder_info["dim"]
            space_dims = {s["name"]: int(s["dim"]) for s in spaces or []}
            chunks = db.create_table(CHUNKS, schema=chunk_schema(dim, h, d, space_dims), exist_ok=True)
            split_dim = split_width(dim, h)
            manifest = {
                "format": FORMAT_VERSION,
                "embedder": embedder_info,
                "settings": settings,
                "chunks_version": chunks.version,
                "stats": {
                    "heads": HeadStats(h, d).to_json(),
                    "split": HeadStats(dim // split_dim, split_dim).to_json(),
                    "standard": HeadStats(1, dim).to_json(),
                    **{f"space:{name}": HeadStats(1, sd).to_json() for name, sd in space_dims.items()},
                },
            } | ({"spaces": list(spaces)} if spaces else {})
            db.create_table(MANIFEST, data=[{"json": json.dumps(manifest)}])  # new: the folder had no manifest
            return cls(uri, db, chunks, manifest, storage_options)

    # --- reading -------------------------------------------------------------------------

    def snapshot(self) -> Any:
        """The chunks table as of the last committed write (never a half-written batch)."""
        table = self.db.open_table(CHUNKS)
        table.checkout(self.committed_version)  # pinned: a table left at "latest" follows later writes
        return table

    def count(self) -> int:
        return self.reading(lambda table: int(table.count_rows()))

    def rows(self, where: str | None = None, columns: list[str] | None = None, table: Any = None) -> pa.Table:
        """Rows matching `where` from `table` (default: the committed snapshot, read again at the
        latest commit if its version is pruned meanwhile)."""

        def read(source: Any) -> pa.Table:
            query = source.search()
            if where:
                query = query.where(where)
            if columns:
                query = query.select(columns)
            return query.limit(None).to_arrow()

        return read(table) if table is not None else self.reading(read)

    def rows_by_id(self, ids: list[str], columns: list[str], table: Any = None) -> list[dict[str, Any]]:
        """Rows for the given chunk ids, in the given order (from `table`, default the snapshot)."""
        if not ids:
            return []
        table = self.rows(f"id IN ({quote(ids)})", ["id", *columns], table).to_pylist()
        by_id = {r["id"]: r for r in table}
        return [by_id[i] for i in ids if i in by_id]

    def take(
        self, table: Any, columns: list[str], offsets: list[int] | None = None, row_ids: list[int] | None = None
    ) -> dict[str, dict[str, Any]]:
        """Rows by position in `table` (as the matrix numbers them) or by Lance row id: id -> row.
        No filter scan: this is what a search reads besides the vectors."""
        if not offsets and not row_ids:
            return {}
        query = table.take_offsets(offsets) if offsets else table.take_row_ids(row_ids)
        return {r["id"]: r for r in query.select(["id", *columns]).to_arrow().to_pylist()}

    def doc_hashes(self, doc_ids: list[str]) -> dict[str, str]:
        if not doc_ids:
            return {}
        table = self.rows(f"doc_id IN ({quote(doc_ids)})", ["doc_id", "doc_hash"])
        return dict(zip(table["doc_id"].to_pylist(), table["doc_hash"].to_pylist()))

    def matrix(self, refresh: bool = True) -> Matrix:
        """Every committed row's vectors in memory, reloaded only after a new committed write
        (`refresh=False`: the caller has just refreshed the manifest)."""
        if refresh:
            self.refresh()
        matrix = self._matrix
        if matrix is None or matrix.version != self.committed_version:
            snapshot = self.snapshot()
            dims = self.committed_space_dims()
            table = self.rows(columns=["id", "vector", *self.head_columns(), *map(space_column, dims)],
                              table=snapshot)
            n = table.num_rows
            matrix = self._matrix = Matrix(
                version=snapshot.version,  # not committed_version: another thread may have refreshed it
                table=snapshot,
                ids=np.asarray(table["id"].to_pylist(), dtype=object),
                standard=_fixed(table["vector"], n, self.dim),
                heads=self._head_units(table),
                extra={name: split_unit(_fixed(table[space_column(name)], n, d))[1] for name, d in dims.items()},
            )
        return matrix

    def head_columns(self) -> list[str]:
        return ["heads"] if self.packed else [head_column(i) for i in range(self.n_heads)]

    def _head_units(self, rows: pa.Table) -> np.ndarray:
        """The rows' unit heads, head-major.  -> (H, N, d)"""
        n, h, d = rows.num_rows, self.n_heads, self.head_dim
        if self.packed:  # format 1: (N, H*d) in one column
            return np.ascontiguousarray(_fixed(rows["heads"], n, h * d).reshape(n, h, d).transpose(1, 0, 2))
        heads = np.empty((h, n, d), dtype=np.float32)
        for i in range(h):
            heads[i] = _fixed(rows[head_column(i)], n, d)
        return heads

    # --- writing -------------------------------------------------------------------------

    @contextmanager
    def writing(self, maintain: bool = True) -> Iterator[None]:
        """All-or-nothing. Rows become visible to readers only when the manifest commits them; on
        any error the chunks table is restored and the sums are untouched. One writer at a time, across
        threads and processes: under the lock the manifest is read again, so the sums fold onto the
        latest committed ones, and rows newer than the committed version can only be a dead write's,
        rolled back first. After the commit, maintenance by policy (`_maintain`; `maintain=False`: none)."""
        if self.packed:
            raise StoreError(
                f"{self.uri} was written by mrag format 1 (all heads in one column): it can be searched "
                "but not changed; index the files again into a new folder"
            )
        with self._locked() as lease:
            try:
                yield
                if lease is not None and lease.lost:
                    raise StoreError(f"the write lock on {self.uri} expired before the commit (a stall of over "
                                     "a minute?) and another writer may hold it now; nothing was committed")
            except BaseException:
                self._manifest_version = -1  # drop anything the failed write set on the manifest
                self.refresh()
                self._load(self.manifest)
                if lease is None or not lease.lost:  # else the rows past the commit may be the new holder's
                    self._restore_committed()
                raise
            since = self.manifest.get("maintenance", {"writes": 0, "rows": 0})
            since = since | {"writes": since["writes"] + 1, "rows": since["rows"] + self._changed}
            self.manifest = self.manifest | {"maintenance": since}
            self._save_manifest()
            if maintain and since["writes"] % maintenance.MAINTAIN_EVERY == 0:
                self._maintain(since)

    def _maintain(self, since: dict[str, int]) -> None:
        """The automatic pass after a commit (`mrag.maintenance.maintain`)."""
        maintenance.maintain(self, since)

    @contextmanager
    def _locked(self) -> Iterator[Lease | None]:
        """The write lock, the latest committed manifest and sums, and a dead write rolled back."""
        with self._write_lock, write_lock(self.uri, storage_options=self.storage_options) as lease:
            self.refresh()
            self._load(self.manifest)
            self._restore_committed()
            self._changed = 0  # rows added or deleted by this write
            yield lease

    def optimize(self, keep_versions: timedelta | None = None) -> dict[str, Any]:
        """Compact small fragments, fold new rows into the ANN and full-text indexes, and prune old
        versions (those older than `keep_versions`; default: all but the committed one), beside
        readers and other writers."""
        before = self.disk_bytes()
        with self._locked():
            self._optimize(keep_versions)
        return {"version": self.committed_version, "bytes_before": before, "bytes_after": self.disk_bytes()}

    def _optimize(self, keep: timedelta | None) -> None:
        """Under the write lock (`mrag.maintenance.compact_and_prune`)."""
        maintenance.compact_and_prune(self, keep)

    def disk_bytes(self) -> int | None:
        """The index folder's size on disk (None for object storage)."""
        if not is_local(self.uri):
            return None
        return sum(p.stat().st_size for p in local_path(self.uri).rglob("*") if p.is_file())

    def _restore_committed(self) -> None:
        self.chunks.checkout_latest()
        if self.chunks.version != self.committed_version:
            self.chunks.restore(self.committed_version)
            self._save_manifest()

    def add(self, rows: pa.Table) -> None:
        """Append rows (use inside `writing()`); the head-scale sums follow."""
        self._fold(rows, sign=1)
        self.chunks.add(rows)
        self._changed += rows.num_rows

    def delete(self, where: str) -> int:
        """Delete the rows matching a filter (inside `writing()`); returns how many."""
        columns = ["vector", *self.head_columns(), "head_norms", *map(space_column, self.space_stats)]
        gone = self.rows(where, columns, table=self.chunks)
        if gone.num_rows:
            self._fold(gone, sign=-1)
            self.chunks.delete(where)
            self._changed += gone.num_rows
        return gone.num_rows

    def groups(self) -> dict[str, HeadStats]:
        """The running sums this store keeps, by manifest name."""
        return {"heads": self.stats, "split": self.split_stats, "standard": self.standard_stats,
                **{f"space:{name}": stats for name, stats in self.space_stats.items()}}

    def _fold(self, rows: pa.Table, sign: int, groups: dict[str, HeadStats] | None = None) -> None:
        """Fold rows into (sign=1) or out of (sign=-1) the sums (default: the writer's running ones)."""
        n = rows.num_rows
        if n == 0:
            return
        groups = self.groups() if groups is None else groups
        units = self._head_units(rows).transpose(1, 0, 2)  # (N, H, d)
        groups["heads"].add(_fixed(rows["head_norms"], n, self.n_heads), units, sign)
        split = groups["split"]
        slice_norms, slice_units = split_unit(_fixed(rows["vector"], n, self.dim).reshape(n, split.n_heads, -1))
        split.add(slice_norms, slice_units, sign)
        std_norms, std_units = split_unit(_fixed(rows["vector"], n, self.dim))
        groups["standard"].add(std_norms[:, None], std_units[:, None, :], sign)
        for group, stats in groups.items():
            if group.startswith("space:"):
                norms, units = split_unit(_fixed(rows[space_column(group[6:])], n, stats.head_dim))
                stats.add(norms[:, None], units[:, None, :], sign)

    def verify(self) -> dict[str, Any]:
        """Check the committed index: chunk ids unique, and the committed sums equal to sums recomputed
        from the committed rows (`sums_drift`: the largest relative error, about 1e-12 when sound)."""
        self.refresh()
        committed = {name: HeadStats.from_json(group) for name, group in self.manifest["stats"].items()}
        spaces = [space_column(name[6:]) for name in committed if name.startswith("space:")]
        rows = self.rows(columns=["id", "vector", *self.head_columns(), "head_norms", *spaces])
        ids = rows["id"].to_pylist()
        fresh = {name: HeadStats(g.n_heads, g.head_dim) for name, g in committed.items()}
        for batch in rows.to_batches(max_chunksize=65536):
            self._fold(pa.Table.from_batches([batch]), 1, fresh)
        return {"chunks": len(ids), "duplicate_ids": len(ids) - len(set(ids)),
                "sums_drift": max(drift(committed[name], fresh[name]) for name in committed)}

    def add_spaces(self, entries: list[dict[str, Any]], ids: list[str], vectors: dict[str, np.ndarray]) -> None:
        """Add external spaces to every row (inside `writing()`): one rewrite of the chunks table.

        entries: manifest entries {name, function, options, dim, weight}; vectors: name -> (N, dim) raw,
        row i belonging to chunk ids[i]. The rows stay as they are; only the new columns are added.
        """
        table = self.chunks.to_arrow()
        position = {chunk_id: i for i, chunk_id in enumerate(ids)}
        if len(position) != table.num_rows or set(table["id"].to_pylist()) != set(position):
            raise StoreError("the rows changed while the new spaces were computed; nothing written")
        order = np.array([position[i] for i in table["id"].to_pylist()], dtype=np.int64)
        for entry in entries:
            name, dim = entry["name"], int(entry["dim"])
            if name in self.space_stats:
                raise StoreError(f"the index already holds a space {name!r}")
            values = np.asarray(vectors[name], dtype=np.float32).reshape(-1, dim)[order]
            column = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), dim)
            table = table.append_column(pa.field(space_column(name), pa.list_(pa.float32(), dim)), column)
            stats = self.space_stats[name] = HeadStats(1, dim)
            norms, units = split_unit(values)
            stats.add(norms[:, None], units[:, None, :])
            self.spaces.append(dict(entry))
        self.chunks.add(table, mode="overwrite")  # a rewrite: LanceDB's vector indexes are gone with it
        self.manifest = {key: value for key, value in self.manifest.items() if key != "ann"}

    def _save_manifest(self) -> None:
        """The commit point: record the table version and the sums that belong to it."""
        manifest = self.manifest | {
            "chunks_version": self.chunks.version,
            "stats": {name: stats.to_json() for name, stats in self.groups().items()},
        } | ({"spaces": self.spaces} if self.spaces else {})
        self._manifest_table.add([{"json": json.dumps(manifest)}], mode="overwrite")
        self.manifest, self._manifest_version = manifest, self._manifest_table.version


def _fixed(column: pa.ChunkedArray, n: int, width: int) -> np.ndarray:
    """A fixed-size-list column as a float32 matrix (n, width) without a Python loop."""
    if n == 0:
        return np.zeros((0, width), dtype=np.float32)
    flat = pa.concat_arrays([c.flatten() for c in column.chunks]) if column.num_chunks else pa.array([])
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
