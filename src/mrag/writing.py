"""Writing documents: which to embed (`triage`), embedding them outside the write lock, and the
all-or-nothing commit under it (`write`); deleting them (`delete`). `Index.add` / `upsert` / `delete` and
the Ray job use these."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from mrag.chunk import chunk_text
from mrag.documents import (
    Document,
    as_document,
    check_utf8,
    document_digest,
    made_partial,
    not_an_id,
    partial,
    same_content,
    shown,
)
from mrag.embed.base import HeadEmbedder
from mrag.errors import StoreError
from mrag.ingest import SUFFIXES, Skipped
from mrag.locking import cannot_write, unwritable
from mrag.retrieve import fulltext
from mrag.rows import build_rows, chunk_schema, quote
from mrag.spaces import Space
from mrag.store import Store
from mrag.store_setup import TABLES

DEFAULT_CHUNK_CHARS = 1000
DEFAULT_OVERLAP = 1
WRITE_BATCH = 256  # chunks embedded per step
STAGE_BYTES = 256 * 2**20  # embedded rows held outside the write lock; a larger write takes it early


@dataclass
class AddReport:
    added: list[str] = field(default_factory=list)  # new document ids
    updated: list[str] = field(default_factory=list)  # changed documents, re-embedded
    unchanged: list[str] = field(default_factory=list)  # same content: no work done
    skipped: list[Skipped] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # documents gone from their files (`Index.add_paths`)
    chunks: int = 0
    ann: dict[str, Any] | None = None  # the ANN indexes this write (re)built, by policy
    unread: tuple[int, int] = (0, 0)  # chunks written longer than the model reads, mostly of unknown tokens
    max_length: int | None = None  # the model's length in tokens, for `warnings`
    bare_folders: list[str] = field(default_factory=list)  # folders given that hold no file of a kind read

    @property
    def warnings(self) -> list[str]:
        """What the model could not read of the chunks written (`HeadEmbedder.unread`), and the folders given
        that hold no file of a kind mrag reads (their other files were left out without a word)."""
        kinds = " ".join(sorted(SUFFIXES))
        return unread_warnings(*self.unread, self.chunks, self.max_length) + [
            f"{folder} holds no file mrag reads ({kinds}); a file of another kind named on its own is read as text"
            for folder in self.bare_folders]

    def to_dict(self) -> dict[str, Any]:
        return {
            "added": len(self.added),
            "updated": len(self.updated),
            "unchanged": len(self.unchanged),
            "removed": len(self.removed),
            "chunks": self.chunks,
            "skipped": [asdict(s) for s in self.skipped],
        } | ({"ann": self.ann} if self.ann else {}) | ({"warnings": self.warnings} if self.warnings else {})


@dataclass
class FromFiles:
    """How `mrag.sync` writes documents read from files (`write`; `Index.upsert(files=...)`): their records
    follow their files (their digests are not marked as added by the library, `documents.ADDED`).
    `settle`: run under the write lock after the rows, in their commit, where any document needed embedding;
    `leave_out`: under the lock, given the ids another writer changed since they were looked up, those not to
    write after all; `part`: a part of a longer run (its last part catches the full-text index up);
    `stored` and `digests`: the documents' indexed and new digests by id, as the caller has just computed
    them (looked up again under the lock)."""

    settle: Callable[[], None] | None = None
    leave_out: Callable[[set[str]], set[str]] | None = None
    part: bool = False
    stored: dict[str, str] | None = None
    digests: dict[str, str] | None = None


def chunk_settings(uri: str, store: Store | None, chunk_chars: int | None, overlap: int | None) -> dict[str, int]:
    """The chunk settings: an existing index's (others are refused), else the given ones or the defaults."""
    if store is not None:
        recorded = {k: int(store.manifest.settings[k]) for k in ("chunk_chars", "overlap")}
        for key, value in (("chunk_chars", chunk_chars), ("overlap", overlap)):
            if value is not None and value != recorded[key]:
                raise StoreError(f"the index at {uri} was built with {key}={recorded[key]}, not {value}")
        return recorded
    chunk_chars = DEFAULT_CHUNK_CHARS if chunk_chars is None else chunk_chars
    overlap = DEFAULT_OVERLAP if overlap is None else overlap
    if chunk_chars <= 0 or overlap < 0:
        raise ValueError("chunk size must be positive and overlap >= 0")
    return {"chunk_chars": chunk_chars, "overlap": overlap}


