"""LanceDB storage: one `chunks` table (a row per chunk, laid out as `mrag.rows` says) and a one-row
`manifest` table (`mrag.manifest.Manifest`).

The manifest records the embedder, the chunking settings, the running head-scale sums and the
committed `chunks` version they belong to. Saving the manifest is the commit point: readers see the
table at the committed version only, so a search never sees half of a write, and a write that died
is rolled back by the next writer.

Writers in several processes take turns under the index's file lock (`mrag.locking`): each re-reads
the manifest under it and folds its rows onto the latest committed sums, so no write is lost and no
live writer's rows are mistaken for a dead write. Readers re-read the manifest when its version moves
(a cheap check; a search on a local index asks LanceDB only when the manifest's `_versions` folder
changed, `refresh(quick=True)`, `mrag.versions`), so every open index follows other processes' commits.
Every `MAINTAIN_EVERY` commits the writer prunes old versions, keeping only the committed one, and
compacts small fragments when due (`mrag.maintenance`); `optimize` does both at once. A reader whose
version was pruned meanwhile reads again at the latest committed one (`reading`).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from mrag import maintenance
from mrag.connection import check_process, connect
from mrag.documents import partial
from mrag.errors import MadeAgain, StoreError
from mrag.locking import Lease, LockTimeout, is_local, local_path, lock_timeout, normal_uri, write_lock
from mrag.manifest import READABLE_FORMATS, Manifest
from mrag.matrix import Matrix, grown, head_units, load_matrix, stamps
from mrag.rows import VectorColumn, chunk_schema, fixed, quote, space_column, vector_columns
from mrag.scales import ScaleSums
from mrag.store_setup import CHUNKS, MANIFEST, clear_half_made, committed, own_folder
from mrag.versions import VersionsWatch

__all__ = ["CHUNKS", "MANIFEST", "READ_TRIES", "Store", "StoreError"]

READ_TRIES = 5  # a read whose version was pruned meanwhile goes again at the latest committed one
T = TypeVar("T")


def pruned(error: BaseException) -> bool:
    """Whether a read failed on a file that is gone: a newer commit's maintenance pruned the version read,
    whether or not this process has seen that commit yet (the read may have begun before)."""
    return "lance error: Not found" in str(error)


class Store:
    def __init__(self, uri: str, db: Any, chunks: Any, manifest: Manifest,
                 storage_options: dict[str, str] | None = None) -> None:
        self.uri = uri
        self.storage_options = storage_options
        self.db = db
        self.chunks = chunks
        self._manifest_table = db.open_table(MANIFEST)
        self._manifest_version = -1  # the manifest table version `self.manifest` was read at
        self._manifest_folder: tuple[int, int, int] | None = None  # `VersionsWatch.identity` then
        self._watch = VersionsWatch(uri, MANIFEST)
        self._refresh_lock = threading.Lock()
        self._load(manifest)
        self._matrix: Matrix | None = None
        self._matrix_lock = threading.Lock()  # one load at a time: concurrent searches share it
        self.graphs: Any = None  # the HNSW graphs last read (`mrag.retrieve.graph`), reused while they fit
        self.fulltext: str | None = None  # who answers the full-text space on the exact path (`fulltext.engine`)
        self._write_lock = threading.Lock()
        self._writer = ""  # the thread holding `_write_lock`, for another one that times out
        self._changed = 0
        self._rows = 0  # inside `writing()`: the rows the chunks table holds by this write's own changes
        self._lease: Lease | None = None  # inside `writing()` on an object store: the lock's lease
        # called with the manifest of an index made again in this folder (a new index id) before it is followed;
        # it may refuse it (`Index` checks its embedder: `MadeAgain`), and then nothing here changes
        self.on_new_index: Callable[[Manifest], None] | None = None

    def _load(self, manifest: Manifest) -> None:
        self.manifest = manifest  # the committed one: what readers see
        self.n_heads, self.head_dim, self.dim = manifest.n_heads, manifest.head_dim, manifest.dim
        self.packed = manifest.packed  # all heads in one `heads` column
        # the writer's running sums and external spaces, committed by `_save_manifest`
        self.sums = manifest.sums.copy()
        self.spaces: list[dict[str, Any]] = list(manifest.spaces)
        self.staged: dict[str, Any] = {}  # manifest fields the write in progress changes (`stage`)

    def stage(self, **changes: Any) -> None:
        """Change manifest fields (`ann`, `default_strategy`, ...) in the write in progress (inside
        `writing()`): readers, other threads of this process included, see them at its commit, never before."""
        self.staged |= changes

    def space_dims(self) -> dict[str, int]:
        return {s["name"]: int(s["dim"]) for s in self.spaces}

    def committed_space_dims(self) -> dict[str, int]:
        """External space -> dimension, as the committed manifest (what readers see) records them."""
        return self.manifest.space_dims()

    def vector_columns(self, committed: bool = False, manifest: Manifest | None = None) -> list[VectorColumn]:
        """The columns holding vectors: the writer's layout, or (`committed`) the one readers see, or the
        one of `manifest`. Format 1 has one packed `heads` column in place of the heads' own."""
        dims = (manifest.space_dims() if manifest is not None else
                self.committed_space_dims() if committed else self.space_dims())
        columns = vector_columns(self.dim, 0 if self.packed else self.n_heads, self.head_dim, dims)
        if self.packed:
            columns.insert(1, VectorColumn("heads", "heads", self.n_heads * self.head_dim))
        return columns

    def head_columns(self) -> list[str]:
        return [c.column for c in self.vector_columns() if c.column.startswith("head")]

    def schema(self) -> pa.Schema:
        return chunk_schema(self.dim, self.n_heads, self.head_dim, self.space_dims())

    def committed_scales(self) -> dict[str, np.ndarray]:
        """Scales of the committed rows: "heads" (H,), "split" (S,), "standard" (1,) and "space:NAME" (1,)."""
        return self.manifest.sums.scales()

    @property
    def committed_version(self) -> int:
        """The chunks version of the last complete write: what readers see."""
        return self.manifest.chunks_version

    def refresh(self, quick: bool = False) -> None:
        """Pick up writes committed since (by this or another process): a version check, and a
        read of the manifest only when it moved. `quick` (searches, never writers): on a local index,
        no check while the manifest's version folder is as the last check left it (`mrag.versions`)."""
        check_process()  # not in a child forked after this process used LanceDB: it would crash or hang there
        if quick and self._manifest_version >= 0 and self._watch.unchanged():
            return
        with self._refresh_lock:  # one check at a time: a slower one could pair an older manifest with a newer stamp
            for attempt in range(READ_TRIES):
                try:
                    stamp, checked = self._watch.stamp(), time.monotonic()  # before: a later commit changes it
                    folder = self._watch.identity()
                    version = self._manifest_table.version  # read_consistency_interval=0: the latest version
                    # a folder made again (or swapped in) may have reached the same version number
                    if version != self._manifest_version or folder != self._manifest_folder:
                        rows = self._manifest_table.to_arrow().to_pylist()
                        manifest = Manifest.from_json(json.loads(rows[0]["json"]))
                        # the folder made again or a copy swapped in (the same index id, or none in an index
                        # made before ids; another inode: a commit changes only the ctime): other rows
                        was = self._manifest_folder
                        moved = was is not None and folder is not None and folder[:2] != was[:2]
                        if manifest.index_id != self.manifest.index_id and self.on_new_index is not None:
                            self.on_new_index(manifest)
                        if moved or manifest.index_id != self.manifest.index_id:
                            self._matrix, self.graphs = None, None
                        self.manifest, self._manifest_version = manifest, version
                        self._manifest_folder = folder
                    self._watch.checked(stamp, checked)
                    return
                except MadeAgain:
                    raise
                except Exception:  # a writer committed and pruned the version between the check and the read
                    if attempt == READ_TRIES - 1:
                        raise

    def reading(self, read: Callable[[Any], T]) -> T:
        """`read(snapshot)` at the committed version (see `reading_with`)."""
        return self.reading_with(lambda snapshot, _: read(snapshot))

    def reading_with(self, read: Callable[[Any, Manifest], T]) -> T:
        """`read(snapshot, manifest)` of one commit: the committed manifest and the rows it committed (another
        thread may refresh meanwhile). When it fails and a newer commit exists (whose maintenance may have
        pruned the version being read), again at the latest committed one."""
        for attempt in range(READ_TRIES):
            manifest = self.manifest
            try:
                return read(self.snapshot(manifest.chunks_version), manifest)
            except Exception as e:
                self.refresh()
                if (self.committed_version == manifest.chunks_version and not pruned(e)) or attempt == READ_TRIES - 1:
                    raise  # not a pruned version: the same read would fail again
        raise AssertionError("unreachable")

    @staticmethod
    def exists(uri: str, storage_options: dict[str, str] | None = None) -> bool:
        """Whether an index is at `uri`: a folder, or an object-store URI such as s3://bucket/path
        (`storage_options`: endpoint, keys, region, ... as Lance names them; or AWS_* variables)."""
        uri = normal_uri(uri)
        if "://" not in uri and not Path(uri).expanduser().is_dir():
            return False  # connecting would create the folder
        if is_local(uri):  # LanceDB's listing walks the folder: a folder of documents with a link loop failed there
            return committed(local_path(uri) / f"{MANIFEST}.lance")
        return MANIFEST in connect(uri, storage_options).list_tables().tables

    @classmethod
    def open(cls, uri: str, storage_options: dict[str, str] | None = None) -> Store:
        uri = normal_uri(uri)
        if not cls.exists(uri, storage_options):
            raise StoreError(f"no mrag index at {uri}: create one with `mrag index PATH --db {uri}`")
        db = connect(uri, storage_options, read_consistency_interval=timedelta(0))
        rows = db.open_table(MANIFEST).to_arrow().to_pylist()
        manifest = json.loads(rows[0]["json"])
        if manifest.get("format") not in READABLE_FORMATS:
            raise StoreError(f"{uri} was written by an incompatible mrag (format {manifest.get('format')})")
        return cls(uri, db, db.open_table(CHUNKS), Manifest.from_json(manifest), storage_options)

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
        uri = normal_uri(uri)
        if is_local(uri):
            own_folder(uri)
        with write_lock(uri, storage_options=storage_options) as lease:
            if cls.exists(uri, storage_options):  # another process created it first
                return cls.open(uri, storage_options)
            db = connect(uri, storage_options, read_consistency_interval=timedelta(0))
            clear_half_made(db, uri)
            h, d, dim = embedder_info["n_heads"], embedder_info["head_dim"], embedder_info["dim"]
            space_dims = {s["name"]: int(s["dim"]) for s in spaces or []}
            chunks = db.create_table(CHUNKS, schema=chunk_schema(dim, h, d, space_dims), exist_ok=True)
            manifest = Manifest(embedder=embedder_info, settings=settings, chunks_version=chunks.version,
                                sums=ScaleSums.empty(dim, h, d, space_dims), spaces=list(spaces or []),
                                index_id=secrets.token_hex(8))
            if lease is not None and lease.lost:  # stalled past its lease: another creator may have made its own
                raise StoreError(f"the write lock on {uri} expired while the index was being created; nothing was "
                                 "committed: run again")
            # new: the folder had no manifest
            db.create_table(MANIFEST, data=[{"json": json.dumps(manifest.to_json())}])
            return cls(uri, db, chunks, manifest, storage_options)

    # --- reading -------------------------------------------------------------------------

    def snapshot(self, version: int | None = None) -> Any:
        """The chunks table as of the last committed write (never a half-written batch), or at `version`."""
        table = self.db.open_table(CHUNKS)
        table.checkout(self.committed_version if version is None else version)  # pinned: "latest" would move
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
        """Document id -> its rows' digest, or the partial mark where one row has it (`writing.delete`)."""
        if not doc_ids:
            return {}
        table = self.rows(f"doc_id IN ({quote(doc_ids)})", ["doc_id", "doc_hash"])
        found: dict[str, str] = {}
        for doc_id, digest in zip(table["doc_id"].to_pylist(), table["doc_hash"].to_pylist()):
            if doc_id not in found or partial(digest):
                found[doc_id] = digest
        return found

    def matrix(self, refresh: bool = True, heads: bool = True, keep: bool = True) -> Matrix:
        """Every committed row's vectors in memory, reloaded only after a new committed write
        (`refresh=False`: the caller has just refreshed the manifest). Without `heads` the head vectors
        are left out (half the memory: the strategies that do not vote with them), until asked for.
        `keep=False` reads one that is not kept for later searches (a write's graph maintenance).
        Searches that need a new matrix at once wait for one load and share it (each loaded its own: ten
        server requests after a write held ten copies)."""
        if refresh:
            self.refresh()
        matrix = self._matrix
        if matrix is not None and self._fits(matrix, heads):
            return matrix
        with self._matrix_lock if keep else nullcontext():
            return self._read_matrix(heads, keep)

    def _fits(self, matrix: Matrix, heads: bool) -> bool:
        """Whether `matrix` holds the committed rows, with the heads if asked for."""
        return matrix.version == self.committed_version and (matrix.has_heads or not heads)

    def _read_matrix(self, heads: bool, keep: bool) -> Matrix:
        """`matrix`'s load (the rows appended since the last one, or all), unless another thread has just
        made it."""
        matrix = self._matrix
        if matrix is not None and self._fits(matrix, heads):
            return matrix
        snapshot = self.snapshot()  # its version, not committed_version: another thread may refresh that
        columns = ["id", *(c.column for c in self.vector_columns(committed=True)
                           if heads or not c.column.startswith("head"))]  # head_i, or format 1's packed heads
        n, spaces, history = snapshot.count_rows(), self.committed_space_dims(), stamps(snapshot)
        found = None if matrix is None else grown(matrix, snapshot, columns, n, spaces, history)  # rows it has
        if found is None and keep:
            self._matrix = None  # the old one goes before the new one is read
        matrix = None
        matrix = found or load_matrix(snapshot, columns, n, self.dim, self.n_heads, self.head_dim, self.packed,
                                      spaces, with_heads=heads, stamp=history.get(snapshot.version))
        if keep:
            self._matrix = matrix
        return matrix

    # --- writing -------------------------------------------------------------------------

    @contextmanager
    def writing(self, maintain: bool = True) -> Iterator[None]:
        """All-or-nothing. Rows become visible to readers only when the manifest commits them; on
        any error the chunks table is restored and the sums are untouched. One writer at a time, across
        threads and processes: under the lock the manifest is read again, so the sums fold onto the
        latest committed ones, and rows newer than the committed version can only be a dead write's,
        rolled back first. After the commit, maintenance by policy (`maintenance.maintain`; `maintain=False`: none)."""
        if self.packed:
            raise StoreError(
                f"{self.uri} was written by mrag format 1 (all heads in one column): it can be searched "
                "but not changed; index the files again into a new folder"
            )
        check_process()
        with self._locked() as lease:
            try:
                yield
                if lease is not None and lease.lost:
                    raise StoreError(f"the write lock on {self.uri} expired before the commit (a stall of over "
                                     "a minute?) and another writer may hold it now; nothing was committed")
                if self.chunks.count_rows() != self._rows:  # a writer that lost its lease wrote on meanwhile
                    raise StoreError(f"rows this write did not make appeared in {self.uri} while it ran (another "
                                     "writer whose lock expired?); nothing was committed: run it again")
            except BaseException:
                self._manifest_version = -1  # drop anything the failed write set on the manifest
                self.refresh()
                self._load(self.manifest)
                if lease is None or not lease.lost:  # else the rows past the commit may be the new holder's
                    self._restore_committed()
                raise
            since = self.manifest.maintenance
            since = since | {"writes": since["writes"] + 1, "rows": since["rows"] + self._changed}
            self._save_manifest(maintenance=since)
            if maintain and since["writes"] % maintenance.MAINTAIN_EVERY == 0:
                maintenance.maintain(self, since)

    @contextmanager
    def _locked(self) -> Iterator[Lease | None]:
        """The write lock, the latest committed manifest and sums, and a dead write rolled back. Threads
        of this process take turns first; all waits together last at most `lock_timeout()`."""
        timeout, start = lock_timeout(), time.monotonic()
        if not self._write_lock.acquire(timeout=-1 if timeout > threading.TIMEOUT_MAX else timeout):  # inf: no end
            raise LockTimeout(f"another thread of this process writes {self.uri} ({self._writer}); waited "
                              f"{timeout:g} s (MRAG_LOCK_TIMEOUT sets the wait)")
        try:
            self._writer = f"thread {threading.current_thread().name}, since {time.strftime('%H:%M:%S')}"
            left = max(timeout - (time.monotonic() - start), 0.0)
            with write_lock(self.uri, timeout=left, storage_options=self.storage_options) as lease:
                self.refresh()
                self._load(self.manifest)
                self._restore_committed()
                self._changed = 0  # rows added or deleted by this write
                self._rows = self.chunks.count_rows()  # the rows the table must hold at the commit
                self._lease = lease
                yield lease
        finally:
            self._lease = None
            self._write_lock.release()

    def optimize(self, keep_versions: timedelta | None = None) -> dict[str, Any]:
        """Compact small fragments, fold new rows into the ANN and full-text indexes, and prune old
        versions (those older than `keep_versions`; default: all but the committed one), beside
        readers and other writers."""
        before = self.disk_bytes()
        with self._locked():
            maintenance.compact_and_prune(self, keep_versions)
        return {"version": self.committed_version, "bytes_before": before, "bytes_after": self.disk_bytes()}

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
        self._check_lease()
        self.fold(rows, sign=1)
        self.chunks.add(rows)
        self._changed += rows.num_rows
        self._rows += rows.num_rows

    def _check_lease(self) -> None:
        """Inside `writing()`: refuse a change once the lock's lease is lost (another writer may hold it)."""
        if self._lease is not None and self._lease.lost:
            raise StoreError(f"the write lock on {self.uri} expired during the write (a stall of over a minute?) "
                             "and another writer may hold it now; nothing was committed")

    def delete(self, where: str) -> int:
        """Delete the rows matching a filter (inside `writing()`); returns how many."""
        self._check_lease()
        columns = [*(c.column for c in self.vector_columns()), "head_norms"]
        gone = self.rows(where, columns, table=self.chunks)
        if gone.num_rows:
            self.fold(gone, sign=-1)
            self.chunks.delete(where)
            self._changed += gone.num_rows
            self._rows -= gone.num_rows
        return gone.num_rows

    def update(self, ids: list[str], values: dict[str, Any]) -> None:
        """Set columns of the rows with these chunk ids (inside `writing()`), their vectors unchanged."""
        self._check_lease()
        self.chunks.update(where=f"id IN ({quote(ids)})", values=values)
        self._changed += len(ids)

    def fold(self, rows: pa.Table, sign: int, sums: ScaleSums | None = None) -> None:
        """Fold rows into (sign=1) or out of (sign=-1) the sums (default: the writer's running ones)."""
        n = rows.num_rows
        if n == 0:
            return
        sums = self.sums if sums is None else sums
        units = head_units(rows, self.n_heads, self.head_dim, self.packed).transpose(1, 0, 2)  # (N, H, d)
        spaces = {name: fixed(rows[space_column(name)], n, sums.space(name).head_dim) for name in sums.spaces()}
        sums.fold(fixed(rows["head_norms"], n, self.n_heads), units, fixed(rows["vector"], n, self.dim), spaces, sign)

    def _save_manifest(self, **changes: Any) -> None:
        """The commit point: record the table version, the sums that belong to it, the staged fields and
        `changes`; `self.manifest` (what this process's readers see) moves only once it is written."""
        manifest = self.manifest.replace(**(self.staged | changes), chunks_version=self.chunks.version,
                                         sums=self.sums.copy(), spaces=list(self.spaces))
        self._manifest_table.add([{"json": json.dumps(manifest.to_json())}], mode="overwrite")
        self.manifest, self._manifest_version, self.staged = manifest, self._manifest_table.version, {}
