"""The library's front door: `Index.open(path)`, then `.add()`, `.upsert()`, `.delete()`, `.search()`."""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mrag import fits, settings, store_vectors, sync, upkeep, writing
from mrag.documents import Document
from mrag.embed.base import HeadEmbedder
from mrag.errors import MadeAgain, StoreError
from mrag.ingest import read_paths
from mrag.locking import is_local, normal_uri
from mrag.manifest import Manifest
from mrag.retrieve import ann, fulltext, graph
from mrag.retrieve import strategies as retrieve
from mrag.retrieve.types import Hit
from mrag.settings import AnnPolicy
from mrag.spaces import Space, SpaceSpec, check_unique, new_specs, open_spaces, parse_space
from mrag.store import Store
from mrag.writing import WRITE_BATCH, AddReport, chunk_settings

__all__ = ["AddReport", "Hit", "Index", "embedder_factory"]


def embedder_factory(model: str | None, layer: int | None, **options: Any) -> Callable[[], HeadEmbedder]:
    """A TransformerEmbedder builder, picklable (Ray ships it to its workers)."""
    return functools.partial(_load_transformer, model, -1 if layer is None else layer, options)


def _load_transformer(model: str | None, layer: int, options: dict[str, Any]) -> HeadEmbedder:
    from mrag.embed.transformer import TransformerEmbedder

    return TransformerEmbedder(model, layer=layer, **options)


class _NothingLeft(Exception):
    """Leaves a write that found nothing left to do under the lock, committing nothing."""