def check_unique_ids(ids: Sequence[str], sources: Sequence[str] | None = None) -> None:
    """Refuse ids given twice, naming the first few (and, with each id's `sources`, the files that give them)."""
    if len(set(ids)) == len(ids):
        return
    where: dict[str, list[str]] = {}
    for i, doc_id in enumerate(ids):
        where.setdefault(doc_id, []).append(sources[i] if sources is not None else "")
    dupes = sorted(i for i, found in where.items() if len(found) > 1)[:5]
    if sources is None:
        raise ValueError(f"duplicate document ids in one batch: {', '.join(dupes)}")
    named = [f"{i} ({len(where[i])} times in {where[i][0]})" if len(set(where[i])) == 1 else
             f"{i} ({' and '.join(dict.fromkeys(where[i]))})" for i in dupes]
    raise ValueError(f"duplicate document ids in one batch: {'; '.join(named)} (an id names one record)")


def triage(
    docs: Sequence[tuple[str, str]], existing: dict[str, str], report: AddReport, replace: bool = True,
    earlier: dict[str, str] | None = None,
) -> list[int]:
    """Documents as (id, content digest) against the indexed digests (id -> digest): fills the report's
    added / updated / unchanged and returns the positions of the documents to embed. A changed
    document is an error unless `replace`, or unless the indexed digest is its `earlier` one (id -> the digest
    of its text as given, before `clean_text`: an older mrag wrote the same document so)."""
    todo = []
    for position, (doc_id, digest) in enumerate(docs):
        if same_content(existing.get(doc_id), digest):
            report.unchanged.append(doc_id)
            continue
        # a partial document is written whole, and so is one indexed by an older mrag before the text's cleaning
        if (doc_id in existing and not replace and not partial(existing[doc_id])
                and not same_content(existing[doc_id], (earlier or {}).get(doc_id, ""))):
            raise ValueError(f"document {doc_id!r} already exists with other content: use upsert")
        (report.updated if doc_id in existing else report.added).append(doc_id)
        todo.append(position)
    return todo


def write(
    store: Store,
    embedder: Callable[[], HeadEmbedder],
    spaces: list[Space],
    docs: Iterable[Document | dict[str, Any] | str],
    replace: bool,
    show_progress: bool = False,
    files: FromFiles | None = None,
) -> AddReport:
    """Add documents (`replace`: and replace changed ones); `files`: documents read from files by `mrag.sync`
    (`FromFiles`). Embeds outside the write lock (other writers go on meanwhile), then, under it, triages again
    against what is committed now and writes. Past `STAGE_BYTES` of embedded rows the lock is taken early and
    the rest is written as it is embedded, so memory stays bounded. `embedder` is called only when there is
    work. `files.settle` runs under the lock after the rows, in the same commit (an error there writes
    nothing), where any document needed embedding (even if the check under the lock then leaves no row to
    write), and never otherwise. The full-text index is built or caught up in the same commit; a `part` of a
    longer run builds only a table's first one (its last part catches up: a build at every part cost more
    than the rest of the parts' commits, `commit-parts.md`)."""
    documents = [as_document(d, i) for i, d in enumerate(docs)]
    ids = [d.id for d in documents]
    check_unique_ids(ids)
    how = files or FromFiles()
    given = how.digests or {}
    digests = [given.get(d.id) or document_digest(d, added=files is None) for d in documents]
    report = AddReport()
    seen = store.doc_hashes(ids) if how.stored is None else {i: how.stored[i] for i in ids if i in how.stored}
    earlier = earlier_digests(documents, files is None)  # where an older mrag may have indexed them otherwise
    chosen = triage(list(zip(ids, digests)), seen, report, replace, earlier)
    todo = [(documents[i], digests[i]) for i in chosen]
    settings = store.manifest.settings
    chunks = [
        (doc, digest, i, text)
        for doc, digest in todo
        for i, text in enumerate(chunk_text(doc.text, settings["chunk_chars"], settings["overlap"]))
    ]
    if not chunks:
        return report
    if (reason := unwritable(store.uri, TABLES)) is not None:
        raise cannot_write(store.uri, reason, "embedded or written")
    staged: list[pa.Table] = []
    staged_bytes = 0
    with ExitStack() as held:
        wanted: set[str] | None = None  # documents still to write, once under the lock
        model = embedder()
        unread = [0, 0]  # chunks past the model's length, chunks mostly of tokens it cannot read
        for rows in _embedded(store, model, spaces, chunks, show_progress, unread):
            staged.append(rows)
            staged_bytes += rows.nbytes
            if staged_bytes < STAGE_BYTES:
                continue
            if wanted is None:
                held.enter_context(store.writing())
                wanted = retriage(store, todo, replace, report, seen, how.leave_out, earlier)
            _append(store, staged, wanted, report)
            staged, staged_bytes = [], 0
        if wanted is None:
            held.enter_context(store.writing())
            wanted = retriage(store, todo, replace, report, seen, how.leave_out, earlier)
        _append(store, staged, wanted, report)
        if how.settle is not None:
            how.settle()
        report.unread, report.max_length = (unread[0], unread[1]), getattr(model, "max_length", None)
        if "probe" not in store.manifest.embedder:  # an index made before probes: its next write records one
            store.stage(embedder=store.manifest.embedder | {"probe": model.probe()})
        if not how.part or not fulltext.has_index(store.chunks):  # a part: only an index's first
            fulltext.keep(store.chunks)  # the full-text index, built or caught up in this same commit
    return report


