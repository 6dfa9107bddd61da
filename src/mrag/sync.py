"""Indexing files into an index and keeping it in step with them: a file's records are its documents, so
what a file no longer holds is deleted when it is indexed again, and `prune` deletes the documents of files
that are gone. `Index.add_paths` and `mrag index` run `index_files`; the choices are pure functions.

A run that embeds more than `COMMIT_EVERY` chunks commits as it goes, in parts of about that many (a run
stopped midway keeps the parts committed; the next run skips them as unchanged), and deletes what it deletes
in the last; a run below it is one commit.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from mrag.documents import Document, added, document_digest, same_content
from mrag.ingest import HOLDS_NOTHING, RECORD_SUFFIXES, IngestError, Skipped, file_stamp, walk_files
from mrag.rows import quote
from mrag.settings import COMMIT_EVERY
from mrag.store import Store
from mrag.writing import AddReport, FromFiles, check_unique_ids

CHANGED = "changed or removed while it was being indexed: index it again"  # a file `changed_files` finds
UNKNOWN = "no such file or folder, and no document indexed from there"  # a path to prune (`unknown_paths`)
EMPTY_FOLDER = ("an empty folder (a share not mounted?) under which documents are indexed: nothing pruned there "
                "(to prune them, delete the empty folder, or prune from the folder above it)")  # `empty_folders`
GONE_FROM_EMPTY = ("gone, and the nearest folder above it, {folder}, is empty (a share not mounted?): nothing pruned "
                   "(to prune its documents, delete that empty folder, or prune from the folder above it)")


class Writable(Protocol):
    """What indexing files writes through (`mrag.index.Index` is one)."""

    store: Store

    def upsert(self, docs: list[Document], show_progress: bool = False, files: FromFiles | None = None
               ) -> AddReport: ...

    def maintain_ann(self, force: bool = False) -> dict[str, Any] | None: ...

    def maintain_fulltext(self, force: bool = False) -> bool: ...


def index_files(index: Writable, paths: Sequence[str | Path], docs: list[Document], skipped: list[Skipped],
                show_progress: bool = False, prune: bool = False, commit_every: int = COMMIT_EVERY) -> AddReport:
    """Upsert the documents `read_paths` read from `paths` and delete the indexed documents their files no
    longer hold (`gone_from_files`), in one commit, or where more than `commit_every` chunks need embedding
    (0: never), in one commit per part of about that many (`commit_parts`), the deletions with the last.
    An id already indexed from a file not read now is refused, and nothing is written: checked before the
    embedding, and again under the write lock (another process may index it meanwhile)."""
    check_unique_ids([d.id for d in docs], [d.source for d in docs])  # naming the files
    indexed = functools.cache(lambda: _folders_of(sources(index.store, None).values()))  # read once, if asked
    unknown = unknown_paths(paths, indexed) if prune else []
    held = empty_folders(paths, indexed) if prune else []
    roots = [p for p in paths if str(p) not in held]  # where documents of files gone are pruned
    refuse_taken(index.store, docs, skipped)
    changed: set[str] = set()  # files whose documents were left as committed, found under the write lock
    report = AddReport()
    parts, stored, digests = commit_parts(index.store, docs, commit_every)
    for number, part in enumerate(parts):
        try:
            done = _index_part(index, roots, docs, part, skipped, show_progress, prune, changed,
                               number == len(parts) - 1, FromFiles(stored=stored, digests=digests))
        except ValueError as e:  # an id taken meanwhile: the parts before stay
            if number == 0:
                raise
            raise ValueError(f"{str(e).replace('nothing written', 'nothing of this part written', 1)}; part "
                             f"{number + 1} of {len(parts)}: the {len(report.added) + len(report.updated)} documents "
                             "of the parts before are committed, and nothing was deleted") from e
        report.added += done.added
        report.updated += done.updated
        report.unchanged += done.unchanged
        report.removed += done.removed
        report.chunks += done.chunks
        report.unread = (report.unread[0] + done.unread[0], report.unread[1] + done.unread[1])
        report.max_length = done.max_length or report.max_length
        report.ann = done.ann or report.ann
    if len(parts) > 1 and not done.chunks:  # the last part wrote no row: its catching up of the full-text index
        index.maintain_fulltext()
    report.skipped = skipped + changed_skips(changed) + [Skipped(path, UNKNOWN) for path in unknown] + [
        Skipped(path, held_reason(path)) for path in held]
    report.bare_folders = [str(p) for p in paths if str(p) not in held and bare_folder(Path(p).expanduser())]
    return report


def bare_folder(path: Path) -> bool:
    """Whether `path` is a folder holding nothing `read_paths` reads there (one that cannot be listed is read,
    and skipped with why)."""
    return path.is_dir() and next(walk_files(path), None) is None


def _index_part(index: Writable, paths: Sequence[str | Path], docs: list[Document], part: list[Document],
                skipped: list[Skipped], show_progress: bool, prune: bool, changed: set[str], last: bool,
                looked: FromFiles) -> AddReport:
    """One commit of `index_files`: the documents of `part` (of the run's `docs`), and in the `last` (the
    whole run, or its last part) the deletions of the whole run (`settle`). `looked`: the indexed and new
    digests `commit_parts` computed, if it did."""
    removed: list[str] | None = None

    def after_rows() -> None:  # under the write lock, after the upsert's rows, in their commit
        nonlocal removed
        if last:
            removed = settle(index.store, docs, skipped, paths, prune, changed, part)
        else:
            refuse_taken(index.store, part, skipped, docs)
            removed = []

    report = index.upsert(part, show_progress=show_progress, files=FromFiles(
        after_rows, leaving_out(part, changed), not last, looked.stored, looked.digests))
    if removed is None:  # nothing needed embedding: the deletes, if any, are a write of their own
        removed = delete_gone(index, docs, skipped, paths, prune, changed) if last else []
    elif removed and not report.chunks:  # deleted, but no row written: the upkeep a write of rows runs
        index.maintain_ann()
    report.removed = removed
    return report


def commit_parts(store: Store, docs: list[Document], commit_every: int
                 ) -> tuple[list[list[Document]], dict[str, str] | None, dict[str, str] | None]:
    """`docs` in runs of consecutive documents, each ending once the documents to embed in it (new, changed,
    partial) reach about `commit_every` chunks, or a quarter of the rows committed before it where that is
    more (a part's commit reads the table a few times: parts that grow with it keep those reads a fixed share
    of the run; a run stopped midway loses at most that much). A document counts its text over the chunk size,
    rounded up (chunking every document twice cost more than the parts). One run when all of them are fewer,
    or `commit_every` is 0. A file's records may fall in two parts (`index_files` deletes in the last).
    -> the parts, and where it looked them up, the indexed and the new digests of `docs` by id (the parts'
    writes use them)."""
    size = int(store.manifest.settings["chunk_chars"])
    if not commit_every or sum(-(-len(d.text) // size) for d in docs) <= commit_every:
        return [docs], None, None
    stored, rows = store.doc_hashes([d.id for d in docs]), store.count()
    digests = {d.id: document_digest(d) for d in docs}
    parts: list[list[Document]] = [[]]
    count = 0
    for doc in docs:
        parts[-1].append(doc)
        if not same_content(stored.get(doc.id), digests[doc.id]):
            count += max(1, -(-len(doc.text) // size))
        if count >= max(commit_every, rows // 4) and doc is not docs[-1]:
            parts.append([])
            rows, count = rows + count, 0
    return parts, stored, digests


def leaving_out(docs: list[Document], changed: set[str]) -> Callable[[set[str]], set[str]]:
    """The `leave_out` of a write of `docs` read from files (`writing.retriage`): given the ids another run
    wrote since they were looked up, the ids of every document of those files that also changed since they
    were read (the whole file: a record's text and its siblings'), the files added to `changed`, and of the
    files already in it (an earlier part of the run found them so)."""

    def leave_out(moved: set[str]) -> set[str]:
        changed.update(changed_files([d for d in docs if d.id in moved]))
        return {d.id for d in docs if d.source in changed}  # an earlier part's finds too

    return leave_out


def changed_skips(changed: set[str]) -> list[Skipped]:
    """The files left as committed, as the report lists them."""
    return [Skipped(source, CHANGED) for source in sorted(changed)]


def changed_files(docs: list[Document]) -> set[str]:
    """The sources of `docs` whose file changed or went since it was read (`ingest.file_stamp`). Where
    another run also wrote such a document meanwhile, writing what this run read could undo it (an edit
    indexed, a deleted file pruned), so it is left as committed, and the next run indexes the file."""
    stamps = {d.source: d.stamp for d in docs if d.stamp is not None}  # the library's documents have none
    return {source for source, stamp in stamps.items() if file_stamp(source) != stamp}


def settle(store: Store, docs: list[Document], skipped: list[Skipped], paths: Sequence[str | Path],
           prune: bool, changed: set[str], part: list[Document] | None = None) -> list[str]:
    """Under the write lock, in the commit of the rows of `docs` (or of their last `part`): refuse ids another
    process has indexed from another file meanwhile (`refuse_taken`), and delete what is gone (`drop_gone`);
    -> the ids deleted."""
    refuse_taken(store, docs if part is None else part, skipped, docs)
    return drop_gone(store, docs, skipped, paths, prune, changed)


def delete_gone(index: Writable, docs: list[Document], skipped: list[Skipped], paths: Sequence[str | Path],
                prune: bool, changed: set[str]) -> list[str]:
    """In a write of its own, delete the documents that indexing `docs` deletes (`gone`), decided under the
    write lock, then run the ANN upkeep (HNSW graphs skip removed rows); -> their ids. A look at the committed
    rows first: where it finds none, nothing is committed."""
    if not gone(index.store, docs, skipped, paths, prune):
        return []
    with index.store.writing():
        removed = drop_gone(index.store, docs, skipped, paths, prune, changed)
    if removed:
        index.maintain_ann()
    return removed


def drop_gone(store: Store, docs: list[Document], skipped: list[Skipped], paths: Sequence[str | Path],
              prune: bool, changed: set[str]) -> list[str]:
    """Under the write lock: delete the documents `gone` finds in the rows as the write has left them so far,
    but for those of files changed since they were read (another run may have written them back: they stay
    until the next run, their files added to `changed`); -> their ids."""
    indexed = _indexed(store, docs, prune, live=True)
    every = gone_from_files(indexed, docs, skipped, paths, prune)
    losing = {indexed[i] for i in every}  # the files with documents to delete
    stale = changed_files([d for d in docs if d.source in losing])
    changed.update(stale)
    found = [i for i in every if indexed[i] not in stale]
    if found:
        store.delete(f"doc_id IN ({quote(found)})")
    return found


def refuse_taken(store: Store, docs: list[Document], skipped: Sequence[Skipped] = (),
                 read: Sequence[Document] = ()) -> None:
    """Refuse ids of `docs` that are indexed from another file (`taken_from_other_files`) not read in this run
    (the files of `docs` and `read`); a file read now and skipped as empty or without records (in `skipped`)
    holds none, so its records may have moved."""
    ids = [d.id for d in docs]
    also = {d.source for d in read}
    indexed = sources(store, f"doc_id IN ({quote(ids)})") if ids else {}
    taken = taken_from_other_files(indexed, docs, _emptied(skipped) | also)
    if not taken:
        return
    # a file skipped as unreadable now still holds its records as indexed: "index both files together" was done
    unread = {str(_real(s.source)): s.reason for s in skipped}
    broken = next((indexed[i] for i in taken if indexed[i] in unread), None)
    raise ValueError(f"id(s) already indexed from another file, nothing written: {', '.join(taken[:5])} " + (
        f"(indexed from {broken}, which could not be read now: {unread[broken]}; mend it and index again)" if broken
        else "(if the record moved here, index both files together; else give it another id here, or delete the "
             "id first)"))


def gone(store: Store, docs: list[Document], skipped: list[Skipped], paths: Sequence[str | Path],
         prune: bool, live: bool = False) -> list[str]:
    """The indexed documents that indexing `docs` from `paths` deletes (`gone_from_files`): of the committed
    rows, or (`live`, inside a write) of the rows as the write has left them so far. (With `prune`, every
    row's id and source are read: under the write lock, for a live read.)"""
    return gone_from_files(_indexed(store, docs, prune, live), docs, skipped, paths, prune)


def _indexed(store: Store, docs: list[Document], prune: bool, live: bool) -> dict[str, str]:
    """Id -> source of the indexed documents that indexing `docs` may delete: those of the files read, or
    (`prune`) every one; of the committed rows or (`live`) of the rows as the write has left them so far."""
    read = sorted({d.source for d in docs})
    where = None if prune else f"source IN ({quote(read)})"
    return sources(store, where, store.chunks if live else None) if prune or read else {}


def unknown_paths(paths: Sequence[str | Path], indexed: Callable[[], set[str]]) -> list[str]:
    """The paths to prune that are neither on disk nor where an indexed file was (a file's source, or a folder
    above one): a typo, or a folder pruned already. Refused when every path is one (nothing to do: `mrag index
    TYPO --prune`), else listed as skipped (a scheduled run over several folders goes on). `indexed`: the
    indexed sources and the folders above them (`_folders_of`), read when first asked."""
    missing = [p for p in paths if not Path(p).expanduser().exists()]
    if not missing:
        return []
    unknown = [str(raw) for raw in missing if str(_real(raw)) not in indexed()]
    if unknown and len(unknown) == len(paths):
        raise IngestError(f"no such file or folder, and no document indexed from there to prune: {unknown[0]}")
    return unknown


def empty_folders(paths: Sequence[str | Path], indexed: Callable[[], set[str]]) -> list[str]:
    """The paths given to prune that are folders holding nothing at all, or gone from one (the nearest folder
    above them that exists is empty), and under which documents are indexed: a share not mounted leaves its
    mount point so (`/mnt/share/docs` is gone, `/mnt/share` empty), and pruning there deleted every document
    indexed from the share (the next run embedded them all again). A path gone from a folder that holds
    something else is pruned (deleted on purpose). `indexed` as `unknown_paths` takes it."""
    empty = [str(p) for p in paths if _empty_folder(_nearest(Path(p).expanduser()))]
    if not empty:
        return []
    return [p for p in empty if str(_real(p)) in indexed()]


def held_reason(path: str | Path) -> str:
    """Why `empty_folders` held a path: an empty folder, or gone from one (a file deleted on purpose too)."""
    found = Path(path).expanduser()
    return EMPTY_FOLDER if found.exists() else GONE_FROM_EMPTY.format(folder=_nearest(found))


def _folders_of(indexed: Iterable[str]) -> set[str]:
    """Every indexed source and every folder above one: a path is in it when documents are indexed from it or
    under it (`_under`), looked up at once for each of many paths."""
    found: set[str] = set()
    for source in set(indexed) - {""}:
        path = Path(source)
        found.add(str(path))
        found.update(str(folder) for folder in path.parents)
    return found


def _nearest(path: Path) -> Path:
    """`path`, or where it is gone, the nearest folder above it that exists."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _empty_folder(path: Path) -> bool:
    try:
        with os.scandir(path) as entries:
            return next(entries, None) is None
    except OSError:  # not a folder, gone, or not readable
        return False


def to_read(paths: Sequence[str | Path], prune: bool) -> list[str | Path]:
    """The paths to read: all (a missing one is an error), or with `prune` those that exist (the documents
    of a deleted folder are only pruned)."""
    return [p for p in paths if Path(p).expanduser().exists()] if prune else list(paths)


def sources(store: Store, where: str | None, table: Any = None) -> dict[str, str]:
    """Document id -> source of the committed documents `where` selects (None: all) that indexing files wrote
    (the library's and the server's are left alone, `documents.ADDED`); `table`: of that table's rows instead (a
    write's, before its commit)."""
    rows = store.rows(where, ["doc_id", "source", "doc_hash"], table=table)
    return {i: s for i, s, h in zip(rows["doc_id"].to_pylist(), rows["source"].to_pylist(),
                                    rows["doc_hash"].to_pylist()) if not added(h)}


def taken_from_other_files(indexed_sources: dict[str, str], docs: list[Document],
                           emptied: Collection[str] = ()) -> list[str]:
    """Ids of `docs` (read from files) already indexed from another file that still exists and was not read
    this time (a record id given in two files): indexing them would silently move the document from that
    file. `indexed_sources`: id -> source of the indexed documents with those ids. A file read this time no
    longer holds the id (one batch holds an id once), and a file that is gone (or now a link to one read) was moved, so
    those ids move with their records, as from a file read now that holds none any more (`emptied`, its
    resolved path: the last record moved out); documents added without a source (the library's) are replaced
    as any upsert does."""
    read = {d.source for d in docs} | set(emptied)

    def elsewhere(source: str) -> bool:  # a file there and not read now (one now a link to a file read now is read)
        return source not in read and _exists(source) and str(_real(source)) not in read

    return [d.id for d in docs if indexed_sources.get(d.id, d.source) not in (d.source, "")
            and elsewhere(indexed_sources[d.id])]


def from_a_file(doc_id: str, source: str) -> bool:
    """Whether `read_paths` could have made this document: a record of a .json/.jsonl file, or a whole file of
    any kind (its id is its path: a file named on its own is read as text whatever its suffix). Only those
    follow their files; a document the library added with a file's path as its source and an id of its own is
    left alone (`sources` leaves out those whose digest says so; this tells the others apart in an index
    written before that mark)."""
    return bool(source) and (doc_id == source or _records_file(source))


@functools.lru_cache(maxsize=4096)
def _records_file(source: str) -> bool:
    """Whether `source` names a .json/.jsonl file (asked once a document: a file's records share it)."""
    return Path(source).suffix.lower() in RECORD_SUFFIXES


def _under(source: str, root: Path) -> bool:
    """Whether a document's source is the file `root` or lies in the folder `root`."""
    return Path(source) == root or root in Path(source).parents


def _exists(source: str) -> bool:
    """Whether a source file exists; one that cannot be checked (no permission) counts as existing."""
    try:
        return Path(source).exists()
    except OSError:
        return True


def gone_from_files(indexed_sources: dict[str, str], docs: list[Document], skipped: list[Skipped],
                    paths: Iterable[str | Path], prune: bool) -> list[str]:
    """Ids of indexed documents to delete after indexing `paths`: a file's records are its documents, so the
    ones a file read this time no longer holds; with `prune`, also the documents of files under `paths` that
    no longer exist, are now empty or are now links, or lie under a link (a link to a file is read as its target,
    one to a folder is not followed; files skipped as unreadable keep theirs). A document read now is never
    one of them (a record moved to another file). `indexed_sources`: id -> source of the indexed documents
    whose source is a file read now or, with `prune`, lies under `paths`."""
    read_ids, read = {d.id for d in docs}, {d.source for d in docs}
    # each path as given too: a folder moved and linked back, indexed by its old path, resolves elsewhere
    emptied, roots = _emptied(skipped), [root for p in paths for root in (_real(p), _absolute(p))]

    def vanished(source: str) -> bool:  # gone, emptied, or now a link (or under one): not the file it was read from
        return any(_under(source, root) for root in roots) and (source in emptied or not _still_there(source))

    return sorted(i for i, source in indexed_sources.items() if from_a_file(i, source) and i not in read_ids and (
        source in read or (prune and vanished(source))))


def _still_there(source: str) -> bool:
    """Whether the file a document was read from is there as it was: not gone, and not now a link or under one
    (a link to a file is read as its target, one to a folder is not followed)."""
    return _exists(source) and str(_real(source)) == source


def _absolute(path: str | Path) -> Path:
    """The path made absolute, its links as they are."""
    return Path(os.path.abspath(Path(path).expanduser()))


def _emptied(skipped: Iterable[Skipped]) -> set[str]:
    """The resolved paths of the files read now that hold no document (empty, or no records)."""
    return {str(_real(s.source)) for s in skipped if s.reason in HOLDS_NOTHING}


def _real(path: str | Path) -> Path:
    """The path with links followed (a link loop as it is: Path.resolve raises on one before Python 3.13)."""
    return Path(os.path.realpath(Path(path).expanduser()))