class Index:
    """A multi-head index in a LanceDB folder. The embedder is loaded on first use."""

    def __init__(self, store: Store, make_embedder: Callable[[], HeadEmbedder]) -> None:
        self.store = store
        self._make_embedder = make_embedder
        self._embedder: HeadEmbedder | None = None
        self._embedder_lock = threading.Lock()
        self._spaces: dict[str, Space] = {}  # external spaces' live functions, created on first use
        self.ann_policy = AnnPolicy()  # when writes (re)build the ANN indexes
        self._fulltext_seen: int | None = None  # the committed version `_fulltext_default` was read at
        self._fulltext_default = settings.VECTOR_DEFAULT
        store.on_new_index = self._check_made_again

    def __reduce__(self) -> Any:  # LanceDB's connection is no value to copy ("cannot pickle 'builtins.Connection'")
        raise TypeError("an Index cannot be pickled: pass its path to the worker and call Index.open there")

    @classmethod
    def open(
        cls,
        path: str | Path,
        model: str | None = None,
        layer: int | None = None,
        embedder: HeadEmbedder | None = None,
        create: bool = True,
        chunk_chars: int | None = None,
        overlap: int | None = None,
        storage_options: dict[str, str] | None = None,
        spaces: Sequence[str | SpaceSpec] | None = None,
        **embedder_options: Any,
    ) -> Index:
        """Open the index at `path`, creating it when `create` (with `model`, default MiniLM).

        An existing index remembers its model, layer, pooling and instructions: a different model or
        layer is refused. `embedder` passes a ready HeadEmbedder (its `info()` must match).
        `path` may be an object-store URI (s3://bucket/prefix, gs://, az://); `storage_options`
        passes its endpoint and credentials to Lance (or set the AWS_* environment variables).
        `spaces` adds external embedding spaces ("LABEL=FUNCTION:key=value,..." or SpaceSpec, see
        `mrag.spaces`); spaces new to an existing index are computed for all its rows in one write.
        """
        uri = normal_uri(str(path))
        specs = [s if isinstance(s, SpaceSpec) else parse_space(s) for s in spaces or []]
        check_unique(specs)
        if Store.exists(uri, storage_options):
            index = cls._open_existing(
                uri, model, layer, embedder, chunk_chars, overlap, storage_options, **embedder_options
            )
            new = new_specs(index.store.manifest.spaces, specs, uri)
            if new:
                index.add_spaces(new)
            return index
        if not create:
            raise StoreError(f"no mrag index at {uri}")
        settings = chunk_settings(uri, None, chunk_chars, overlap)
        live = open_spaces(specs)  # unknown function, bad options, unreachable model: fail before writing
        made = embedder or embedder_factory(model, layer, **embedder_options)()
        entries = [s.spec.to_json() | {"dim": s.dim} for s in live]
        store = Store.create(uri, made.recorded(), settings, storage_options, spaces=entries)
        fits.created(store, made, entries, chunk_chars, overlap, uri)
        index = cls(store, lambda: made)
        index._embedder = made
        index._spaces = {s.name: s for s in live}
        return index

    @classmethod
    def _open_existing(
        cls,
        uri: str,
        model: str | None,
        layer: int | None,
        embedder: HeadEmbedder | None,
        chunk_chars: int | None,
        overlap: int | None,
        storage_options: dict[str, str] | None,
        **embedder_options: Any,
    ) -> Index:
        store = Store.open(uri, storage_options)
        recorded = store.manifest.embedder
        try:
            fits.same(recorded, model, layer, embedder, uri)
            chunk_settings(uri, store, chunk_chars, overlap)  # refuses other settings
            options = fits.loading_options(recorded, embedder_options, uri)
        except StoreError as e:  # a first run stopped before its first commit (Ctrl-C, a typo) made the index
            if store.count():
                raise
            raise StoreError(f"{e} (it holds no documents yet: delete the folder to start again)") from e
        if embedder is not None:
            return cls(store, lambda: embedder)
        make = embedder_factory(recorded["model"], recorded.get("layer"), **options)
        return cls(store, lambda: fits.loaded(recorded, make(), uri))

    def _check_made_again(self, manifest: Manifest) -> None:
        """Another process made the index again in its folder while it was open here (`Store.on_new_index`): it
        is followed where this Index's embedder (made, or the one it would make) makes its vectors; else every
        search and write is refused (`MadeAgain`) until the index is opened again."""
        differ = fits.differs(manifest.embedder, self.embedder.recorded())  # made now if not yet (seldom: a rebuild)
        if differ is not None:
            raise MadeAgain(f"the index at {self.store.uri} was made again with another {differ[0]} "
                            f"({differ[1]!r}) while it was open here: open it again (restart the server) to use "
                            "it; nothing was searched or written")

    @property
    def embedder(self) -> HeadEmbedder:
        """The embedder, made on first use: once, whatever the threads asking (a model loaded once, and
        transformers imported by one thread: its lazy imports fail when several threads race)."""
        if self._embedder is None:
            with self._embedder_lock:
                if self._embedder is None:
                    self._embedder = self._make_embedder()
        return self._embedder

    @property
    def spaces(self) -> list[Space]:
        """The index's external spaces, their functions created on first use."""
        def live(entry: dict[str, Any]) -> Space:  # the one made before, unless the label now names another space
            known, spec = self._spaces.get(entry["name"]), SpaceSpec.from_json(entry)
            if known is not None and known.spec == spec and known.dim == int(entry["dim"]):
                return known
            return Space(spec, int(entry["dim"]))

        self._spaces = {e["name"]: live(e) for e in self.store.manifest.spaces}
        return list(self._spaces.values())

    def add_spaces(self, specs: Sequence[str | SpaceSpec]) -> list[str]:
        """Add external spaces and compute them for every row, in one committed write; returns the names of
        those added (a space the index already has, the same, is passed over; another under its label is
        refused). Any failure (unknown function, unreachable model, wrong dimension) writes nothing."""
        parsed = [s if isinstance(s, SpaceSpec) else parse_space(s) for s in specs]
        check_unique(parsed)
        parsed = new_specs(self.store.manifest.spaces, parsed, self.store.uri)
        if not parsed:
            return []
        live = open_spaces(parsed)
        built = self.store.manifest.ann
        try:
            with self.store.writing():
                # again under the lock: another writer may have added some meanwhile (the same: passed over)
                still = {spec.name for spec in new_specs(self.store.manifest.spaces, parsed, self.store.uri)}
                live = [space for space in live if space.name in still]
                if not live:
                    raise _NothingLeft  # nothing to commit
                self._compute_spaces(live)
        except _NothingLeft:
            return []
        self._spaces.update({s.name: s for s in live})
        if built and not self.store.manifest.ann:  # the rewrite dropped LanceDB's indexes: built again
            upkeep.build_like(self.store, self.ann_policy, built)
        else:
            self.maintain_ann()  # none before: built when the policy says so
        return [s.name for s in live]

    def _compute_spaces(self, live: list[Space]) -> None:
        """Compute new spaces for every row and add their columns (inside `writing()`)."""
        rows = self.store.rows(columns=["id", "text"], table=self.store.chunks)
        texts = rows["text"].to_pylist()
        vectors = {}
        for space in live:
            vectors[space.name] = np.concatenate(
                [space.embed(texts[i : i + WRITE_BATCH]) for i in range(0, len(texts), WRITE_BATCH)]
            ) if texts else np.zeros((0, space.dim or 0), np.float32)
        entries = [s.spec.to_json() | {"dim": s.dim} for s in live]
        store_vectors.add_spaces(self.store, entries, rows["id"].to_pylist(), vectors)
        fulltext.keep(self.store.chunks)  # the rewrite dropped the table's full-text index

    def drop_spaces(self, names: Sequence[str]) -> list[str]:
        """Remove external spaces (their vectors, scales and records) in one committed write; -> the names.
        A name the index has no space of is refused, and nothing is written."""
        dropped = list(dict.fromkeys(names))
        with self.store.writing():
            store_vectors.drop_spaces(self.store, dropped)
        for name in dropped:
            self._spaces.pop(name, None)
        self.maintain_ann()  # HNSW graphs of other spaces are built again (LanceDB's of other columns stay)
        return dropped

    # --- writing -------------------------------------------------------------------------

    def add(self, docs: Iterable[Document | dict[str, Any] | str], show_progress: bool = False) -> AddReport:
        """Add new documents; unchanged ones are skipped; an existing id with new content is an error."""
        return self._write(docs, replace=False, show_progress=show_progress)

    def upsert(self, docs: Iterable[Document | dict[str, Any] | str], show_progress: bool = False,
               files: writing.FromFiles | None = None) -> AddReport:
        """Add new documents and replace changed ones (same id, other content); unchanged: no work. `files`:
        documents read from files, as `mrag.sync` writes them (`writing.FromFiles`)."""
        return self._write(docs, replace=True, show_progress=show_progress, files=files)

    def _write(self, docs: Iterable[Document | dict[str, Any] | str], replace: bool, show_progress: bool,
               files: writing.FromFiles | None = None) -> AddReport:
        self.store.refresh()  # the spaces as committed now (another process may have added or dropped one)
        report = writing.write(self.store, lambda: self.embedder, self.spaces, docs, replace, show_progress, files)
        try:
            report.ann = self.maintain_ann() if report.chunks else None
        except (OSError, RuntimeError, ValueError) as e:  # the write is committed: its report stands (an S3 outage)
            warnings.warn(f"the write to {self.store.uri} is committed, but the ANN upkeep after it failed "
                          f"({str(e).splitlines()[0][:300]}); the next write tries again", RuntimeWarning, stacklevel=3)
        return report

    def add_paths(self, paths: Sequence[str | Path], show_progress: bool = False, prune: bool = False,
                  commit_every: int = sync.COMMIT_EVERY, **fields: str) -> AddReport:
        """Index files and folders (upsert: re-indexing unchanged files does nothing). A file's records are its
        documents: records gone from a file read are deleted; `prune` also deletes the documents of files
        under `paths` that no longer exist or are empty (a path that is gone and held no indexed file is listed
        as skipped, and refused when every path is one: a typo). An id already indexed from a file not read now
        is refused, and nothing is written. One commit, or where more than `commit_every` chunks need embedding
        (0: never), one per part of about that many, the pruning in the last: a run stopped midway keeps the
        parts it committed, and the next run skips them."""
        docs, skipped = read_paths(sync.to_read(paths, prune), **fields, empty_ok=prune)  # prune: an emptied file
        return sync.index_files(self, paths, docs, skipped, show_progress, prune, commit_every)

    def delete(self, ids: Sequence[str | int | float] | str | int | float, missing_ok: bool = False) -> int:
        """Delete documents or chunks by id (one id alone, or several; a number as its text, as `add` stores
        it); all ids must exist, else nothing is deleted (`missing_ok`: those that do not are passed over). An
        id that names a document deletes that document only, even where it is also another document's chunk
        id (document "x#0" and chunk 0 of document "x")."""
        deleted = writing.delete(self.store, [ids] if isinstance(ids, str | int | float) else ids, missing_ok)
        if (self.store.manifest.ann or {}).get("index_type") == graph.INDEX_TYPE:
            graph.maintain(self.store)  # graphs skip removed rows; rebuilt once not `graph.walkable`
        return deleted

    # --- reading -------------------------------------------------------------------------

    def search(
        self,
        query: str,
        k: int = 5,
        strategy: str | None = None,
        c: int | None = None,
        subqueries: Sequence[str] | None = None,
        spaces: Sequence[str] | None = None,
        exact: bool | None = None,
        nprobes: int | None = None,
        candidates: int | None = None,
        where: str | None = None,
    ) -> list[Hit]:
        """The top k chunks for a query; each hit carries the votes that put it there. `strategy`: None
        is the index's default (`default_strategy`: what `mrag tune` recorded, else `built_in_default`).

        `spaces` selects voters by name: "standard", "heads", "head:3", "split", or an external
        space's label (default: all of the strategy's spaces).

        Segmenting strategies (`mrag`, `segment+...`, `interleave+...`) split the query themselves; the
        fusion strategies (`fusion`, `mrag-fusion`) need `subqueries` (e.g. written by an LLM).

        `exact`: None searches the ANN indexes when the index has them (`build_ann`), else exactly in
        memory; True always exactly; False requires the ANN indexes. `nprobes`: IVF partitions each
        ANN search reads (default: what `build_ann` recorded); more is slower and closer to exact.
        `candidates`: on the ANN path, each query part's nearest rows in the standard index that every
        space then ranks exactly (default `DEFAULT_CANDIDATES`; 0 asks each space's own index instead).
        `where`: only the chunks this SQL filter keeps, as LanceDB takes it (`"source LIKE '%/notes/%'"`; columns
        id, doc_id, source, title, position, text, metadata as JSON text), in every space (`retrieve.filtered`).

        Raises `mrag.errors.Busy` where other writers committed at every one of its tries (many commits a
        second, as a writer in a tight loop makes): the same search goes through a moment later.
        """
        return self.search_many([query], k, strategy, c, [subqueries or []], spaces, exact, nprobes, candidates,
                                where)[0]

    def search_many(
        self,
        queries: Sequence[str],
        k: int = 5,
        strategy: str | None = None,
        c: int | None = None,
        subqueries: Sequence[Sequence[str]] | None = None,
        spaces: Sequence[str] | None = None,
        exact: bool | None = None,
        nprobes: int | None = None,
        candidates: int | None = None,
        where: str | None = None,
    ) -> list[list[Hit]]:
        """`search` for a batch of queries: one embedding pass, and every space searched once for all."""
        from mrag.retrieve.search import search_many  # here: it imports torch (1.2 s), which `mrag info` never needs

        return search_many(self, queries, k, strategy or self.default_strategy, c, subqueries, spaces, exact, nprobes,
                           candidates, where)

    @property
    def default_strategy(self) -> str:
        """The strategy used when none is named: the one `mrag tune` recorded here, else the built-in one
        (`segment-bm25`; `mrag` on an index that has no full-text index yet: `mrag optimize` builds one)."""
        self.store.refresh(quick=True)
        recorded = (self.store.manifest.default_strategy or {}).get("strategy")
        return str(recorded) if recorded else self.built_in_default()

    def built_in_default(self) -> str:
        """`segment-bm25`, or `mrag` while this index has no full-text index (one written by an older mrag)."""
        version = self.store.committed_version
        if self._fulltext_seen != version:  # one look at the table's indexes per committed version
            self._fulltext_seen, self._fulltext_default = version, (
                retrieve.DEFAULT_STRATEGY if self.store.reading(fulltext.has_index) else settings.VECTOR_DEFAULT)
        return self._fulltext_default

    def set_default_strategy(self, record: dict[str, Any] | None) -> None:
        """Record the default strategy ({"strategy": name, ...why it won}) in one committed write;
        None goes back to the built-in default."""
        if record is not None:
            retrieve.check_strategy(record["strategy"])
        with self.store.writing(maintain=False):
            self.store.stage(default_strategy=record)

    def maintain_ann(self, force: bool = False) -> dict[str, Any] | None:
        """(Re)build the ANN indexes when `ann_policy` says so (past its threshold, or once a quarter of the
        rows are not indexed), or now (`force`); -> what was built, else None (`upkeep.maintain_ann`).
        Every write through this index runs it, so CLI, Python and HTTP writes alike keep them up."""
        return upkeep.maintain_ann(self.store, self.ann_policy, force)

    def maintain_fulltext(self, force: bool = False) -> bool:
        """Build the full-text (BM25) index on the chunk text when there is none, or once the rows it
        does not cover yet (found by a flat scan meanwhile) outnumber a quarter of those it does, or
        now (`force`), in a commit of its own; -> whether it was built. Writes of documents do the same
        inside their own commit (`mrag.writing.write`); this is for an index written before."""
        return fulltext.maintain(self.store, force)

    def build_ann(
        self, index_type: str = ann.DEFAULT_INDEX, nprobes: int | None = None,
        progress: Callable[[str], None] | None = None, spaces: Sequence[str] | None = None,
    ) -> dict:
        """Build (or rebuild) an ANN index on every space's column, in one committed write (`upkeep.build_ann`:
        LanceDB's IVF indexes, or HNSW graphs of every space or of those in `spaces`); `nprobes` is recorded
        as the searches' default (IVF partitions, or HNSW's ef; None: the type's default)."""
        return upkeep.build_ann(self.store, index_type, nprobes, progress, spaces)

    def drop_ann(self) -> dict[str, Any] | None:
        """Drop the ANN indexes in one committed write, so searches scan exactly (`upkeep.drop_ann`); the
        full-text index stays. -> what was dropped, else None."""
        return upkeep.drop_ann(self.store)

    def space_weights(self, manifest: Manifest | None = None) -> retrieve.Scales:
        """Committed scales, with each external space's weight: its own scale ("auto") or the one it was given;
        of `manifest` (a search reads everything from one), else of the latest committed one."""
        if manifest is None:
            self.store.refresh(quick=True)
            manifest = self.store.manifest
        scales = manifest.sums.scales()
        for entry in manifest.spaces:
            if entry.get("weight", "auto") != "auto":
                scales[f"space:{entry['name']}"] = np.array([float(entry["weight"])])
        return scales

    def head_scales(self) -> list[dict[str, Any]]:
        self.store.refresh()
        scales = self.store.committed_scales()["heads"]
        return [{"head": i, "scale": float(s)} for i, s in enumerate(scales)]

    def optimize(self, keep_versions: float | None = None) -> dict[str, Any]:
        """Compact the index and prune versions older than `keep_versions` seconds (default: all but the
        committed one; readers still on a pruned one read again at the latest). Writes run it every 32 commits."""
        from datetime import timedelta

        keep = None if keep_versions is None else timedelta(seconds=keep_versions)
        self.maintain_fulltext()  # an index written before the full-text space existed gets one
        return self.store.optimize(keep)  # LanceDB's optimize folds new rows into the full-text index

    def verify(self) -> dict[str, Any]:
        """Check the committed index: {"chunks", "duplicate_ids", "sums_drift"}; the head-scale sums
        are recomputed from the rows (`sums_drift` is their largest relative error, ~1e-12 when sound)."""
        return store_vectors.verify(self.store)

    def _ann_info(self, built: dict[str, Any] | None) -> dict[str, Any] | None:
        """The ANN record (`rows`: when built); for HNSW graphs, kept up by writes, also what they cover now."""
        if not built or built.get("index_type") != graph.INDEX_TYPE or not is_local(self.store.uri):
            return built
        covered: dict[str, int | None] = {"graph_version": None, "graph_nodes": 0}  # none on disk: a failed build
        return built | (graph.on_disk(self.store.uri) or covered)

    def info(self) -> dict[str, Any]:
        self.store.refresh(quick=True)  # follows other processes' commits
        m = self.store.manifest
        weights = self.space_weights(m)
        doc_ids = self.store.rows(columns=["doc_id"])["doc_id"].to_pylist()  # one read: both counts of one commit
        return {
            "path": self.store.uri,
            "chunks": len(doc_ids),
            "documents": len(set(doc_ids)),
            "embedder": m.embedder,
            "settings": m.settings,
            "spaces": [
                e | {"scale": float(weights[f"space:{e['name']}"][0])} for e in m.spaces
            ],
            "ann": self._ann_info(m.ann),
            "default_strategy": m.default_strategy or {"strategy": self.built_in_default(), "source": "built-in"},
            "strategies": retrieve.strategy_names(),
        }