def unread_warnings(long: int, unreadable: int, chunks: int, max_length: int | None) -> list[str]:
    """What a write tells of the chunks its model could not read whole (`HeadEmbedder.unread`)."""
    # counted over the chunks embedded, of which the lock's checks may have left some out
    told, long, unreadable = [], min(long, chunks), min(unreadable, chunks)
    if long:
        told.append(f"{long} of {chunks} chunks are longer than the model reads ({max_length} tokens): their vectors "
                    "see only their start (a smaller --chunk-chars, or a model that reads more)")
    if unreadable:
        told.append(f"{unreadable} of {chunks} chunks are mostly words the model cannot read (its unknown token): "
                    "their vectors say little; index their language with a model that reads it (--model)")
    return told


def earlier_digests(documents: Sequence[Document], added: bool) -> dict[str, str]:
    """Id -> the digest an older mrag recorded for each document whose text `clean_text` changed."""
    return {d.id: document_digest(d, added, as_given=True) for d in documents if d.given is not None}


def _embedded(
    store: Store, embedder: HeadEmbedder, spaces: list[Space], chunks: list[tuple[Document, str, int, str]],
    show_progress: bool, unread: list[int],
) -> Iterator[pa.Table]:
    """Rows for the chunks, `WRITE_BATCH` at a time: one forward pass each (and each external space);
    `unread` counts what the model could not read (`HeadEmbedder.unread`)."""
    # the layout of the spaces embedded here (the committed manifest's, as `Index.spaces` reads it); `_append`
    # checks it under the lock against the table's
    schema = chunk_schema(store.dim, store.n_heads, store.head_dim, {s.name: int(s.dim or 0) for s in spaces})
    starts = range(0, len(chunks), WRITE_BATCH)
    if show_progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="indexing", unit="batch")  # type: ignore[assignment]
    for start in starts:
        batch = chunks[start : start + WRITE_BATCH]
        texts = [c[3] for c in batch]
        emb = embedder.embed(texts, kind="document")
        unread[:] = [a + b for a, b in zip(unread, embedder.unread(texts))]
        yield build_rows(
            ids=[f"{d.id}#{i}" for d, _, i, _ in batch],
            doc_ids=[d.id for d, _, _, _ in batch],
            sources=[d.source for d, _, _, _ in batch],
            titles=[d.title for d, _, _, _ in batch],
            positions=[i for _, _, i, _ in batch],
            texts=texts,
            metadata=[d.metadata for d, _, _, _ in batch],
            doc_hashes=[h for _, h, _, _ in batch],
            standard=emb.standard,
            heads=emb.heads,
            schema=schema,
            extra={space.name: space.embed(texts) for space in spaces},
        )


def retriage(store: Store, todo: list[tuple[Document, str]], replace: bool, report: AddReport,
             seen: dict[str, str], leave_out: Callable[[set[str]], set[str]] | None = None,
             earlier: dict[str, str] | None = None) -> set[str]:
    """Under the write lock: the documents to write against what is committed now (another process
    may have written some since `seen`, the digests looked at before embedding), less those `leave_out`
    names of these. Deletes the old rows of changed ones; -> the ids to write (the report's added / updated /
    unchanged follow; `earlier` as `triage` takes it). `mrag.distributed` runs it too."""
    fresh = AddReport()
    now = store.doc_hashes([d.id for d, _ in todo])
    if leave_out is not None:
        left = leave_out({d.id for d, _ in todo if now.get(d.id) != seen.get(d.id)})
        todo = [(d, h) for d, h in todo if d.id not in left]
    ids = [d.id for d, _ in todo]
    chosen = triage([(d.id, h) for d, h in todo], {i: now[i] for i in ids if i in now}, fresh, replace, earlier)
    if fresh.updated:
        store.delete(f"doc_id IN ({quote(fresh.updated)})")
    report.added, report.updated = fresh.added, fresh.updated
    report.unchanged += fresh.unchanged
    return {ids[i] for i in chosen}


def _append(store: Store, staged: list[pa.Table], wanted: set[str], report: AddReport) -> None:
    """Write the staged rows of the wanted documents, as one fragment."""
    if not staged:
        return
    rows = pa.concat_tables(staged)
    if not rows.schema.equals(store.schema()):  # under the lock: the spaces (and their widths) as committed now
        raise StoreError("the index's embedding spaces changed while these documents were embedded (another "
                         "process added or dropped one); nothing written: write them again")
    if not set(rows["doc_id"].to_pylist()) <= wanted:
        rows = rows.filter(pc.is_in(rows["doc_id"], pa.array(sorted(wanted), pa.string())))
    store.add(rows)
    report.chunks += rows.num_rows


def delete(store: Store, ids: Sequence[str | int | float], missing_ok: bool) -> int:
    """Delete documents or chunks by id, in one commit (`Index.delete`); -> the rows deleted."""
    if not ids:
        raise ValueError("no ids given")
    bad = [i for i in ids if not isinstance(i, str | int | float) or not_an_id(i)]
    if bad:
        raise ValueError(f"ids are strings or numbers, got {bad[:3]}")
    for i in ids:
        check_utf8(i, f"the id {shown(str(i))!r}")
    asked = list(dict.fromkeys(str(i) for i in ids))
    with store.writing():  # checked under the lock: another process may have deleted some
        found = store.rows(f"id IN ({quote(asked)}) OR doc_id IN ({quote(asked)})", ["id", "doc_id"],
                           table=store.chunks)
        documents = sorted(set(found["doc_id"].to_pylist()) & set(asked))
        chunks = sorted((set(found["id"].to_pylist()) & set(asked)) - set(documents))
        missing = [i for i in asked if i not in documents and i not in chunks]
        if missing and not missing_ok:
            raise ValueError(f"unknown id(s), nothing deleted: {', '.join(missing[:5])}")
        if not documents and not chunks:
            return 0
        where = " OR ".join([*([f"doc_id IN ({quote(documents)})"] if documents else []),
                             *([f"id IN ({quote(chunks)})"] if chunks else [])])
        deleted = store.delete(where)
        # a document left without some of its chunks is written whole at its next write, unchanged or not
        # (indexing its file again restores them)
        named = set(chunks)
        cut = {d for i, d in zip(found["id"].to_pylist(), found["doc_id"].to_pylist()) if i in named}
        if cut - set(documents):
            _mark_partial(store, sorted(cut - set(documents)))
    return deleted


def _mark_partial(store: Store, doc_ids: list[str]) -> None:
    """Mark documents some of whose chunks were deleted: one remaining row each, its first, gets the digest
    `documents.made_partial` (`Store.doc_hashes` reads a document with such a row as partial). Documents with
    no row left are passed over."""
    rows = store.rows(f"doc_id IN ({quote(doc_ids)})", ["id", "doc_id", "position", "doc_hash"],
                      table=store.chunks).to_pylist()
    first: dict[str, dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: r["position"], reverse=True):
        first[row["doc_id"]] = row
    marks = {row["id"]: made_partial(row["doc_hash"]) for row in first.values()}
    for value in sorted(set(marks.values())):
        store.update(sorted(i for i, v in marks.items() if v == value), {"doc_hash": value})
